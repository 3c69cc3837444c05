"""The VLM-judge reward: transformers backend on a tiny LLaVA built offline (P(yes) by hand), and the vLLM backend's
capability check naming what is missing."""

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import build_tiny_llava

from diffrl.rewards.base import build_reward
from diffrl.rewards.vlm_judge import VLLMJudge, yes_probability


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp("tiny_llava"))


def test_yes_probability_sums_variants():
    logprobs = {"yes": np.log(0.2), " Yes": np.log(0.1), "no": np.log(0.3), "maybe": np.log(0.4)}
    assert yes_probability(logprobs) == pytest.approx(0.3 / 0.6)
    assert yes_probability({"maybe": 0.0}) == 0.5


def test_transformers_judge_scores_p_yes(llava):
    reward = build_reward("vlm_judge", path=str(llava), backend="transformers")
    images = np.random.default_rng(0).integers(0, 256, size=(2, 20, 20, 3), dtype=np.uint8)
    prompts = ["a photo of a cat", "a red dog"]
    scores = reward(images, prompts, [{}, {}]).scores
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(llava)
    model = AutoModelForImageTextToText.from_pretrained(llava).eval()
    vocab = processor.tokenizer.get_vocab()
    for image, prompt, score in zip(images, prompts, scores):
        messages = [{"role": "user", "content": [
            {"type": "image"}, {"type": "text", "text": f'Does this image show "{prompt}"? Answer yes or no.'}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = processor(images=[Image.fromarray(image)], text=[text], return_tensors="pt")
        with torch.no_grad():
            probs = torch.softmax(model(**inputs).logits[0, -1], dim=-1)
        yes = probs[vocab["yes"]] + probs[vocab["Yes"]]
        no = probs[vocab["no"]] + probs[vocab["No"]]
        assert score == pytest.approx(float(yes / (yes + no)), rel=1e-5)


def test_vllm_backend_names_what_is_missing(llava, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("the capability message is for machines without a GPU")
    with pytest.raises(RuntimeError, match="vLLM needs a CUDA GPU; use backend: transformers"):
        VLLMJudge(str(llava))
    # auto falls back to transformers where vLLM cannot run
    assert type(build_reward("vlm_judge", path=str(llava))).__name__ == "TransformersJudge"
