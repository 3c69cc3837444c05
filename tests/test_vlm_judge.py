"""The VLM-judge reward: transformers backend on a tiny LLaVA built offline (P(yes) by hand), and the vLLM backend's
capability check naming what is missing."""

import json

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


@pytest.mark.parametrize("yes_logit, no_logit, expected", [(np.log(3.0), 0.0, 0.75), (0.0, np.log(4.0), 0.2)])
def test_transformers_judge_known_answer_from_set_weights(tmp_path, yes_logit, no_logit, expected):
    """Weights set so that the answer is known without running the model: every decoder layer's output projections
    are zero (the residual stream stays the token embedding), every embedding is e0 (RMS-normalized: 4 e0 with 16
    dims), and lm_head maps 4 e0 to yes_logit for "yes"/"Yes", no_logit for "no"/"No" and 0 elsewhere. The judge's
    P(yes) / (P(yes) + P(no)) is then sigmoid(yes_logit - no_logit) for any image and prompt."""
    from transformers import AutoModelForImageTextToText

    directory = build_tiny_llava(tmp_path / "llava")
    model = AutoModelForImageTextToText.from_pretrained(directory)
    vocab = json.loads((directory / "tokenizer.json").read_text())["model"]["vocab"]
    language = model.model.language_model
    with torch.no_grad():
        for layer in language.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        language.embed_tokens.weight.copy_(torch.eye(16)[0].expand_as(language.embed_tokens.weight))
        language.norm.weight.fill_(1.0)
        model.lm_head.weight.zero_()
        for word, logit in (("yes", yes_logit), ("Yes", yes_logit), ("no", no_logit), ("No", no_logit)):
            model.lm_head.weight[vocab[word], 0] = logit / 4.0
    model.save_pretrained(directory)
    reward = build_reward("vlm_judge", path=str(directory), backend="transformers")
    images = np.random.default_rng(2).integers(0, 256, size=(2, 20, 20, 3), dtype=np.uint8)
    assert reward(images, ["a photo of a cat", "a red dog"], [{}, {}]).scores == pytest.approx([expected] * 2, abs=1e-4)
