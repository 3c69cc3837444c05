"""The RL controller: one short loop over the roles (rollout or Sol-RL, rewards, learner, weight sync), the same on
Ray and in-process. The runtime starts the roles and hands them over in `ctx` (see diffrl.platform.runtime)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from diffrl.algorithms.advantages import group_advantages
from diffrl.kinds.checkpoints import restore_checkpoint, save_checkpoint, save_weights
from diffrl.kinds.rl.config import RLJobConfig
from diffrl.kinds.rl.data import prompt_splits, step_requests
from diffrl.kinds.rl.pairs import check_resumed_pairs, pair_batch, read_pairs
from diffrl.kinds.rl.evaluation import evaluate, step_record, write_rl_grid
from diffrl.kinds.rl.roles import RLRoles
from diffrl.kinds.rollouts import generate_and_score
from diffrl.kinds.rl.sol import sol_batch
from diffrl.platform.report_html import refresh_report
from diffrl.platform.report_plots import write_reward_curve
from diffrl.platform.runtime import RunContext
from diffrl.platform.worker import WorkerGroup
from diffrl.workers.batch import RolloutBatch


def run(ctx: RunContext) -> dict[str, Any]:
    """Train from step 0 (after a base eval) or from ctx.checkpoint; returns the summary (base and final held-out
    headline, run dir, final weights)."""
    cfg, roles, run_dir, log = ctx.cfg, ctx.roles, ctx.run_dir, ctx.log
    train_prompts, heldout_prompts = prompt_splits(cfg)
    eval_prompts = heldout_prompts if cfg.trainer.eval_prompts == "heldout" else train_prompts
    rl = RLRoles(roles, cfg)
    rollout, learner, explore, rewards, sync = rl.rollout, rl.learner, rl.explore, rl.rewards, rl.sync
    offline = cfg.learner.diffusion_dpo.pairs
    pairs = read_pairs(offline) if offline is not None else None  # offline Diffusion-DPO: a pairs file
    digest = None if pairs is None else check_resumed_pairs(offline, pairs, ctx.checkpoint)
    if ctx.checkpoint is not None:
        restore_checkpoint(roles, ctx.checkpoint, after_learners=sync.sync)
        start, evaluations = ctx.checkpoint.step, [tuple(e) for e in ctx.checkpoint.trainer["evaluations"]]
    _write_quantization_report([g for g in (rollout, explore) if g is not None], run_dir)
    if ctx.checkpoint is None:
        base, base_batch = evaluate(cfg, sync, rollout, rewards, eval_prompts, 0, log)
        write_rl_grid(cfg, base_batch, run_dir, "before", 0, base)
        start, evaluations = 0, [(0, base)]
        refresh_report(run_dir)

    bar = tqdm(range(start, cfg.trainer.steps), desc="RL", unit="step", dynamic_ncols=True, initial=start,
               total=cfg.trainer.steps)
    for step in bar:
        times: dict[str, float] = {}
        if pairs is not None:
            batch, extra = pair_batch(pairs, cfg.rollout.prompts_per_step, cfg.seed, step, rollout, times), {}
        elif explore is not None:
            batch, extra = sol_batch(cfg, rollout, explore, rewards, train_prompts, step, times)
        else:
            batch, extra = generate_and_score(rollout, rewards, step_requests(train_prompts, cfg, step), times), {}
        batch.advantages = compute_advantages(batch, cfg)
        results = _timed(times, "learn", lambda: learner.scatter_async("update", batch.split(len(learner)),
                                                                        step=step).results())
        version = _timed(times, "sync", sync.sync)
        times["time/step"] = sum(times.values())
        record = {**step_record(step + 1, batch, results, times, version), **extra}
        log.write(record)
        bar.set_postfix(reward=f"{record['reward/mean']:.3f}", step_s=f"{times['time/step']:.2f}")

        done, last = step + 1, step + 1 == cfg.trainer.steps
        evaluated = last or (cfg.trainer.eval_every and done % cfg.trainer.eval_every == 0)
        if evaluated:
            score, eval_batch = evaluate(cfg, sync, rollout, rewards, eval_prompts, done, log)
            evaluations.append((done, score))
            bar.write(f"step {done}: held-out {cfg.trainer.eval_label} {score:.3f}")
            if last:
                write_rl_grid(cfg, eval_batch, run_dir, "after", done, score)
        if cfg.trainer.checkpoint_every and done % cfg.trainer.checkpoint_every == 0:
            path = save_checkpoint(roles, run_dir, done, _trainer_state(cfg, evaluations, done, digest),
                                   cfg.trainer.keep_checkpoints)
            bar.write(f"step {done}: checkpoint {path}")
        if evaluated or (cfg.trainer.report_every and done % cfg.trainer.report_every == 0):
            refresh_report(run_dir)
    bar.close()

    weights = save_weights(learner, sync.learner_weights(ema=cfg.learner.eval_ema_decay > 0), run_dir, "final")
    write_reward_curve(run_dir, cfg.trainer.eval_label)
    base, final = evaluations[0][1], evaluations[-1][1]
    log.write({"summary/base": base, "summary/final": final, "step": cfg.trainer.steps})
    refresh_report(run_dir)
    ctx.echo(f"held-out {cfg.trainer.eval_label}: base {base:.3f} -> final {final:.3f}")
    return {"run_dir": str(run_dir), "base": base, "final": final, "weights": str(weights)}


def compute_advantages(batch: RolloutBatch, cfg: RLJobConfig) -> torch.Tensor:
    """Per-prompt advantages as each method defines them (the AWM, Flow-GRPO and DiffusionNFT reference code): AWM clips to +-5 and divides by 5 (then
    damps negatives by awm.negative_scale); Flow-GRPO clips to +-5; DiffusionNFT clips inside its loss."""
    algorithm = cfg.learner.algorithm
    section = getattr(cfg.learner, algorithm)
    scale = section.adv_clip if algorithm == "awm" else 1.0
    adv = group_advantages(batch.rewards, batch.group_ids, global_std=section.global_std, clip=section.adv_clip,
                           scale=scale)
    if algorithm == "awm":
        adv = torch.where(adv < 0, adv * section.negative_scale, adv)
    return adv


def _timed(times: dict[str, float], stage: str, work: Any) -> Any:
    tick = time.perf_counter()
    result = work()
    times[f"time/{stage}"] = time.perf_counter() - tick
    return result


def _trainer_state(cfg: RLJobConfig, evaluations: list, done: int, pairs_digest: str | None) -> dict[str, Any]:
    return {
        **({"pairs_digest": pairs_digest} if pairs_digest is not None else {}),  # offline DPO: the pairs trained on
        "evaluations": evaluations,
        # Prompts and seeds of step s are drawn from a generator seeded by (seed, s): the sampler's position is the
        # step itself.
        "sampler": {"kind": "seeded_per_step", "seed": cfg.seed, "next_step": done},
        # Advantages are normalized within each step's groups (per prompt, or over the batch with global_std); no
        # statistics carry over from one step to the next.
        "advantages": {"kind": "per_step_groups", "carried": None},
    }


def _write_quantization_report(groups: list[WorkerGroup], run_dir: Path) -> None:
    """runs/NAME/quantization.json: per low-precision group, which linear layers run quantized and why not."""
    reports = {group.name: group.run("quantization_report")[0] for group in groups}
    reports = {name: report for name, report in reports.items() if report}
    if reports:
        (run_dir / "quantization.json").write_text(json.dumps(reports, indent=1))
