"""The RL controller: one short loop over roles (rollout, reward, learner), the same on Ray and in-process."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from diffrl.algorithms.advantages import group_advantages
from diffrl.platform.config import RLJobConfig, dump_job
from diffrl.platform.reporting import MetricsLog, plot_curves, sample_grid
from diffrl.platform.worker import LocalBackend, Placement, WorkerGroup, split_evenly
from diffrl.workers.batch import RolloutBatch, SampleRequest
from diffrl.workers.learner import LearnerWorker
from diffrl.workers.reward import RewardWorker
from diffrl.workers.rollout import RolloutWorker

EVAL_SEED_BASE = 1_000_000_000  # eval seeds never collide with training seeds (< 2**30)


def prompt_splits(cfg: RLJobConfig) -> tuple[list[dict], list[dict]]:
    """(train, eval) prompt entries, each a dict with "prompt" and any reward metadata."""
    if cfg.data.source == "files":
        return read_prompt_file(cfg.data.train_file), read_prompt_file(cfg.data.eval_file)
    from diffrl.models.shapes_world import prompt_splits as shapes_splits

    return shapes_splits(heldout_fraction=cfg.data.heldout_fraction, seed=cfg.data.split_seed)


def read_prompt_file(path: str) -> list[dict]:
    """Flow-GRPO's prompt files: .txt has one prompt per line (OCR, PickScore); .jsonl has one GenEval metadata
    object per line with its "prompt" (and tag, include, exclude). Errors name the file and line."""
    import json

    entries = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        if path.endswith(".jsonl"):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not valid JSON: {err}") from None
            if not isinstance(entry, dict) or not isinstance(entry.get("prompt"), str):
                raise ValueError(f"{path}:{number}: each line must be an object with a string 'prompt'")
        else:
            entry = {"prompt": line.strip()}
        entries.append(entry)
    if not entries:
        raise ValueError(f"{path}: no prompts")
    return entries


def step_requests(prompts: list[dict], cfg: RLJobConfig, step: int) -> list[SampleRequest]:
    """The step's prompts (deterministic in (seed, step)) times group_size samples, each with its own seed."""
    rng = np.random.default_rng([cfg.seed, step])
    k = cfg.rollout.prompts_per_step
    chosen = rng.choice(len(prompts), size=k, replace=k > len(prompts))
    seeds = rng.integers(0, 2**30, size=k * cfg.rollout.group_size)
    return [
        SampleRequest(prompts[p]["prompt"], prompts[p], group, int(seeds[group * cfg.rollout.group_size + j]))
        for group, p in enumerate(chosen)
        for j in range(cfg.rollout.group_size)
    ]


def eval_requests(prompts: list[dict], seeds_per_prompt: int) -> list[SampleRequest]:
    return [
        SampleRequest(entry["prompt"], entry, group, EVAL_SEED_BASE + j)
        for group, entry in enumerate(prompts)
        for j in range(seeds_per_prompt)
    ]


def new_rendezvous(directory: Path) -> str:
    """A file:// store in `directory` for the learner ranks on this node (a TCP store would listen on every
    interface)."""
    return f"file://{directory.resolve()}/store"


@dataclass
class Roles:
    rollout: WorkerGroup
    reward: WorkerGroup
    learner: WorkerGroup
    pools: list = field(default_factory=list)
    scratch: Path | None = None  # holds the learners' rendezvous store

    def shutdown(self) -> None:
        """Stop every worker, release the resource pools and remove the scratch directory."""
        for group in (self.rollout, self.reward, self.learner):
            group.shutdown()
        for pool in self.pools:
            pool.remove()
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


def start_roles(cfg: RLJobConfig) -> Roles:
    """Create and set up every role's worker group (Ray actors on resource pools, or in-process)."""
    cores = os.cpu_count() or 1
    model_cfg = cfg.model.model_dump()
    store_trajectory = cfg.learner.algorithm == "flow_grpo"
    rollout_args = [
        (model_cfg, cfg.rollout.model_dump(), max(1, cores // cfg.rollout.num_workers), store_trajectory)
    ] * cfg.rollout.num_workers
    reward_args = [([spec.model_dump() for spec in cfg.reward.rewards],)] * cfg.reward.num_workers
    n_learners = cfg.learner.num_workers
    samples_per_rank = cfg.rollout.prompts_per_step * cfg.rollout.group_size // n_learners
    scratch = Path(tempfile.mkdtemp(prefix="diffrl-"))
    rendezvous = new_rendezvous(scratch)
    learner_args = [
        (rank, n_learners, rendezvous, model_cfg, cfg.learner.model_dump(), samples_per_rank,
         max(1, cores // n_learners), cfg.rollout.model_dump())
        for rank in range(n_learners)
    ]
    if cfg.backend == "local":
        backend = LocalBackend()
        backends = {"rollout": backend, "reward": backend, "learner": backend}
        pools = {}
    else:
        from diffrl.cluster.local import connect_ray
        from diffrl.platform.ray_backend import RayBackend, ResourcePool

        connect_ray(cfg.ray.address, cfg.ray.num_cpus, cfg.ray.num_gpus)
        pools = {
            role: ResourcePool(role, section.num_workers, section.cpus_per_worker,
                               getattr(section, "gpus_per_worker", 0.0))
            for role, section in (("rollout", cfg.rollout), ("reward", cfg.reward), ("learner", cfg.learner))
        }
        backends = {role: RayBackend(pool) for role, pool in pools.items()}
    roles = Roles(
        rollout=WorkerGroup(backends["rollout"], RolloutWorker, rollout_args,
                            Placement(cfg.rollout.cpus_per_worker, cfg.rollout.gpus_per_worker), "rollout"),
        reward=WorkerGroup(backends["reward"], RewardWorker, reward_args,
                           Placement(cfg.reward.cpus_per_worker), "reward"),
        learner=WorkerGroup(backends["learner"], LearnerWorker, learner_args,
                            Placement(cfg.learner.cpus_per_worker, cfg.learner.gpus_per_worker), "learner"),
        pools=list(pools.values()),
        scratch=scratch,
    )
    # Learner ranks must set up together: init_distributed waits for every rank.
    futures = [*roles.learner.broadcast("setup"), *roles.rollout.broadcast("setup"), *roles.reward.broadcast("setup")]
    roles.learner.get(futures)
    for group in (roles.rollout, roles.reward, roles.learner):
        not_ready = [rank for rank, health in enumerate(group.run("health")) if not health["ready"]]
        if not_ready:
            raise RuntimeError(f"{group.name} workers {not_ready} did not become ready after setup()")
    return roles


def generate_and_score(roles: Roles, requests: list[SampleRequest], **generate_kwargs: Any) -> RolloutBatch:
    """Rollout shards over the rollout group, then score them over the reward group; rows stay in request order."""
    shards = split_evenly(requests, len(roles.rollout))
    batch = RolloutBatch.concat(roles.rollout.get(roles.rollout.scatter("generate", shards, **generate_kwargs)))
    index_shards = split_evenly(list(range(len(batch))), len(roles.reward))
    futures = [
        roles.reward.call(i % len(roles.reward), "score", batch.images[rows], [batch.prompts[r] for r in rows],
                          [batch.metadata[r] for r in rows])
        for i, rows in enumerate(index_shards)
    ]
    outputs = roles.reward.get(futures)
    batch.rewards = torch.tensor([s for out in outputs for s in out.scores], dtype=torch.float32)
    batch.reward_details = {key: [v for out in outputs for v in out.details[key]] for key in outputs[0].details}
    return batch


def eval_metrics(batch: RolloutBatch, metric: str) -> dict[str, float]:
    """Mean of every numeric reward detail, per tag and averaged over tags (GenEval's overall score)."""
    tags = [m.get("tag", "all") for m in batch.metadata]
    out: dict[str, float] = {"eval/reward": float(batch.rewards.mean())}
    for key, values in batch.reward_details.items():
        if not values or not isinstance(values[0], (int, float)):
            continue
        per_tag = {tag: float(np.mean([v for v, g in zip(values, tags) if g == tag])) for tag in sorted(set(tags))}
        out.update({f"eval/{key}/{tag}": value for tag, value in per_tag.items()})
        out[f"eval/{key}"] = float(np.mean(list(per_tag.values())))
    if f"eval/{metric}" not in out:
        known = sorted(key for key, values in batch.reward_details.items()
                       if values and isinstance(values[0], (int, float)))
        raise KeyError(f"trainer.eval_metric: {metric!r} is not produced by the rewards; available: {known}")
    out["eval/headline"] = out[f"eval/{metric}"]
    return out


def compute_advantages(batch: RolloutBatch, cfg: RLJobConfig) -> torch.Tensor:
    """Per-prompt advantages as each method defines them (ALGORITHMS.md): AWM clips to +-5 and divides by 5 (then
    damps negatives by awm.negative_scale); Flow-GRPO clips to +-5; DiffusionNFT clips inside its loss."""
    algorithm = cfg.learner.algorithm
    section = getattr(cfg.learner, algorithm)
    scale = section.adv_clip if algorithm == "awm" else 1.0
    adv = group_advantages(batch.rewards, batch.group_ids, global_std=section.global_std, clip=section.adv_clip,
                           scale=scale)
    if algorithm == "awm":
        adv = torch.where(adv < 0, adv * section.negative_scale, adv)
    return adv


def prepare_run_dir(cfg: RLJobConfig) -> Path:
    """runs/NAME, or runs/NAME_2, ... when it exists: a new run never overwrites an old one."""
    base = cfg.run_dir
    run_dir, suffix = base, 2
    while run_dir.exists():
        run_dir, suffix = base.with_name(f"{base.name}_{suffix}"), suffix + 1
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(dump_job(cfg))
    return run_dir


def save_weights(roles: Roles, run_dir: Path, name: str, ema: bool = False, zero_stage: int = 0) -> Path:
    """Learner rank 0's trainable tensors (or its eval EMA's) as safetensors, written to a temp file and renamed."""
    from safetensors.torch import save_file

    payload = roles.learner.get([learner_weights(roles, ema, zero_stage)])[0]
    path = run_dir / f"{name}.safetensors"
    tmp = path.with_suffix(".tmp")
    save_file({k: v.clone() for k, v in payload.tensors().items()}, str(tmp), metadata={"version": str(payload.version)})
    os.replace(tmp, path)
    return path


def run_rl(cfg: RLJobConfig, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run an RL job; returns the summary (base and final headline, run dir)."""
    train_prompts, heldout_prompts = prompt_splits(cfg)
    eval_prompts = heldout_prompts if cfg.trainer.eval_prompts == "heldout" else train_prompts
    run_dir = prepare_run_dir(cfg)
    log = MetricsLog(run_dir / "metrics.jsonl")
    echo(f"diffrl: run directory {run_dir}")
    t0 = time.perf_counter()
    roles = start_roles(cfg)
    echo(f"diffrl: roles ready in {time.perf_counter() - t0:.1f}s "
         f"({len(roles.rollout)} rollout, {len(roles.reward)} reward, {len(roles.learner)} learner, {cfg.backend})")
    try:
        evaluations = _train(cfg, roles, train_prompts, eval_prompts, run_dir, log)
        weights_path = save_weights(roles, run_dir, "final", ema=cfg.learner.eval_ema_decay > 0,
                                    zero_stage=cfg.learner.zero_stage)
    finally:
        roles.shutdown()
    plot_curves(log.read(), run_dir / "reward_curve.png", f"{cfg.name}: {cfg.trainer.eval_label}")
    base, final = evaluations[0], evaluations[-1]
    summary = {"run_dir": str(run_dir), "base": base, "final": final, "weights": str(weights_path)}
    log.write({"summary/base": base, "summary/final": final, "step": cfg.trainer.steps})
    echo(f"held-out {cfg.trainer.eval_label}: base {base:.3f} -> final {final:.3f}")
    return summary


def learner_weights(roles: Roles, ema: bool = False, zero_stage: int = 0) -> Any:
    """A future of learner rank 0's weight payload. Under ZeRO-3 (gathering is collective) every rank is asked and
    the other ranks' calls are awaited; only rank 0's payload travels on."""
    if zero_stage != 3 or ema:
        return roles.learner.call(0, "get_weights", ema=ema)
    futures = roles.learner.broadcast("get_weights", ema=ema)
    roles.learner.get(futures[1:])
    return futures[0]


def sync_weights(roles: Roles, cfg: RLJobConfig, ema: bool = False) -> int:
    """Send learner rank 0's trainable weights (or its eval EMA's) to every rollout worker; returns the version."""
    payload = learner_weights(roles, ema, cfg.learner.zero_stage)
    versions = roles.rollout.get(roles.rollout.broadcast("load_weights", payload))
    return int(versions[0])


def _evaluate(cfg: RLJobConfig, roles: Roles, prompts: list[dict], step: int, log: MetricsLog) -> tuple:
    """Held-out eval with the deterministic ODE sampler (and the eval EMA weights when learner.eval_ema_decay > 0)."""
    use_ema = cfg.learner.eval_ema_decay > 0 and step > 0
    if use_ema:
        sync_weights(roles, cfg, ema=True)
    batch = generate_and_score(roles, eval_requests(prompts, cfg.trainer.eval_seeds_per_prompt), sampler="ode")
    if use_ema:
        sync_weights(roles, cfg)
    metrics = eval_metrics(batch, cfg.trainer.eval_metric)
    log.write({"step": step, **metrics})
    return metrics["eval/headline"], batch


def _grid(cfg: RLJobConfig, batch: RolloutBatch, path: Path, title: str) -> None:
    per_prompt = cfg.trainer.eval_seeds_per_prompt
    rows = min(cfg.trainer.sample_grid_prompts, len(batch) // per_prompt)
    keep = [p * per_prompt + j for p in range(rows) for j in range(min(per_prompt, 8))]
    sample_grid(batch.images[keep], [batch.prompts[i] for i in keep], min(per_prompt, 8), path, title=title)


def _train(cfg: RLJobConfig, roles: Roles, train_prompts: list[dict], eval_prompts: list[dict], run_dir: Path,
           log: MetricsLog) -> list[float]:
    base, base_batch = _evaluate(cfg, roles, eval_prompts, 0, log)
    _grid(cfg, base_batch, run_dir / "samples_before.png", f"before RL: {cfg.trainer.eval_label} {base:.3f}")
    evaluations = [base]
    bar = tqdm(range(cfg.trainer.steps), desc="RL", unit="step", dynamic_ncols=True)
    for step in bar:
        times: dict[str, float] = {}
        tick = time.perf_counter()
        batch = generate_and_score(roles, step_requests(train_prompts, cfg, step))
        times["time/rollout_and_reward"] = time.perf_counter() - tick
        batch.advantages = compute_advantages(batch, cfg)

        tick = time.perf_counter()
        shards = [batch.select(rows) for rows in split_evenly(list(range(len(batch))), len(roles.learner))]
        results = roles.learner.get(roles.learner.scatter("update", shards, step=step))
        times["time/learn"] = time.perf_counter() - tick

        tick = time.perf_counter()
        version = sync_weights(roles, cfg)
        times["time/sync"] = time.perf_counter() - tick
        times["time/step"] = sum(times.values())

        record = {"step": step + 1, "reward/mean": float(batch.rewards.mean()), "reward/std": float(batch.rewards.std()),
                  "weight_version": version, **times}
        record.update({f"train/{k}": float(np.mean([r[k] for r in results])) for k in results[0]})
        record.update({f"reward/{k}": float(np.mean(v)) for k, v in batch.reward_details.items()
                       if v and isinstance(v[0], (int, float))})
        log.write(record)
        bar.set_postfix(reward=f"{record['reward/mean']:.3f}", step_s=f"{times['time/step']:.2f}")
        last = step + 1 == cfg.trainer.steps
        if last or (cfg.trainer.eval_every and (step + 1) % cfg.trainer.eval_every == 0):
            score, eval_batch = _evaluate(cfg, roles, eval_prompts, step + 1, log)
            evaluations.append(score)
            bar.write(f"step {step + 1}: held-out {cfg.trainer.eval_label} {score:.3f}")
            if last:
                _grid(cfg, eval_batch, run_dir / "samples_after.png", f"after RL: {cfg.trainer.eval_label} {score:.3f}")
        if cfg.trainer.checkpoint_every and (step + 1) % cfg.trainer.checkpoint_every == 0:
            save_weights(roles, run_dir, f"step_{step + 1:06d}", zero_stage=cfg.learner.zero_stage)
    bar.close()
    return evaluations
