"""The dLLM RL controller: each step the decode workers roll out G completions per training prompt (each from its
own seed; a shard lost to a worker's death is re-sent after the restart, and records are keyed by row id, so no
completion is lost or duplicated), every reward group scores them, the group advantages go with the token rows to
the learner ranks (whole groups per rank, `mu` inner updates), and the new weights go back to the decode workers.
Held-out evals decode greedily with the rollout policy; the headline is exact match."""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from diffrl.algorithms.dllm_rl import centered_advantages
from diffrl.kinds.checkpoints import restore_checkpoint, save_weights
from diffrl.kinds.dllm_rl.data import TaskPrompts, rollout_requests
from diffrl.kinds.rl.roles import reward_role
from diffrl.kinds.supervised import checkpoint_and_report
from diffrl.platform.report_html import refresh_report
from diffrl.platform.report_plots import write_reward_curve
from diffrl.platform.runtime import RunContext
from diffrl.platform.worker import WorkerGroup, split_evenly
from diffrl.rewards.base import RewardOutput
from diffrl.utils.atomic import atomic_write_text
from diffrl.workers.dllm_rl_objectives import CompletionBatch


def decode_all(decode: WorkerGroup, requests: list[dict], options: dict | None = None) -> list[dict]:
    """Records in request order (by id: a re-sent shard replaces, never adds)."""
    by_id: dict[int, dict] = {}
    for shard in decode.map("decode", requests, options=options):
        by_id.update((record["id"], record) for record in shard)
    missing = [r["id"] for r in requests if r["id"] not in by_id]
    if missing or len(by_id) != len(requests):
        raise RuntimeError(f"decode returned {len(by_id)} records for {len(requests)} requests (missing {missing[:5]})")
    return [{**by_id[r["id"]], "group": r.get("group")} for r in requests]


def score(rewards: list[WorkerGroup], records: list[dict]) -> RewardOutput:
    """Every reward group on the completions (split over its replicas); the weighted sum and every detail."""
    completions = [r["answer"] for r in records]
    prompts = [r["prompt"] for r in records]
    metadata = [{"reference": r["reference"], "tag": "all"} for r in records]
    pending = [group.scatter_async("score", [(completions[i[0]:i[-1] + 1], prompts[i[0]:i[-1] + 1],
                                              metadata[i[0]:i[-1] + 1])
                                             for i in split_evenly(list(range(len(records))), len(group)) if i],
                                   spread=True) for group in rewards]
    outputs = [RewardOutput.concat(p.results()) for p in pending]
    total = np.sum([o.scores for o in outputs], axis=0)
    return RewardOutput(scores=total.tolist(), details={k: v for o in outputs for k, v in o.details.items()})


def completion_batch(records: list[dict], rewards: list[float], seeds: list[int], leave_one_out: bool) -> CompletionBatch:
    longest = max(len(r["prompt_ids"]) for r in records)
    pad_id, eos_id = records[0]["pad_id"], records[0]["eos_id"]
    rows, pads, masks = [], [], []
    for r in records:
        pad = longest - len(r["prompt_ids"])
        rows.append([pad_id] * pad + r["prompt_ids"] + r["answer_ids"])
        pads.append(pad)
        answer = r["answer_ids"]
        end = answer.index(eos_id) + 1 if eos_id in answer else len(answer)  # up to and including the first eos
        masks.append([i < end for i in range(len(answer))])
    groups = torch.tensor([r["group"] for r in records])
    reward = torch.tensor(rewards, dtype=torch.float32)
    return CompletionBatch(tokens=torch.tensor(rows), pad=torch.tensor(pads), prompt_end=longest,
                           completion_mask=torch.tensor(masks), advantages=centered_advantages(reward, groups,
                                                                                               leave_one_out),
                           group_ids=groups, seeds=torch.tensor(seeds), prompts=[r["prompt"] for r in records])


def run(ctx: RunContext) -> dict[str, Any]:
    cfg, roles, run_dir, log = ctx.cfg, ctx.roles, ctx.run_dir, ctx.log
    tasks = TaskPrompts(cfg)
    decode, learner = roles["decode"], roles["learner"]
    rewards = [roles[reward_role(i)] for i in range(len(cfg.reward.rewards))]

    def sync() -> int:
        versions = decode.each("load_weights", learner.call(0, "get_weights"))
        return versions[0]

    def restore_decode(group: WorkerGroup, rank: int) -> None:  # a restarted decode worker gets the current weights
        group.get([group.setup_worker(rank)])
        group.get([group.call(rank, "load_weights", learner.call(0, "get_weights"))])

    decode.restore = restore_decode
    eval_options = cfg.eval_options().model_dump()

    def evaluate(step: int, last: bool) -> float:
        requests = [{"id": i, "prompt": p["prompt"], "reference": p["reference"], "seed": i}
                    for i, p in enumerate(tasks.heldout)]
        records = decode_all(decode, requests, eval_options)
        scored = score(rewards, records)
        exact = float(np.mean([r["answer"].strip() == r["reference"].strip() for r in records]))
        metrics = {"eval/headline": exact, "eval/exact_match": exact, "eval/reward": float(np.mean(scored.scores)),
                   "eval/nfe": float(np.mean([r["nfe"] for r in records]))}
        metrics.update({f"eval/{k}": float(np.mean(v)) for k, v in scored.details.items()
                        if v and isinstance(v[0], (int, float))})
        log.write({"step": step, **metrics})
        if last:
            atomic_write_text(run_dir / "heldout_generations.jsonl", "".join(
                json.dumps({k: r[k] for k in ("prompt", "answer", "reference", "nfe")}) + "\n" for r in records))
        return exact

    if ctx.checkpoint is not None:
        restore_checkpoint(roles, ctx.checkpoint, after_learners=sync)
        start, evaluations = ctx.checkpoint.step, [tuple(e) for e in ctx.checkpoint.trainer["evaluations"]]
    else:
        start, evaluations = 0, [(0, evaluate(0, cfg.trainer.steps == 0))]
        refresh_report(run_dir)

    G = cfg.rollout.group_size
    bar = tqdm(range(start, cfg.trainer.steps), desc="dLLM RL", unit="step", dynamic_ncols=True, initial=start,
               total=cfg.trainer.steps)
    for step in bar:
        times: dict[str, float] = {}
        tick = time.perf_counter()
        requests = rollout_requests(tasks.step_problems(step), G, cfg.seed, step)
        records = decode_all(decode, requests)
        times["time/rollout"] = time.perf_counter() - tick
        tick = time.perf_counter()
        scored = score(rewards, records)
        times["time/reward"] = time.perf_counter() - tick
        batch = completion_batch(records, scored.scores, [r["seed"] for r in requests], cfg.learner.leave_one_out)
        tick = time.perf_counter()
        results = learner.scatter_async("update", batch.split(len(learner)), step=step).results()
        times["time/learn"] = time.perf_counter() - tick
        tick = time.perf_counter()
        version = sync()
        times["time/sync"] = time.perf_counter() - tick
        times["time/step"] = sum(times.values())
        reward = np.asarray(scored.scores)
        record = {"step": step + 1, "reward/mean": float(reward.mean()), "reward/std": float(reward.std()),
                  "rollout/nfe": float(np.mean([r["nfe"] for r in records])),
                  "rollout/exact": float(np.mean([r["answer"].strip() == r["reference"].strip() for r in records])),
                  "weight_version": version, **times,
                  **{f"reward/{k}": float(np.mean(v)) for k, v in scored.details.items()
                     if v and isinstance(v[0], (int, float))},
                  **{f"train/{k}": float(np.mean([r[k] for r in results])) for k in results[0]}}
        log.write(record)
        bar.set_postfix(reward=f"{record['reward/mean']:.3f}", step_s=f"{times['time/step']:.2f}")

        done, last = step + 1, step + 1 == cfg.trainer.steps
        evaluated = last or (cfg.trainer.eval_every and done % cfg.trainer.eval_every == 0)
        if evaluated:
            evaluations.append((done, evaluate(done, last)))
            bar.write(f"step {done}: held-out {cfg.trainer.eval_label} {evaluations[-1][1]:.3f}")
        checkpoint_and_report(ctx, bar, done, evaluated, evaluations)
    bar.close()

    weights = save_weights(learner, learner.call(0, "get_weights"), run_dir, "final")
    model_dir = learner.get([learner.call(0, "save_model", str(run_dir / "model"), ema=False)])[0]
    write_reward_curve(run_dir, cfg.trainer.eval_label)
    base, final = evaluations[0][1], evaluations[-1][1]
    log.write({"summary/base": base, "summary/final": final, "step": cfg.trainer.steps})
    refresh_report(run_dir)
    ctx.echo(f"held-out {cfg.trainer.eval_label}: base {base:.3f} -> final {final:.3f}; model saved to {model_dir}")
    return {"run_dir": str(run_dir), "base": base, "final": final, "weights": str(weights), "model": model_dir}
