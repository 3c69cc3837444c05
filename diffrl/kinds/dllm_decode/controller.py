"""The dLLM decoding controller: read the prompts, send them in chunks to the decode workers (a chunk lost to a
worker's death is sent again after the worker restarts; records are keyed by prompt id, so nothing is lost or
duplicated), and write generations.jsonl (in prompt order), the metrics (accuracy when references are given, NFEs
per answer, tokens/s) and the report's figure."""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
from tqdm import tqdm

from diffrl.kinds.dllm_decode.prompts import read_prompts
from diffrl.kinds.dllm_decode.report import write_decode_figure
from diffrl.platform.report_html import refresh_report
from diffrl.platform.runtime import RunContext
from diffrl.utils.atomic import atomic_write_text


def run(ctx: RunContext) -> dict[str, Any]:
    cfg, run_dir, log = ctx.cfg, ctx.run_dir, ctx.log
    decode = ctx.roles["decode"]
    requests = read_prompts(cfg.data.prompts, cfg.data.limit)
    size = cfg.workers.chunk_size
    chunks = [requests[i:i + size] for i in range(0, len(requests), size)]
    records: dict[int, dict] = {}
    bar = tqdm(total=len(requests), desc="dllm_decode", unit="prompt", dynamic_ncols=True)
    tick = time.perf_counter()
    for _, shard in decode.scatter_async("decode", chunks).as_completed():
        records.update((record["id"], record) for record in shard)
        bar.update(len(shard))
    bar.close()
    wall = time.perf_counter() - tick
    ids = ("prompt_ids", "answer_ids", "pad_id", "eos_id")  # what RL trains on; not part of the generations file
    ordered = [{k: v for k, v in records[r["id"]].items() if k not in ids} for r in requests]
    atomic_write_text(run_dir / "generations.jsonl", "".join(json.dumps(r) + "\n" for r in ordered))
    metrics = summarize(ordered, wall)
    log.write({"step": 0, **metrics})
    write_decode_figure(ordered, run_dir, cfg)
    refresh_report(run_dir)
    accuracy = metrics.get("decode/accuracy")
    ctx.echo(f"dllm_decode: {len(ordered)} prompts, {metrics['decode/nfe_per_answer']:.1f} NFEs per answer, "
             f"{metrics['decode/tokens_per_s']:.1f} tokens/s"
             + ("" if accuracy is None else f", accuracy {accuracy:.3f}") + f"; {run_dir / 'generations.jsonl'}")
    return {"run_dir": str(run_dir), **metrics}


def summarize(records: list[dict], wall_s: float) -> dict[str, float]:
    """Accuracy over the prompts with a reference, NFEs per answer, tokens/s over the whole pass (wall time, all
    workers together) and per worker (decoding time only)."""
    metrics = {"decode/prompts": float(len(records)),
               "decode/nfe_per_answer": float(np.mean([r["nfe"] for r in records])),
               "decode/tokens_per_s": float(sum(r["tokens"] for r in records) / wall_s),
               "decode/tokens_per_worker_s": float(sum(r["tokens"] for r in records)
                                                   / sum(r["batch_seconds"] for r in records)),
               "decode/wall_s": wall_s}
    scored = [r["correct"] for r in records if r["correct"] is not None]
    if scored:
        metrics["decode/accuracy"] = metrics["eval/headline"] = float(np.mean(scored))
    return metrics
