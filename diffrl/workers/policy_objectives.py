"""Policy objectives on rollouts of the flow model: the (sample, timestep) rows AWM / DiffusionNFT / DGPO share, and
Flow-GRPO with the peers built on it (`diffrl.workers.objectives` holds the registry).

- Flow-GRPO (`flow_grpo`): rows are (sample, stored stochastic step) pairs from the rollout trajectory, ordered
  step-major, so that a micro-batch of one step over a rollout chunk's samples recomputes the rollout's forward
  exactly (the on-policy importance ratio is then exactly 1).
- GRPO-Guard (`grpo_guard`): Flow-GRPO with the ratio normalized per step and the steps' gradients reweighted; the
  rollout policy's step mean is recovered from the stored step and its noise, which is a function of the sample's
  seed and the step (`sampling.step_noise`), so nothing more is stored.
- MixGRPO (`mixgrpo`): Flow-GRPO's loss on a window of SDE steps that slides with the RL step (the rollout requests
  carry the window start; `rollout.window_tail_compress` is MixGRPO-Flash's DPM-Solver++ tail).
- DGPO (`dgpo`): group-level preference on final samples, rows as AWM's with noise and timesteps shared per group.
- Diffusion-DPO (`diffusion_dpo`, online): rows are (best, worst) pairs of each group at shared timesteps and noise.
"""

from __future__ import annotations

import zlib

import torch
from torch import Tensor

from diffrl.algorithms.awm import velocity_kl
from diffrl.algorithms.dgpo import dgpo_loss, flow_matching_error
from diffrl.algorithms.diffusion_dpo import best_worst_pairs, dpo_loss
from diffrl.algorithms.flow_grpo import flow_grpo_kl, flow_grpo_loss
from diffrl.algorithms.flow_matching import cps_step, sde_step, stratified_timesteps
from diffrl.algorithms.grpo_guard import guarded_loss, ratio_norm_log_ratio, step_weights
from diffrl.models.adapter import Conditioning, concat_conditioning
from diffrl.utils.rng import Stream, stream_generator
from diffrl.workers.batch import RolloutBatch
from diffrl.workers.objective_base import Models, Objective
from diffrl.workers.sampling import step_noise


def matching_rows(
    batch: RolloutBatch, step: int, num_timesteps: int, shared_noise: bool, fraction: float = 0.9
) -> dict[str, Tensor]:
    """(sample, timestep) rows for AWM and DiffusionNFT: stratified grid timesteps and fresh noise per row."""
    ts, eps = [], []
    for seed, prompt in zip(batch.seeds.tolist(), batch.prompts):
        # Shared noise gives every sample of a prompt's group the same timesteps and noise (common random
        # numbers), so regions the samples share get nearly cancelling gradients instead of independent noise.
        key = zlib.crc32(prompt.encode()) if shared_noise else seed
        gen = stream_generator(Stream.TRAINING_ROWS, key, step)
        ts.append(stratified_timesteps(batch.grid, num_timesteps, gen, fraction=fraction))
        eps.append(torch.randn((num_timesteps, *batch.samples.shape[1:]), generator=gen))
    t = torch.stack(ts).float().reshape(-1)
    index = torch.arange(len(batch)).repeat_interleave(num_timesteps)
    x0 = batch.samples[index]
    noise = torch.cat(eps)
    t_b = t.view(-1, 1, 1, 1)
    return {"index": index, "t": t, "x0": x0, "eps": noise, "x_t": (1 - t_b) * x0 + t_b * noise,
            "advantages": batch.advantages.float()[index]}


def stored_steps(rollout_cfg: dict) -> int:
    """How many stochastic steps a Flow-GRPO rollout stores per sample."""
    return rollout_cfg["sde_window"] or rollout_cfg["num_steps"] - 1


class FlowGRPOObjective(Objective):
    """Flow-GRPO (arXiv 2505.05470): clipped-ratio policy loss on the stored SDE/CPS steps plus beta * KL of the
    step means to the reference model's (see `diffrl.algorithms.flow_grpo`)."""

    guided = True
    trajectories = True

    def __init__(self, cfg: dict, rollout_cfg: dict) -> None:
        self.cfg, self.rollout_cfg = cfg, rollout_cfg
        self.stored = stored_steps(rollout_cfg)
        self.rows_per_sample = max(1, int(self.stored * cfg["timestep_fraction"]))
        self.step_fn = sde_step if rollout_cfg["sampler"] == "sde" else cps_step

    def rows(self, batch: RolloutBatch, step: int) -> dict[str, Tensor]:
        if batch.latents is None or batch.latents.shape[1] != self.stored:
            found = None if batch.latents is None else batch.latents.shape[1]
            raise ValueError(f"flow_grpo needs {self.stored} stored steps per sample from the rollout, got {found}")
        n, trained = len(batch), self.rows_per_sample
        if trained == self.stored:
            slots = torch.arange(trained).expand(n, trained)
        else:  # timestep_fraction < 1: a per-sample random subset of the stored steps, in step order
            slots = torch.stack([
                torch.randperm(self.stored, generator=stream_generator(Stream.TRAINED_STEPS, seed, step))[:trained].sort()[0]
                for seed in batch.seeds.tolist()
            ])
        sample_index = torch.arange(n).expand(trained, n).T  # [n, trained]
        # Step-major order: all samples' first trained step, then the second, ...
        index, slot = sample_index.T.reshape(-1), slots.T.reshape(-1)
        step_index = batch.step_index[index, slot]
        return {
            "index": index,
            "x": batch.latents[index, slot],
            "x_next": batch.next_latents[index, slot],
            "old_log_prob": batch.log_probs[index, slot],
            "sigma": batch.grid[step_index],
            "sigma_next": batch.grid[step_index + 1],
            "advantages": batch.advantages.float()[index],
            "step": step_index,
        }

    def loss(self, models: Models, rows: dict[str, Tensor], cond: Conditioning) -> tuple[Tensor, dict[str, Tensor]]:
        x, sigma, sigma_next, x_next = rows["x"], rows["sigma"], rows["sigma_next"], rows["x_next"]
        noise_level = self.rollout_cfg["noise_level"]
        v = models.policy(x, sigma, cond)
        out = self.step_fn(x, v, sigma, sigma_next, noise_level, prev_sample=x_next)
        policy, stats = flow_grpo_loss(out.log_prob, rows["old_log_prob"], rows["advantages"],
                                       clip_range=self.cfg["clip_range"], clip_range_high=self.cfg["clip_range_high"])
        loss = policy
        stats = {"policy_loss": policy.detach(), **stats}
        if self.cfg["kl_beta"] > 0:
            with torch.no_grad():
                v_ref = models.reference(x, sigma, cond)
                ref = self.step_fn(x, v_ref, sigma, sigma_next, noise_level, prev_sample=x_next)
            kl = flow_grpo_kl(out.mean, ref.mean, out.std).mean()
            loss = loss + self.cfg["kl_beta"] * kl
            stats["kl"] = kl.detach()
        return loss, stats


class GRPOGuardObjective(FlowGRPOObjective):
    """GRPO-Guard (arXiv 2510.22319): Flow-GRPO with RatioNorm and 1 / |dt| step reweighting (see
    `diffrl.algorithms.grpo_guard`); each switch can be turned off for ablations."""

    def rows(self, batch: RolloutBatch, step: int) -> dict[str, Tensor]:
        rows = super().rows(batch, step)
        steps = rows["step"]
        seeds = batch.seeds[rows["index"]].tolist()
        shape = tuple(batch.latents.shape[2:])
        # The rollout drew x_next = mean_old + s * noise with noise a function of (seed, sampler step) alone.
        rows["noise"] = torch.cat([step_noise([seed], int(j), shape) for seed, j in zip(seeds, steps.tolist())])
        return rows

    def loss(self, models: Models, rows: dict[str, Tensor], cond: Conditioning) -> tuple[Tensor, dict[str, Tensor]]:
        x, sigma, sigma_next, x_next = rows["x"], rows["sigma"], rows["sigma_next"], rows["x_next"]
        noise_level, sampler = self.rollout_cfg["noise_level"], self.rollout_cfg["sampler"]
        out = self.step_fn(x, models.policy(x, sigma, cond), sigma, sigma_next, noise_level, prev_sample=x_next)
        log_ratio = out.log_prob - rows["old_log_prob"].detach()
        if self.cfg["ratio_norm"]:
            scale = torch.sqrt(sigma - sigma_next).view(-1, *[1] * (x.dim() - 1)) if sampler == "sde" else 1.0
            step_std = out.std * scale
            old_mean = x_next.float() - step_std * rows["noise"].float()
            log_ratio = ratio_norm_log_ratio(log_ratio, out.mean, old_mean, step_std, sampler)
        weights = step_weights(sigma, sigma_next) if self.cfg["reweight"] else torch.ones_like(log_ratio)
        policy, stats = guarded_loss(log_ratio, rows["advantages"], weights, self.cfg["clip_range"],
                                     self.cfg["clip_range_high"])
        loss, stats = policy, {"policy_loss": policy.detach(), **stats}
        if self.cfg["kl_beta"] > 0:
            with torch.no_grad():
                ref = self.step_fn(x, models.reference(x, sigma, cond), sigma, sigma_next, noise_level,
                                   prev_sample=x_next)
            kl = flow_grpo_kl(out.mean, ref.mean, out.std).mean()
            loss = loss + self.cfg["kl_beta"] * kl
            stats["kl"] = kl.detach()
        return loss, stats


class MixGRPOObjective(FlowGRPOObjective):
    """MixGRPO (arXiv 2507.21802): Flow-GRPO's loss on the sliding window's SDE steps (the window is the rollout's:
    `mixgrpo.window_start` per RL step, set on the requests by the controller)."""


def _group_rows(batch: RolloutBatch, step: int, cfg: dict) -> dict[str, Tensor]:
    """AWM-style rows with the timesteps and noise shared by each prompt's group (DGPO's shared noise), plus each
    row's (group, timestep slot) label."""
    rows = matching_rows(batch, step, cfg["num_timesteps"], True, cfg["timestep_fraction"])
    slot = torch.arange(cfg["num_timesteps"]).repeat(len(batch))
    rows["label"] = batch.group_ids[rows["index"]] * cfg["num_timesteps"] + slot
    return rows


class DGPOObjective(Objective):
    """DGPO (arXiv 2510.08425): see `diffrl.algorithms.dgpo`. A micro-batch must hold whole groups (the config
    checks learner.micro_batch_size); trains on ODE rollouts' final samples."""

    def __init__(self, cfg: dict, rollout_cfg: dict | None = None) -> None:
        self.cfg = cfg
        self.group_size = (rollout_cfg or {}).get("group_size")
        self.rows_per_sample = cfg["num_timesteps"]

    def rows(self, batch: RolloutBatch, step: int) -> dict[str, Tensor]:
        return _group_rows(batch, step, self.cfg)

    def loss(self, models: Models, rows: dict[str, Tensor], cond: Conditioning) -> tuple[Tensor, dict[str, Tensor]]:
        _, counts = torch.unique(rows["label"], return_counts=True)
        if self.group_size and (counts != self.group_size).any():
            raise ValueError(f"dgpo: a learner micro-batch split a group (group sizes {sorted(set(counts.tolist()))}, "
                             f"expected {self.group_size}); make learner.micro_batch_size a multiple of "
                             "rollout.group_size * learner.dgpo.num_timesteps that divides the rows per rank")
        x_t, t = rows["x_t"], rows["t"]
        v = models.policy(x_t, t, cond)
        with torch.no_grad():
            v_ref = models.reference(x_t, t, cond)
        dsm = flow_matching_error(v, rows["x0"], rows["eps"])
        ref = flow_matching_error(v_ref, rows["x0"], rows["eps"])
        policy, stats = dgpo_loss(dsm, ref, rows["advantages"], rows["label"], self.cfg["beta_dpo"])
        kl = velocity_kl(v, v_ref).mean()
        loss = policy + self.cfg["kl_beta"] * kl
        return loss, {"policy_loss": policy.detach(), "kl": kl.detach(), "mse": dsm.detach().mean(), **stats}


class DiffusionDPOObjective(Objective):
    """Online Diffusion-DPO (arXiv 2311.12908): each group's best and worst sample form a pair, noised at
    `num_timesteps` shared timesteps with shared noise (see `diffrl.algorithms.diffusion_dpo`); groups whose rewards
    all tie weigh 0. Rows are pairs, so a rank holds whole groups (the config checks it)."""

    def __init__(self, cfg: dict, rollout_cfg: dict | None = None) -> None:
        self.cfg = cfg
        self.group_size = (rollout_cfg or {}).get("group_size") or 1
        self.rows_per_sample = cfg["num_timesteps"] / self.group_size

    def rows_for(self, samples: int, name: str) -> int:
        """One pair per group and timestep, counted in integers."""
        if samples % self.group_size:
            raise ValueError(f"learner.algorithm={name}: {samples} samples per rank are not whole groups of "
                             f"rollout.group_size={self.group_size}; make learner.num_workers divide "
                             "rollout.prompts_per_step")
        return samples // self.group_size * self.cfg["num_timesteps"]

    def rows(self, batch: RolloutBatch, step: int) -> dict[str, Tensor]:
        if batch.rewards is None:
            raise ValueError("diffusion_dpo needs scored rollouts (batch.rewards)")
        winners, losers, keep = best_worst_pairs(batch.rewards.float(), batch.group_ids)
        k = self.cfg["num_timesteps"]
        ts, eps = [], []
        for w in winners.tolist():
            # Online, a step's groups have distinct prompts; offline pairs may share one, so their file index
            # (the batch's seed) joins the key and each pair gets its own timesteps and noise.
            keys = (zlib.crc32(batch.prompts[w].encode()),) + ((int(batch.seeds[w]),) if self.cfg.get("pairs") else ())
            gen = stream_generator(Stream.TRAINING_ROWS, *keys, step)
            ts.append(stratified_timesteps(batch.grid, k, gen, fraction=self.cfg["timestep_fraction"]))
            eps.append(torch.randn((k, *batch.samples.shape[1:]), generator=gen))
        t = torch.stack(ts).float().reshape(-1)
        noise = torch.cat(eps)
        win, lose = winners.repeat_interleave(k), losers.repeat_interleave(k)
        t_b = t.view(-1, *[1] * (noise.dim() - 1))
        x_w, x_l = batch.samples[win], batch.samples[lose]
        return {"index": win, "t": t, "eps": noise, "x0_w": x_w, "x0_l": x_l,
                "x_w": (1 - t_b) * x_w + t_b * noise, "x_l": (1 - t_b) * x_l + t_b * noise,
                "keep": keep.repeat_interleave(k).float()}

    def loss(self, models: Models, rows: dict[str, Tensor], cond: Conditioning) -> tuple[Tensor, dict[str, Tensor]]:
        n = len(rows["t"])
        x = torch.cat([rows["x_w"], rows["x_l"]])
        t = torch.cat([rows["t"], rows["t"]])
        both = concat_conditioning([cond, cond]) if cond is not None else None
        v = models.policy(x, t, both)
        with torch.no_grad():
            v_ref = models.reference(x, t, both)
        x0 = torch.cat([rows["x0_w"], rows["x0_l"]])
        eps = torch.cat([rows["eps"], rows["eps"]])
        mse, ref = flow_matching_error(v, x0, eps), flow_matching_error(v_ref, x0, eps)
        loss, stats = dpo_loss(mse[:n], mse[n:], ref[:n], ref[n:], self.cfg["beta"], rows["keep"])
        return loss, {"mse": mse.detach().mean(), **stats}
