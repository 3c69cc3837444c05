"""The adversarial-training controller: each step the data source draws the minibatch, the learner ranks take one
shard each and run free adversarial training on it (adv_steps optimizer steps); the EMA is evaluated before training,
every eval_every steps and at the end (few-step sample quality and robustness); checkpoints resume exactly."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from tqdm import tqdm

from diffrl.kinds.adversarial.data import build_source
from diffrl.kinds.adversarial.evaluation import Evaluator
from diffrl.kinds.adversarial.report import write_adversarial_figure
from diffrl.kinds.checkpoints import restore_checkpoint, save_checkpoint, save_weights
from diffrl.platform.report_html import refresh_report
from diffrl.platform.runtime import RunContext
from diffrl.platform.worker import WorkerGroup


def run(ctx: RunContext) -> dict[str, Any]:
    cfg, roles, run_dir, log = ctx.cfg, ctx.roles, ctx.run_dir, ctx.log
    source = build_source(cfg)
    learner, rollout = roles["learner"], roles["rollout"]
    rewards = [roles["reward0"]] if "reward0" in roles.groups else []
    rollout.restore = lambda group, rank: _restore_rollout(group, rank, learner)
    evaluate = Evaluator(cfg, learner, rollout, rewards, source.heldout, source.real_set(cfg.eval.real_per_prompt))

    start, evaluations = 0, []
    if ctx.checkpoint is not None:
        restore_checkpoint(roles, ctx.checkpoint, after_learners=lambda: None)
        start, evaluations = ctx.checkpoint.step, [tuple(e) for e in ctx.checkpoint.trainer["evaluations"]]
    else:
        evaluations.append((0, evaluate(0, log, run_dir, write_grids=True)))
        _announce(ctx, 0, evaluations[-1][1], cfg)

    bar = tqdm(range(start, cfg.trainer.steps), desc="adversarial", unit="step", dynamic_ncols=True, initial=start,
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
            evaluations.append((done, evaluate(done, log, run_dir, write_grids=last)))
            _announce(ctx, done, evaluations[-1][1], cfg, bar.write)
            write_adversarial_figure(evaluations, run_dir, cfg)
        if cfg.trainer.checkpoint_every and done % cfg.trainer.checkpoint_every == 0:
            state = {"evaluations": evaluations, "sampler": {"kind": "seeded_per_step", "seed": cfg.seed,
                                                             "next_step": done}}
            path = save_checkpoint(roles, run_dir, done, state, cfg.trainer.keep_checkpoints)
            bar.write(f"step {done}: checkpoint {path}")
        if evaluated or (cfg.trainer.report_every and done % cfg.trainer.report_every == 0):
            refresh_report(run_dir)
    bar.close()

    weights = save_weights(learner, learner.call(0, "get_weights", ema=True), run_dir, "final")
    model_dir = learner.get([learner.call(0, "save_model", str(run_dir / "model"), ema=True)])[0]
    final = evaluations[-1][1]
    log.write({"summary/final": final["eval/headline"], "step": cfg.trainer.steps})
    write_adversarial_figure(evaluations, run_dir, cfg)
    refresh_report(run_dir)
    ctx.echo(f"adversarial: model saved to {model_dir} (use it as model.path)")
    return {"run_dir": str(run_dir), "final": final, "evaluations": evaluations, "weights": str(weights),
            "model": model_dir}


def _announce(ctx: RunContext, step: int, metrics: dict, cfg, write=None) -> None:
    parts = []
    for nfe in cfg.eval.nfe:
        if f"eval/nfe{nfe}/geneval" in metrics:
            parts.append(f"GenEval-shapes@{nfe} {metrics[f'eval/nfe{nfe}/geneval']:.3f}")
        parts.append(f"FD@{nfe} {metrics[f'eval/nfe{nfe}/fd']:.2f}")
    radii = cfg.eval.robustness_radii
    parts.append(f"error@eta={radii[-1]:g} {metrics[f'eval/robust/eta{radii[-1]:g}']:.4f}")
    (write or ctx.echo)(f"step {step}: held-out " + ", ".join(parts))


def _restore_rollout(group: WorkerGroup, rank: int, learner: WorkerGroup) -> None:
    """A restarted eval worker: set up, then the EMA weights the others hold."""
    group.get([group.setup_worker(rank)])
    group.get([group.call(rank, "load_weights", learner.call(0, "get_weights", ema=True))])
