"""The supervised training loop shared by `pretrain` and `adversarial`: each step the data source draws the global
batch from (seed, step), the learner ranks take one shard each and make their update, and the loop logs the rank
means, evaluates every `trainer.eval_every` steps and at the end, checkpoints every `trainer.checkpoint_every`
steps (the eval history rides in the checkpoint, so a resumed run's report is whole) and refreshes the report."""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

from diffrl.kinds.checkpoints import save_checkpoint
from diffrl.platform.report_html import refresh_report
from diffrl.platform.runtime import RunContext
from diffrl.platform.worker import WorkerGroup


def train(ctx: RunContext, source, desc: str, start: int, evaluations: list[tuple[int, Any]],
          evaluate: Callable[[int, bool], Any], announce: Callable[[int, Any], str],
          after_eval: Callable[[list], None] | None = None) -> list[tuple[int, Any]]:
    """Steps start..trainer.steps; `evaluate(step, last)` scores the model, `announce(step, result)` is the line
    printed after it, `after_eval(evaluations)` runs after each eval (figures). Returns the eval history."""
    cfg, roles, log = ctx.cfg, ctx.roles, ctx.log
    learner = roles["learner"]
    bar = tqdm(range(start, cfg.trainer.steps), desc=desc, unit="step", dynamic_ncols=True, initial=start,
               total=cfg.trainer.steps)
    for step in bar:
        tick = time.perf_counter()
        batch = source.batch(step, cfg.learner.batch_size)
        results = learner.scatter_async("update", batch.split(len(learner)), step=step).results()
        record = {"step": step + 1, "time/learn": time.perf_counter() - tick,
                  **{f"train/{k}": float(np.mean([r[k] for r in results])) for k in results[0]}}
        log.write(record)
        bar.set_postfix(loss=f"{record['train/loss']:.4f}")

        done, last = step + 1, step + 1 == cfg.trainer.steps
        evaluated = last or (cfg.trainer.eval_every and done % cfg.trainer.eval_every == 0)
        if evaluated:
            evaluations.append((done, evaluate(done, last)))
            bar.write(announce(done, evaluations[-1][1]))
            if after_eval is not None:
                after_eval(evaluations)
        checkpoint_and_report(ctx, bar, done, evaluated, evaluations)
    bar.close()
    return evaluations


def checkpoint_and_report(ctx: RunContext, bar, done: int, evaluated: bool, evaluations: list) -> None:
    """After step `done`: a checkpoint every trainer.checkpoint_every steps (the eval history and the per-step
    sampler ride in it) and the report after an eval or every trainer.report_every steps."""
    cfg = ctx.cfg
    if cfg.trainer.checkpoint_every and done % cfg.trainer.checkpoint_every == 0:
        state = {"evaluations": evaluations, "sampler": {"kind": "seeded_per_step", "seed": cfg.seed,
                                                         "next_step": done}}
        path = save_checkpoint(ctx.roles, ctx.run_dir, done, state, cfg.trainer.keep_checkpoints)
        bar.write(f"step {done}: checkpoint {path}")
    if evaluated or (cfg.trainer.report_every and done % cfg.trainer.report_every == 0):
        refresh_report(ctx.run_dir)


def restore_eval_worker(group: WorkerGroup, rank: int, learner: WorkerGroup) -> None:
    """A restarted eval worker (rollout or decode): set up, then the learner's EMA weights the others hold."""
    group.get([group.setup_worker(rank)])
    group.get([group.call(rank, "load_weights", learner.call(0, "get_weights", ema=True))])
