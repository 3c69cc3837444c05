"""A VLM-judge reward: a vision-language model is asked whether the image shows the prompt; the score is its
probability of answering yes, P(yes) / (P(yes) + P(no)) from the next-token distribution.

Two backends with one interface:
- `transformers` (CPU fallback, any device): AutoModelForImageTextToText + AutoProcessor from a local directory.
- `vllm` (GPU extra): vLLM runs inside a Ray actor in its own runtime environment — a separate Python environment
  given by `vllm_python` (runtime_env py_executable) — so vLLM's pinned torch and transformers never touch the main
  environment. Capability checks raise a clear error naming what is missing (no GPU, no vLLM environment).
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


class VLLMJudgeActor:
    """Runs inside the vLLM runtime environment (imports vllm there only)."""

    def __init__(self, path: str, question: str, max_model_len: int) -> None:
        from vllm import LLM, SamplingParams

        self.llm = LLM(model=path, limit_mm_per_prompt={"image": 1}, max_model_len=max_model_len)
        self.params = SamplingParams(max_tokens=1, logprobs=20, temperature=0.0)
        self.question = question

    def score(self, images: list, prompts: list[str]) -> list[float]:
        from PIL import Image

        requests = []
        for image, prompt in zip(images, prompts):
            messages = [{"role": "user", "content": [{"type": "image"},
                                                     {"type": "text", "text": self.question.format(prompt=prompt)}]}]
            text = self.llm.get_tokenizer().apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            requests.append({"prompt": text, "multi_modal_data": {"image": Image.fromarray(np.asarray(image))}})
        outputs = self.llm.generate(requests, self.params)
        return [yes_probability({lp.decoded_token: lp.logprob for lp in out.outputs[0].logprobs[0].values()})
                for out in outputs]


def vllm_available(vllm_python: str | None) -> str | None:
    """None when the vLLM backend can run here, else the reason it cannot."""
    import torch

    if not torch.cuda.is_available():
        return "vLLM needs a CUDA GPU; use backend: transformers on CPU"
    if vllm_python is None:
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            return ("vLLM is not installed here; create a separate environment with vllm and pass "
                    "vllm_python=/path/to/that/env/bin/python (its torch stays out of this environment)")
    elif not Path(vllm_python).is_file():
        return f"vllm_python {vllm_python!r} does not exist"
    return None


class VLLMJudge:
    def __init__(self, path: str, question: str = QUESTION, vllm_python: str | None = None, num_gpus: float = 1.0,
                 max_model_len: int = 4096) -> None:
        reason = vllm_available(vllm_python)
        if reason:
            raise RuntimeError(f"vlm_judge backend vllm unavailable: {reason}")
        import ray

        runtime_env = {"py_executable": vllm_python} if vllm_python else {}
        actor = ray.remote(num_gpus=num_gpus, runtime_env=runtime_env)(VLLMJudgeActor)
        self.actor = actor.remote(path, question, max_model_len)

    def __call__(self, images: np.ndarray, prompts: Sequence[str], metadata: Sequence[dict]) -> RewardOutput:
        import ray

        return RewardOutput(scores=ray.get(self.actor.score.remote(list(images), list(prompts))))


def vlm_judge(path: str, backend: str = "auto", question: str = QUESTION, vllm_python: str | None = None,
              device: str | None = None):
    """backend: transformers, vllm, or auto (vllm when available, else transformers)."""
    if backend not in ("auto", "transformers", "vllm"):
        raise ValueError(f"vlm_judge backend must be auto, transformers or vllm, got {backend!r}")
    if backend == "vllm" or (backend == "auto" and vllm_available(vllm_python) is None):
        return VLLMJudge(path, question, vllm_python)
    return TransformersJudge(path, question, device)
