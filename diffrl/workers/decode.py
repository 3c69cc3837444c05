"""DecodeWorker: a masked-diffusion LM decoding prompts (`diffrl.models.dllm.generate`), the role of
`kind: dllm_decode` and of the tiny dLLMs' held-out eval in `kind: pretrain`. A call decodes its prompts in
batches of `batch_size` and returns one record per prompt, in order; records carry the prompt's id so that a
call re-sent after a worker's death yields the same records (decoding is deterministic per prompt)."""

from __future__ import annotations

import time
from typing import Any

import torch

from diffrl.models.dllm.generate import DecodeOptions, generate
from diffrl.models.registry import build_model_from_config, load_trainable_state_dict
from diffrl.platform.worker import WorkerBase
from diffrl.utils.weight_sync import WeightPayload


class DecodeWorker(WorkerBase):
    def __init__(self, model_cfg: dict, decode_cfg: dict, batch_size: int) -> None:
        super().__init__()
        self.model_cfg, self.options, self.batch_size = model_cfg, DecodeOptions(**decode_cfg), batch_size
        self.lm = None
        self.weight_version = 0

    def build(self) -> None:
        self.lm = build_model_from_config(self.model_cfg).eval()
        if torch.cuda.is_available():
            self.lm.to("cuda")
        if self.model_cfg.get("dtype") == "bf16":
            self.lm.to(torch.bfloat16)

    def decode(self, requests: list[dict[str, Any]], options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """requests: {"id", "prompt", optional "reference", optional "seed"}; returns per prompt: id, prompt,
        answer, reference, correct (None without a reference), nfe, tokens, seconds, and the token ids (prompt_ids,
        answer_ids, with the tokenizer's pad_id and eos_id) that RL trains on."""
        self.require_ready()
        opts = DecodeOptions(**{**self.options.__dict__, **(options or {})})
        records = []
        for start in range(0, len(requests), self.batch_size):
            chunk = requests[start:start + self.batch_size]
            prompts = [self.lm.tokenizer.encode_prompt(r["prompt"]) for r in chunk]
            tick = time.perf_counter()
            results = generate(self.lm, prompts, opts, seeds=[r.get("seed", r["id"]) for r in chunk])
            elapsed = time.perf_counter() - tick
            tok = self.lm.tokenizer
            for request, ids, result in zip(chunk, prompts, results):
                reference = request.get("reference")
                records.append({"id": request["id"], "prompt": request["prompt"], "answer": result.text,
                                "reference": reference,
                                "correct": None if reference is None else result.text.strip() == reference.strip(),
                                "nfe": result.nfe, "tokens": opts.gen_length, "seconds": result.seconds,
                                "batch_seconds": elapsed / len(chunk), "prompt_ids": list(ids),
                                "answer_ids": list(result.answer), "pad_id": tok.pad_token_id,
                                "eos_id": tok.eos_token_id})
        return records

    def load_weights(self, payload: WeightPayload) -> int:
        """A learner's weights (the pretraining eval's EMA)."""
        self.require_ready()
        load_trainable_state_dict(self.lm, payload.tensors())
        self.weight_version = payload.version
        return payload.version

    def status(self) -> dict[str, Any]:
        return {"weight_version": self.weight_version}
