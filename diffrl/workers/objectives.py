"""Learner objectives: how a shard of training data becomes rows and how a micro-batch of rows becomes a loss. The
learner is generic over this registry (OBJECTIVES); each objective declares what it needs.

The math lives in `diffrl.algorithms` (pure torch); an objective only arranges tensors and calls it. Every row's
randomness (timesteps, noise, trained steps) comes from a generator seeded by the sample's seed (or its prompt, with
shared noise) and the RL step, so rows never depend on how the controller split the batch over learner ranks.

- AWM (`awm`): rows are (sample, training timestep) pairs on the rollout grid with fresh noise.
- DiffusionNFT (`nft`): the same rows; the old policy is an EMA of the trained weights.
- Flow-GRPO (`flow_grpo`): rows are (sample, stored stochastic step) pairs from the rollout trajectory, ordered
  step-major, so that a micro-batch of one step over a rollout chunk's samples recomputes the rollout's forward
  exactly (the on-policy importance ratio is then exactly 1).
- Peer objectives, in `diffrl.workers.policy_objectives` with Flow-GRPO: GRPO-Guard (`grpo_guard`), MixGRPO's
  sliding window (`mixgrpo`), DGPO (`dgpo`) and online Diffusion-DPO (`diffusion_dpo`).
- Pretraining (`flow_matching_x0`): rows are (image, caption) pairs with a per-row timestep and noise; the denoiser
  and the text encoder train together (the built-in model's recipe).
- dLLM pretraining (`masked_diffusion`, `block_diffusion`): token rows, in `diffrl.workers.dllm_objectives`.
- dLLM RL (`diffu_grpo`, with coupled masks as an option, and `wd1`): completion rows, in
  `diffrl.workers.dllm_rl_objectives`.
- Adversarial fine-tuning (`adversarial`, free AT on the denoiser's input): in `diffrl.workers.adversarial_objectives`.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from diffrl.algorithms.awm import awm_log_prob, awm_loss, ema_decay, velocity_kl
from diffrl.algorithms.flow_matching import seeded_interpolation
from diffrl.algorithms.nft import nft_loss
from diffrl.models.adapter import Conditioning
from diffrl.workers.batch import RolloutBatch
from diffrl.workers.adversarial_objectives import AdversarialConsistencyObjective, AdversarialObjective
from diffrl.workers.dllm_objectives import BlockDiffusionObjective, MaskedDiffusionObjective
from diffrl.workers.dllm_rl_objectives import DiffuGRPOObjective, WD1Objective
from diffrl.workers.objective_base import Models, Objective
from diffrl.workers.policy_objectives import (DGPOObjective, DiffusionDPOObjective, FlowGRPOObjective,
                                              GRPOGuardObjective, MixGRPOObjective, matching_rows)
from diffrl.workers.preference_objective import PreferenceContrastiveObjective

class AWMObjective(Objective):
    """Advantage Weighted Matching (arXiv 2509.25050): see `diffrl.algorithms.awm`."""

    def __init__(self, cfg: dict, rollout_cfg: dict | None = None) -> None:
        self.cfg = cfg
        self.rows_per_sample = cfg["num_timesteps"]
        self.shadows = {"ema": _warmup_decay(cfg["ema_rate"], cfg["ema_max_decay"])} if cfg["ema_beta"] > 0 else {}

    def rows(self, batch: RolloutBatch, step: int) -> dict[str, Tensor]:
        return matching_rows(batch, step, self.cfg["num_timesteps"], self.cfg["shared_noise"],
                              self.cfg["timestep_fraction"])

    def loss(self, models: Models, rows: dict[str, Tensor], cond: Conditioning) -> tuple[Tensor, dict[str, Tensor]]:
        x_t, t = rows["x_t"], rows["t"]
        v = models.policy(x_t, t, cond)
        log_prob = awm_log_prob(v, rows["x0"], rows["eps"], t, huber_p=self.cfg["huber_p"])
        policy = awm_loss(log_prob, rows["advantages"].double()).float()
        with torch.no_grad():
            v_ref = models.reference(x_t, t, cond)
        kl = velocity_kl(v, v_ref).mean()
        loss = policy + self.cfg["kl_beta"] * kl
        stats = {"policy_loss": policy.detach(), "kl": kl.detach(),
                 "mse": ((v.detach() - (rows["eps"] - rows["x0"])) ** 2).mean()}
        if self.shadows:
            with torch.no_grad():
                v_ema = models.shadow("ema", x_t, t, cond)
            ema_kl = velocity_kl(v, v_ema).mean()
            loss = loss + self.cfg["ema_beta"] * ema_kl
            stats["ema_kl"] = ema_kl.detach()
        return loss, stats


class NFTObjective(Objective):
    """DiffusionNFT (Sol-RL's loss): see `diffrl.algorithms.nft`; the old policy is the EMA shadow "old"."""

    def __init__(self, cfg: dict, rollout_cfg: dict | None = None) -> None:
        self.cfg = cfg
        self.rows_per_sample = cfg["num_timesteps"]
        self.shadows = {"old": _warmup_decay(cfg["old_decay_rate"], cfg["old_max_decay"])}

    def rows(self, batch: RolloutBatch, step: int) -> dict[str, Tensor]:
        return matching_rows(batch, step, self.cfg["num_timesteps"], False, self.cfg["timestep_fraction"])

    def loss(self, models: Models, rows: dict[str, Tensor], cond: Conditioning) -> tuple[Tensor, dict[str, Tensor]]:
        x_t, t = rows["x_t"], rows["t"]
        v = models.policy(x_t, t, cond)
        with torch.no_grad():
            v_old = models.shadow("old", x_t, t, cond)
            v_ref = models.reference(x_t, t, cond)
        return nft_loss(v, v_old, v_ref, x_t, rows["x0"], t, rows["advantages"], beta=self.cfg["beta"],
                        adv_clip=self.cfg["adv_clip"], kl_weight=self.cfg["kl_weight"])


class FlowMatchingX0Objective(Objective):
    """Supervised flow matching with x0-prediction, the built-in model's pretraining: x_t = (1 - t) x0 + t eps with
    t ~ U(0, 1) and eps ~ N(0, I) drawn from each row's seed, loss ||x0_hat(x_t, t, c) - x0||^2 averaged; the EMA
    "eval" shadow copies the weights until `ema_start`, then decays at `ema_decay`."""

    needs_reference = False
    advantages = None
    trains = "model"

    def __init__(self, cfg: dict, rollout_cfg: dict | None = None) -> None:
        start, decay = cfg["ema_start"], cfg["ema_decay"]
        self.shadows = {"eval": lambda step: decay if step > start else 0.0}

    def rows(self, batch, step: int) -> dict[str, Tensor]:
        t, noise = seeded_interpolation(batch.x0, batch.seeds.tolist())
        t_b = t.view(-1, *([1] * (batch.x0.dim() - 1)))
        return {"index": torch.arange(len(batch)), "t": t, "x0": batch.x0, "x_t": (1 - t_b) * batch.x0 + t_b * noise}

    def loss(self, models: Models, rows: dict[str, Tensor], cond: Conditioning) -> tuple[Tensor, dict[str, Tensor]]:
        x0_hat = models.trained().denoiser.predict_x0(rows["x_t"], rows["t"], cond)
        loss = ((x0_hat - rows["x0"]) ** 2).mean()
        return loss, {"mse": loss.detach()}


def _warmup_decay(rate: float, max_decay: float) -> Callable[[int], float]:
    """min(rate * step, max_decay) (`awm.ema_decay`), or the constant max_decay when rate is 0."""
    return (lambda step: ema_decay(step, rate, max_decay)) if rate > 0 else (lambda step: max_decay)


OBJECTIVES: dict[str, type[Objective]] = {"awm": AWMObjective, "nft": NFTObjective, "flow_grpo": FlowGRPOObjective,
                                          "flow_matching_x0": FlowMatchingX0Objective}

OBJECTIVES.update(masked_diffusion=MaskedDiffusionObjective, block_diffusion=BlockDiffusionObjective,
                  adversarial=AdversarialObjective, adversarial_consistency=AdversarialConsistencyObjective,
                  preference_contrastive=PreferenceContrastiveObjective, diffu_grpo=DiffuGRPOObjective,
                  wd1=WD1Objective, grpo_guard=GRPOGuardObjective, mixgrpo=MixGRPOObjective, dgpo=DGPOObjective,
                  diffusion_dpo=DiffusionDPOObjective)


def objective_class(name: str) -> type[Objective]:
    if name not in OBJECTIVES:
        raise ValueError(f"learner.algorithm: unknown objective {name!r}; allowed: {sorted(OBJECTIVES)}")
    return OBJECTIVES[name]


def build_objective(learner_cfg: dict, rollout_cfg: dict | None) -> Objective:
    """The objective `learner_cfg["algorithm"]`, built from its config section (learner_cfg[cls.section or name])
    when the learner config has one, else from the learner config itself."""
    name = learner_cfg["algorithm"]
    cls = objective_class(name)
    if cls.trajectories and rollout_cfg is None:
        raise ValueError(f"learner.algorithm={name} needs the rollout config (sampler, noise level, window)")
    section = learner_cfg.get(cls.section or name, learner_cfg)
    return cls(section, rollout_cfg)
