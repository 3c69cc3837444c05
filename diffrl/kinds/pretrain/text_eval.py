"""The tiny dLLMs' held-out eval in `kind: pretrain`: the decode workers load the learner's EMA weights and decode
the held-out sorting problems with `eval.decode` (the LLaDA baseline by default); the score is exact-match
accuracy. The last eval writes every generation to heldout_generations.jsonl."""

from __future__ import annotations

import json

import numpy as np

from diffrl.kinds.pretrain.config import PretrainJobConfig
from diffrl.platform.worker import WorkerGroup
from diffrl.utils.atomic import atomic_write_text


def decode_requests(problems: list[dict]) -> list[dict]:
    return [{"id": index, **problem} for index, problem in enumerate(problems)]


def evaluate_decoding(cfg: PretrainJobConfig, learner: WorkerGroup, decode: WorkerGroup, problems: list[dict],
                      step: int, log, run_dir, last: bool) -> float:
    decode.each("load_weights", learner.call(0, "get_weights", ema=True))
    records = [record for shard in decode.map("decode", decode_requests(problems)) for record in shard]
    accuracy = float(np.mean([record["correct"] for record in records]))
    log.write({"step": step, "eval/headline": accuracy, "eval/accuracy": accuracy,
               "eval/nfe": float(np.mean([record["nfe"] for record in records]))})
    if last:
        atomic_write_text(run_dir / "heldout_generations.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    return accuracy

