"""A VLM-judge reward: a vision-language model is asked whether the image shows the prompt; the score is its
probability of answering yes, P(yes) / (P(yes) + P(no)) from the next-token distribution.

Two backends with one interface:
- `transformers` (CPU fallback, any device): AutoModelForImageTextToText + AutoProcessor from a local directory.
- `vllm` (GPU extra): vLLM in the reward worker's own process. vLLM pins its own torch and transformers, so the
  reward's replicas run in a separate Python environment with vllm, ray and diffrl installed: the reward's
  `python:` key in the job (its worker group's interpreter) names it; the group sits on a resource pool like every
  reward. Capability checks raise a clear error naming what is missing (no GPU, no vLLM in this environment).
Models load from local directories only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from diffrl.rewards.base import RewardOutput

os.environ.setdefault("HF_HUB_OFFLINE", "1")

QUESTION = 'Does this image show "{prompt}"? Answer yes or no.'
YES, NO = ("yes", "Yes", "YES"), ("no", "No", "NO")


def yes_probability(logprobs: dict[str, float]) -> float:
    """P(yes) / (P(yes) + P(no)) from token log-probabilities keyed by token text (variants summed); 0.5 when the
    model puts no mass on either."""
    yes = sum(np.exp(lp) for token, lp in logprobs.items() if token.strip() in YES)
    no = sum(np.exp(lp) for token, lp in logprobs.items() if token.strip() in NO)
    return float(yes / (yes + no)) if yes + no > 0 else 0.5


class TransformersJudge:
    def __init__(self, path: str, question: str = QUESTION, device: str | None = None, dtype: str = "fp32") -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if not Path(path).is_dir():
            raise FileNotFoundError(f"vlm_judge: path {path!r} is not a local directory (diffrl never downloads)")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        self.model = AutoModelForImageTextToText.from_pretrained(
            path, local_files_only=True, dtype=torch.bfloat16 if dtype == "bf16" else torch.float32).to(self.device)
        self.model.eval().requires_grad_(False)
        self.question = question
        tokenizer = self.processor.tokenizer
        vocab = tokenizer.get_vocab()
        self.answer_ids = {word: vocab[word] for word in YES + NO if word in vocab}
        if not any(w in self.answer_ids for w in YES) or not any(w in self.answer_ids for w in NO):
            raise ValueError(f"vlm_judge: the tokenizer of {path} has no single-token yes/no answers")

    def text(self, prompt: str) -> str:
        messages = [{"role": "user", "content": [{"type": "image"},
                                                 {"type": "text", "text": self.question.format(prompt=prompt)}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True)

    def __call__(self, images: np.ndarray, prompts: Sequence[str], metadata: Sequence[dict]) -> RewardOutput:
        import torch
        from PIL import Image

        scores = []
        for image, prompt in zip(images, prompts):
            inputs = self.processor(images=[Image.fromarray(image)], text=[self.text(prompt)], return_tensors="pt")
            with torch.no_grad():
                logits = self.model(**inputs.to(self.device)).logits[0, -1].float()
            logprobs = torch.log_softmax(logits, dim=-1)
            scores.append(yes_probability({w: float(logprobs[i]) for w, i in self.answer_ids.items()}))
        return RewardOutput(scores=scores)


def vllm_available() -> str | None:
    """None when the vLLM backend can run in this process, else the reason it cannot."""
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        return "vLLM needs a CUDA GPU; use backend: transformers on CPU"
    if importlib.util.find_spec("vllm") is None:
        return ("vLLM is not installed in this environment; create a separate environment with vllm, ray and diffrl "
                "and set the reward's `python:` to its interpreter (vLLM's torch stays out of the main environment)")
    return None


class VLLMJudge:
    """The judge on vLLM, loaded in this process (a reward worker in the vLLM environment)."""

    def __init__(self, path: str, question: str = QUESTION, max_model_len: int = 4096) -> None:
        reason = vllm_available()
        if reason:
            raise RuntimeError(f"vlm_judge backend vllm unavailable: {reason}")
        from vllm import LLM, SamplingParams

        self.llm = LLM(model=path, limit_mm_per_prompt={"image": 1}, max_model_len=max_model_len)
        self.params = SamplingParams(max_tokens=1, logprobs=20, temperature=0.0)
        self.question = question

    def __call__(self, images: np.ndarray, prompts: Sequence[str], metadata: Sequence[dict]) -> RewardOutput:
        from PIL import Image

        requests = []
        for image, prompt in zip(images, prompts):
            messages = [{"role": "user", "content": [{"type": "image"},
                                                     {"type": "text", "text": self.question.format(prompt=prompt)}]}]
            text = self.llm.get_tokenizer().apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            requests.append({"prompt": text, "multi_modal_data": {"image": Image.fromarray(np.asarray(image))}})
        outputs = self.llm.generate(requests, self.params)
        return RewardOutput(scores=[
            yes_probability({lp.decoded_token: lp.logprob for lp in out.outputs[0].logprobs[0].values()})
            for out in outputs])


def vlm_judge(path: str, backend: str = "auto", question: str = QUESTION, device: str | None = None):
    """backend: transformers, vllm, or auto (vllm when available, else transformers)."""
    if backend not in ("auto", "transformers", "vllm"):
        raise ValueError(f"vlm_judge backend must be auto, transformers or vllm, got {backend!r}")
    if backend == "vllm" or (backend == "auto" and vllm_available() is None):
        return VLLMJudge(path, question)
    return TransformersJudge(path, question, device)
