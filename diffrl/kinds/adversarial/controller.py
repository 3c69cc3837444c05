"""The adversarial-training controller: each step the data source draws the minibatch, the learner ranks take one
shard each and run free adversarial training on it (adv_steps optimizer steps); the EMA is evaluated before training,
every eval_every steps and at the end (few-step sample quality and robustness); checkpoints resume exactly."""

from __future__ import annotations

from typing import Any

from diffrl.kinds.adversarial.data import build_source
from diffrl.kinds.adversarial.evaluation import Evaluator
from diffrl.kinds.adversarial.report import write_adversarial_figure
from diffrl.kinds.checkpoints import restore_checkpoint, save_weights
from diffrl.kinds.supervised import restore_eval_worker, train
from diffrl.platform.report_html import refresh_report
from diffrl.platform.runtime import RunContext


def run(ctx: RunContext) -> dict[str, Any]:
    cfg, roles, run_dir, log = ctx.cfg, ctx.roles, ctx.run_dir, ctx.log
    source = build_source(cfg)
    learner, rollout = roles["learner"], roles["rollout"]
    rewards = [roles["reward0"]] if "reward0" in roles.groups else []
    rollout.restore = lambda group, rank: restore_eval_worker(group, rank, learner)
    evaluate = Evaluator(cfg, learner, rollout, rewards, source.heldout, source.real_set(cfg.eval.real_per_prompt))

    start, evaluations = 0, []
    if ctx.checkpoint is not None:
        restore_checkpoint(roles, ctx.checkpoint, after_learners=lambda: None)
        start, evaluations = ctx.checkpoint.step, [tuple(e) for e in ctx.checkpoint.trainer["evaluations"]]
    else:
        evaluations.append((0, evaluate(0, log, run_dir, write_grids=True)))
        ctx.echo(announcement(0, evaluations[-1][1], cfg))

    evaluations = train(ctx, source, "adversarial", start, evaluations,
                        lambda step, last: evaluate(step, log, run_dir, write_grids=last),
                        lambda step, metrics: announcement(step, metrics, cfg),
                        after_eval=lambda history: write_adversarial_figure(history, run_dir, cfg))

    weights = save_weights(learner, learner.call(0, "get_weights", ema=True), run_dir, "final")
    model_dir = learner.get([learner.call(0, "save_model", str(run_dir / "model"), ema=True)])[0]
    final = evaluations[-1][1]
    log.write({"summary/final": final["eval/headline"], "step": cfg.trainer.steps})
    write_adversarial_figure(evaluations, run_dir, cfg)
    refresh_report(run_dir)
    ctx.echo(f"adversarial: model saved to {model_dir} (use it as model.path)")
    return {"run_dir": str(run_dir), "final": final, "evaluations": evaluations, "weights": str(weights),
            "model": model_dir}


def announcement(step: int, metrics: dict, cfg) -> str:
    parts = []
    for nfe in cfg.eval.nfe:
        if f"eval/nfe{nfe}/geneval" in metrics:
            parts.append(f"GenEval-shapes@{nfe} {metrics[f'eval/nfe{nfe}/geneval']:.3f}")
        parts.append(f"FD@{nfe} {metrics[f'eval/nfe{nfe}/fd']:.2f}")
    radii = cfg.eval.robustness_radii
    parts.append(f"error@eta={radii[-1]:g} {metrics[f'eval/robust/eta{radii[-1]:g}']:.4f}")
    return f"step {step}: held-out " + ", ".join(parts)

