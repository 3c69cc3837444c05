"""The pretraining controller: each step the data source draws the global batch, the learner ranks take one shard
each and make one data-parallel update; at eval steps the rollout workers sample the held-out prompts with the EMA
weights and the reward worker scores them (GenEval-shapes, strict, averaged over task types)."""

from __future__ import annotations

from typing import Any

from diffrl.envs.worlds import REWARDS
from diffrl.kinds.checkpoints import restore_checkpoint, save_weights
from diffrl.kinds.pretrain.config import PretrainJobConfig
from diffrl.kinds.pretrain.data import build_source
from diffrl.kinds.pretrain.text_eval import evaluate_decoding
from diffrl.kinds.rollouts import eval_metrics, eval_requests, generate_and_score, write_grid
from diffrl.kinds.supervised import restore_eval_worker, train
from diffrl.platform.report_html import refresh_report
from diffrl.platform.runtime import RunContext
from diffrl.platform.worker import WorkerGroup



def run(ctx: RunContext) -> dict[str, Any]:
    cfg, roles, run_dir, log = ctx.cfg, ctx.roles, ctx.run_dir, ctx.log
    source = build_source(cfg)
    learner = roles["learner"]
    if cfg.data.source == "scenes_pairs":
        from diffrl.kinds.pretrain.preference_data import heldout_pairs
        from diffrl.kinds.pretrain.preference_eval import degraded_pairs, evaluate_pairs
        from diffrl.models.registry import build_model

        local = build_model(cfg.model.name, cfg.model.path, cfg.seed)
        pairs = heldout_pairs(source.heldout, cfg.data.heldout_pairs_per_prompt, cfg.data.split_seed)
        degraded = degraded_pairs(pairs)

        def held_out_score(step: int, last: bool) -> float:
            return evaluate_pairs(learner, local, pairs, degraded, step, log, run_dir, last)
    elif cfg.data.source == "sorting":
        roles["decode"].restore = lambda group, rank: restore_eval_worker(group, rank, learner)

        def held_out_score(step: int, last: bool) -> float:
            return evaluate_decoding(cfg, learner, roles["decode"], source.heldout, step, log, run_dir, last)
    else:
        rollout, rewards = roles["rollout"], [roles["reward0"]]
        rollout.restore = lambda group, rank: restore_eval_worker(group, rank, learner)

        def held_out_score(step: int, last: bool) -> float:
            return evaluate(cfg, learner, rollout, rewards, source.heldout, step, log, run_dir, last)
    start, evaluations = 0, []
    if ctx.checkpoint is not None:
        restore_checkpoint(roles, ctx.checkpoint, after_learners=lambda: None)
        start, evaluations = ctx.checkpoint.step, [tuple(e) for e in ctx.checkpoint.trainer["evaluations"]]

    evaluations = train(ctx, source, "pretrain", start, evaluations, held_out_score,
                        lambda step, score: f"step {step}: held-out {cfg.trainer.eval_label} {score:.3f}")

    weights = save_weights(learner, learner.call(0, "get_weights", ema=True), run_dir, "final")
    model_dir = learner.get([learner.call(0, "save_model", str(run_dir / "model"), ema=True)])[0]
    final = evaluations[-1][1] if evaluations else float("nan")
    log.write({"summary/final": final, "step": cfg.trainer.steps})
    refresh_report(run_dir)
    ctx.echo(f"pretrain: held-out {cfg.trainer.eval_label} {final:.3f}; model saved to {model_dir} "
             f"(use it as model.path)")
    return {"run_dir": str(run_dir), "final": final, "weights": str(weights), "model": model_dir}


def evaluate(cfg: PretrainJobConfig, learner: WorkerGroup, rollout: WorkerGroup, rewards: list[WorkerGroup],
             prompts: list[dict], step: int, log, run_dir, last: bool) -> float:
    """Held-out strict accuracy of the EMA weights (ODE sampling from fixed seeds); the last eval also writes the
    sample grid."""
    rollout.each("load_weights", learner.call(0, "get_weights", ema=True))
    batch = generate_and_score(rollout, rewards, eval_requests(prompts, cfg.trainer.eval_seeds_per_prompt),
                               sampler="ode")
    metrics = eval_metrics(batch, f"{REWARDS[cfg.data.source]}/strict")
    log.write({"step": step, **metrics})
    if last:
        title = f"after pretraining: {cfg.trainer.eval_label} {metrics['eval/headline']:.3f} (step {step})"
        write_grid(batch, run_dir, "after", step, title, cfg.trainer.eval_seeds_per_prompt,
                   cfg.trainer.sample_grid_prompts)
    return metrics["eval/headline"]

