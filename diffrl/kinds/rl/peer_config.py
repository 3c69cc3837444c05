"""Config sections of Flow-GRPO and the peer objectives (learner.flow_grpo, learner.grpo_guard, learner.mixgrpo,
learner.dgpo, learner.diffusion_dpo) and the checks that tie the peers to the rollout; defaults from the papers'
code. GRPO-Guard and MixGRPO take Flow-GRPO's keys (and defaults) plus their own."""

from __future__ import annotations

from pydantic import Field

from diffrl.platform.config import Section


class FlowGRPOConfig(Section):
    """Flow-GRPO (arXiv 2505.05470); defaults from the GenEval preset of yifan123/flow_grpo."""

    clip_range: float = Field(1e-4, gt=0, description="PPO ratio clip eps")
    clip_range_high: float | None = Field(None, gt=0, description="asymmetric upper clip; None uses clip_range")
    kl_beta: float = Field(0.04, ge=0, description="weight of the KL to the reference policy's step means")
    timestep_fraction: float = Field(1.0, gt=0, le=1, description="share of the stored steps trained per sample")
    adv_clip: float = Field(5.0, gt=0)
    global_std: bool = Field(True, description="advantage std over the whole batch (the presets' default)")


class GRPOGuardConfig(FlowGRPOConfig):
    """GRPO-Guard (arXiv 2510.22319) on Flow-GRPO's loss; verl-omni's example clips at 2e-6 with its ratio scale."""

    ratio_norm: bool = Field(True, description="RatioNorm: remove the log-ratio's analytic shift, rescale per step")
    reweight: bool = Field(True, description="weight each step's policy loss by 1 / |dt|")


class MixGRPOConfig(FlowGRPOConfig):
    """MixGRPO (arXiv 2507.21802; Tencent-Hunyuan/MixGRPO scripts: window 4 of 25 steps, shift every 25 iterations
    by 1). The window size is rollout.sde_window; MixGRPO-Flash is rollout.window_tail_compress."""

    shift_every: int = Field(25, ge=1, description="RL steps between window moves (upstream iters_per_group)")
    stride: int = Field(1, ge=0, description="sampler steps the window moves (0 freezes it at step 0)")
    roll_back: bool = Field(True, description="past the last start the window wraps to step 0 (else it stays)")


class DGPOConfig(Section):
    """DGPO (arXiv 2510.08425; Luo-Yihong/DGPO config/dgpo.py: beta_dpo 100, beta 0.02, 4 train timesteps from the
    first 6 of 10 rollout steps)."""

    num_timesteps: int = Field(4, ge=1, description="training timesteps per sample, shared by its group")
    timestep_fraction: float = Field(0.6, gt=0, le=1, description="timesteps from grid steps [1, fraction * steps)")
    beta_dpo: float = Field(100.0, gt=0, description="scale of the group preference S")
    kl_beta: float = Field(0.02, ge=0, description="weight of ||v - v_ref||^2")
    adv_clip: float = Field(5.0, gt=0)
    global_std: bool = False


class DiffusionDPOConfig(Section):
    """Online Diffusion-DPO (arXiv 2311.12908; flow_grpo config/dpo.py: beta 100) on each group's best/worst pair."""

    num_timesteps: int = Field(4, ge=1, description="training timesteps per pair (shared noise and timestep)")
    timestep_fraction: float = Field(0.9, gt=0, le=1, description="timesteps from grid steps [1, fraction * steps)")
    beta: float = Field(100.0, gt=0, description="DPO temperature (the paper's beta T w(t), absorbed)")
    adv_clip: float = Field(5.0, gt=0)
    global_std: bool = False
    pairs: str | None = Field(None, description="offline pairs: a JSON-lines file of {prompt, chosen, rejected} "
                              "(image paths relative to it; diffrl.kinds.rl.pairs); None: online pairs from rollouts")


PEER_SECTIONS = {"grpo_guard": GRPOGuardConfig, "mixgrpo": MixGRPOConfig, "dgpo": DGPOConfig,
                 "diffusion_dpo": DiffusionDPOConfig}


def check_peer_objective(cfg) -> None:
    """Cross-section checks of the peer objectives (cfg: an RLJobConfig), each naming the keys to change."""
    algorithm, rollout, learner = cfg.learner.algorithm, cfg.rollout, cfg.learner
    if algorithm in ("grpo_guard", "mixgrpo") and rollout.sampler not in ("sde", "cps"):
        raise ValueError(f"learner.algorithm={algorithm} needs stochastic rollouts with log-probs: set rollout.sampler "
                         f"to sde or cps (got {rollout.sampler})")
    if algorithm in ("grpo_guard", "mixgrpo") and rollout.noise_level <= 0:
        raise ValueError(f"learner.algorithm={algorithm} needs rollout.noise_level > 0 (a noise level of 0 makes the "
                         "steps deterministic: no log-probs, and RatioNorm would divide by a zero std)")
    if algorithm == "mixgrpo":
        if cfg.trainer.eval_sampler == "rollout":
            raise ValueError("learner.algorithm=mixgrpo: trainer.eval_sampler=rollout is not supported (the window "
                             "is set per RL step, not for the held-out eval); use trainer.eval_sampler: ode")
        if not rollout.sde_window:
            raise ValueError("learner.algorithm=mixgrpo needs rollout.sde_window > 0 (the sliding window's size)")
        if rollout.strategy == "sol":
            raise ValueError("learner.algorithm=mixgrpo sets the window per RL step; rollout.strategy=sol is not "
                             "supported with it")
    elif rollout.window_tail_compress is not None:
        raise ValueError("rollout.window_tail_compress is MixGRPO-Flash's post-window ODE: it needs "
                         "learner.algorithm=mixgrpo (one window shared by a step's samples)")
    if learner.diffusion_dpo.pairs is not None:
        if algorithm != "diffusion_dpo":
            raise ValueError(f"learner.diffusion_dpo.pairs: offline pairs need learner.algorithm=diffusion_dpo "
                             f"(got {algorithm})")
        if rollout.group_size != 2:
            raise ValueError(f"rollout.group_size: must be 2 with learner.diffusion_dpo.pairs (each pair is a group "
                             f"of two samples, chosen and rejected); got {rollout.group_size}")
        if rollout.strategy == "sol":
            raise ValueError("rollout.strategy: sol does not apply with learner.diffusion_dpo.pairs (it trains on "
                             "the file's pairs, not on rollouts)")
    if algorithm in ("dgpo", "diffusion_dpo"):
        if rollout.prompts_per_step % learner.num_workers:
            raise ValueError(f"learner.algorithm={algorithm} needs whole groups on each learner rank: "
                             f"learner.num_workers={learner.num_workers} must divide rollout.prompts_per_step="
                             f"{rollout.prompts_per_step}")
        # Rows come from the rollout grid, or from the exploration grid when Sol-RL trains on its exploration samples.
        explore = rollout.strategy == "sol" and not rollout.sol.regenerate
        key, grid_steps = ("rollout.sol.explore_steps", rollout.sol.explore_steps) if explore else \
            ("rollout.num_steps", rollout.num_steps)
        steps = int(grid_steps * getattr(learner, algorithm).timestep_fraction) - 1
        if getattr(learner, algorithm).num_timesteps > steps:
            raise ValueError(f"learner.{algorithm}.num_timesteps={getattr(learner, algorithm).num_timesteps} exceeds "
                             f"the {max(steps, 0)} training timesteps of {key}={grid_steps}")
    if algorithm == "dgpo":
        # A group's rows must share a micro-batch: the largest multiple of group_size x timesteps that divides the
        # rows per rank and fits learner.micro_batch_size (at least one group) replaces a size that splits groups.
        group_rows = rollout.group_size * learner.dgpo.num_timesteps
        rows = rollout.prompts_per_step // learner.num_workers * group_rows
        wanted = learner.micro_batch_size
        if wanted % group_rows or rows % wanted:
            fits = [m for m in range(group_rows, rows + 1, group_rows) if rows % m == 0 and m <= wanted]
            chosen = max(fits) if fits else group_rows
            learner.__dict__["micro_batch_size"] = chosen
            cfg._notices.append(f"learner.micro_batch_size={chosen} (was {wanted}): dgpo keeps each group's "
                                f"{group_rows} rows (group_size x dgpo.num_timesteps) in one micro-batch")
