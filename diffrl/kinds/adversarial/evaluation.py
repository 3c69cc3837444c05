"""The adversarial job's eval, on the EMA weights: few-step sample quality at each eval NFE — held-out
GenEval-shapes (strict; shapes world only) and the Frechet distance between generated and real held-out images in
the shapes feature space (`diffrl.rewards.shapes_features`) — and robustness: the denoising error under input
perturbations of growing size (`LearnerWorker.perturbation_errors`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from diffrl.algorithms.frechet import frechet_distance
from diffrl.kinds.adversarial.config import AdversarialJobConfig
from diffrl.kinds.adversarial.data import RealSet
from diffrl.kinds.rollouts import eval_metrics, eval_requests, generate_and_score, write_grid
from diffrl.platform.worker import WorkerGroup
from diffrl.rewards.shapes_features import shapes_features
from diffrl.utils.rng import EVAL_SEED_BASE
from diffrl.workers.batch import RolloutBatch, SampleRequest

METRIC = "geneval_shapes/strict"


def folder_requests(real: RealSet, per_prompt: int) -> list[SampleRequest]:
    """Samples for an image folder: its held-out captions, `per_prompt` fixed seeds each, every sample its own seed
    (captions repeat, and without captions every prompt is empty)."""
    return [SampleRequest(prompt, {}, index, EVAL_SEED_BASE + index * per_prompt + j)
            for index, prompt in enumerate(real.prompts) for j in range(per_prompt)]


def eval_sampler(cfg: AdversarialJobConfig) -> str:
    if cfg.eval.sampler != "auto":
        return cfg.eval.sampler
    return "consistency" if cfg.learner.algorithm == "adversarial_consistency" else "ode"


class Evaluator:
    """Scores the learner's EMA at an eval step; `real` is the held-out real set (features computed once)."""

    def __init__(self, cfg: AdversarialJobConfig, learner: WorkerGroup, rollout: WorkerGroup,
                 rewards: list[WorkerGroup], heldout: list[dict], real: RealSet) -> None:
        self.cfg, self.learner, self.rollout, self.rewards = cfg, learner, rollout, rewards
        self.heldout, self.real = heldout, real
        self.real_features = shapes_features(real.images)
        count = min(cfg.eval.robustness_samples, len(real.images))
        self.robust_rows = np.random.default_rng([cfg.seed, 3]).permutation(len(real.images))[:count]

    def __call__(self, step: int, log, run_dir, write_grids: bool) -> dict[str, Any]:
        cfg = self.cfg
        self.rollout.each("load_weights", self.learner.call(0, "get_weights", ema=True))
        metrics: dict[str, Any] = {}
        shapes = cfg.data.source == "shapes"
        sampler = eval_sampler(cfg)
        requests = (eval_requests(self.heldout, cfg.eval.seeds_per_prompt) if shapes
                    else folder_requests(self.real, cfg.eval.seeds_per_prompt))
        for nfe in cfg.eval.nfe:
            if shapes:
                batch = generate_and_score(self.rollout, self.rewards, requests, num_steps=nfe, sampler=sampler)
                metrics[f"eval/nfe{nfe}/geneval"] = eval_metrics(batch, METRIC)["eval/headline"]
            else:
                batch = RolloutBatch.concat(self.rollout.map("generate", requests, num_steps=nfe, sampler=sampler))
            metrics[f"eval/nfe{nfe}/fd"] = frechet_distance(shapes_features(batch.images), self.real_features)
            if write_grids:
                title = f"step {step}, {nfe} {sampler} steps"
                write_grid(batch, run_dir, f"nfe{nfe}_step{step}", step, title, cfg.eval.seeds_per_prompt,
                           cfg.eval.sample_grid_prompts)
        rows = self.robust_rows
        seeds = [EVAL_SEED_BASE + int(r) for r in rows]
        errors = self.learner.get([self.learner.call(
            0, "perturbation_errors", self.real.x0()[rows], [self.real.prompts[r] for r in rows], seeds,
            cfg.eval.robustness_times, cfg.eval.robustness_radii, cfg.eval.attack)])[0]
        for eta, error in zip(cfg.eval.robustness_radii, errors):
            metrics[f"eval/robust/eta{eta:g}"] = error
        first = cfg.eval.nfe[0]
        metrics["eval/headline"] = metrics.get(f"eval/nfe{first}/geneval", metrics[f"eval/nfe{first}/fd"])
        log.write({"step": step, **metrics})
        return metrics
