"""The RL controller: one short loop over roles (rollout, reward, learner), the same on Ray and in-process."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from diffrl.algorithms.advantages import group_advantages
from diffrl.algorithms.sol import kendall_tau, select_seeds, spearman_rho, top_k_agreement
from diffrl.platform import checkpoint as ckpt
from diffrl.platform.config import RLJobConfig, resource_pools, role_demands
from diffrl.platform.reporting import plot_curves, sample_grid
from diffrl.platform.runs import RunLog, open_run, rewind_metrics
from diffrl.platform.worker import Call, LocalBackend, Placement, WorkerGroup, WorkerLost, split_evenly
from diffrl.rewards.base import RewardOutput
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


def step_requests(prompts: list[dict], cfg: RLJobConfig, step: int, group_size: int | None = None) -> list[SampleRequest]:
    """The step's prompts (deterministic in (seed, step)) times `group_size` (default rollout.group_size) samples,
    each with its own seed. Sol-RL asks for its whole candidate pool this way."""
    size = group_size or cfg.rollout.group_size
    rng = np.random.default_rng([cfg.seed, step])
    k = cfg.rollout.prompts_per_step
    chosen = rng.choice(len(prompts), size=k, replace=k > len(prompts))
    seeds = rng.integers(0, 2**30, size=k * size)
    return [
        SampleRequest(prompts[p]["prompt"], prompts[p], group, int(seeds[group * size + j]))
        for group, p in enumerate(chosen)
        for j in range(size)
    ]


def sol_batch(cfg: RLJobConfig, roles: Roles, prompts: list[dict], step: int,
              times: dict[str, float]) -> tuple[RolloutBatch, dict[str, float]]:
    """Sol-RL's rollout: explore pool_size seeds per prompt with the low-precision copy, choose group_size of them
    per prompt from the exploration rewards, regenerate exactly those seeds in full precision and score them again.
    Advantages use only the regenerated rewards. Also returns ranking-fidelity metrics: Kendall tau and Spearman rho
    between exploration and regenerated rewards of the chosen seeds (per prompt, averaged), and top-K agreement on
    an audited slice (audit_prompts whole pools regenerated in full precision; K = group_size / 2)."""
    sol = cfg.rollout.sol
    p, n, k = cfg.rollout.prompts_per_step, sol.pool_size, cfg.rollout.group_size
    pool_requests = step_requests(prompts, cfg, step, group_size=n)
    pool = generate_and_score(roles, pool_requests, group=roles.explore, times=times, stage="explore")
    explore_rewards = pool.rewards.view(p, n)
    chosen = select_seeds(explore_rewards, k, sol.select, torch.Generator().manual_seed(cfg.seed * 1_000_003 + step))
    flat = (chosen + torch.arange(p)[:, None] * n).reshape(-1)
    if sol.regenerate:
        batch = generate_and_score(roles, [pool_requests[i] for i in flat.tolist()], times=times, stage="regenerate")
    else:
        batch = pool.select(flat)
    chosen_explore = pool.rewards[flat].view(p, k)
    regen = batch.rewards.view(p, k)
    metrics = {
        "sol/explore_reward": float(pool.rewards.mean()),
        "sol/chosen_explore_reward": float(chosen_explore.mean()),
        # per prompt, averaged; nan when every prompt's rewards are constant (no ranking to compare)
        "sol/kendall_tau": _nanmean([kendall_tau(chosen_explore[i], regen[i]) for i in range(p)]),
        "sol/spearman_rho": _nanmean([spearman_rho(chosen_explore[i], regen[i]) for i in range(p)]),
    }
    audited = min(sol.audit_prompts, p) if sol.regenerate else 0
    if audited:
        audit = generate_and_score(roles, pool_requests[: audited * n], times=times, stage="audit")
        full = audit.rewards.view(audited, n)
        metrics["sol/top_k_agreement"] = float(np.mean(
            [top_k_agreement(explore_rewards[i], full[i], max(1, k // 2)) for i in range(audited)]))
        metrics["sol/audit_kendall_tau"] = _nanmean([kendall_tau(explore_rewards[i], full[i]) for i in range(audited)])
    return batch, metrics


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not np.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


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
    rewards: list[WorkerGroup]  # one group per reward of the job
    learner: WorkerGroup
    pools: list = field(default_factory=list)
    scratch: Path | None = None  # holds the learners' rendezvous store
    explore: WorkerGroup | None = None  # Sol-RL's low-precision exploration workers
    serving: str = "policy"  # which weights the inference groups hold: "policy", or "ema" during an EMA eval
    channel_generation: int = 0  # the weight-broadcast group is formed again (next generation) after a restart
    channel_stale: bool = False
    local_node: bool = True  # every worker on the driver's node: rendezvous through files, connections on loopback

    @property
    def inference_groups(self) -> list[WorkerGroup]:
        """Every group holding an inference copy of the policy (they all receive the weights after an update)."""
        return [self.rollout] + ([self.explore] if self.explore is not None else [])

    def shutdown(self) -> None:
        """Stop every worker, release the resource pools and remove the scratch directory."""
        for group in (self.rollout, *self.rewards, self.learner, self.explore):
            if group is not None:
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
    n_learners = cfg.learner.num_workers
    samples_per_rank = cfg.rollout.prompts_per_step * cfg.rollout.group_size // n_learners
    scratch = Path(tempfile.mkdtemp(prefix="diffrl-"))
    rendezvous = new_rendezvous(scratch)
    learner_args = [
        (rank, n_learners, rendezvous, model_cfg, cfg.learner.model_dump(), samples_per_rank,
         max(1, cores // n_learners), cfg.rollout.model_dump())
        for rank in range(n_learners)
    ]
    sol = cfg.rollout.sol if cfg.rollout.strategy == "sol" else None
    if sol is not None:
        explore_cfg = {**cfg.rollout.model_dump(), "precision": sol.explore_precision, "num_steps": sol.explore_steps,
                       "sampler": "ode", "sde_window": 0, "guidance_scale": sol.explore_guidance_scale}
        explore_args = [(model_cfg, explore_cfg, max(1, cores // sol.explore_workers), False)] * sol.explore_workers
    # Each role's workers ask for their own share (Placement); pools are per role, or shared by colocated roles
    # (worker i of each on bundle i).
    demands = {d.role: d for d in role_demands(cfg)}
    reward_groups = [(f"reward{i}", spec, demands[f"reward{i}"]) for i, spec in enumerate(cfg.reward.rewards)]
    if cfg.backend == "local":
        backend = LocalBackend()
        backends = {role: backend for role in demands}
        pools, local_node = {}, True
    else:
        from diffrl.cluster.local import connect_ray
        from diffrl.platform.ray_backend import RayBackend, ResourcePool, driver_node_only

        connect_ray(cfg.ray.address, cfg.ray.num_cpus, cfg.ray.num_gpus)
        local_node = driver_node_only()
        pools, backends = {}, {}
        try:
            for spec in resource_pools(cfg):
                pools[spec.role] = ResourcePool(spec.role, spec.workers, spec.cpus, spec.gpus, spec.resources,
                                                timeout_s=cfg.ray.placement_timeout_s, bundles=spec.bundle_list())
                backends.update({role: RayBackend(pools[spec.role]) for role in spec.role.split("+")})
        except Exception:
            for pool in pools.values():
                pool.remove()
            raise
    restarts = cfg.rollout.max_restarts
    roles = Roles(
        rollout=WorkerGroup(backends["rollout"], RolloutWorker, rollout_args,
                            Placement(cfg.rollout.cpus_per_worker, cfg.rollout.gpus_per_worker, restarts,
                                      cfg.rollout.resources), "rollout"),
        rewards=[
            WorkerGroup(backends[role], RewardWorker, [([spec.model_dump()],)] * d.workers,
                        Placement(d.cpus, d.gpus, cfg.reward.max_restarts, d.resources), f"reward '{spec.name}'")
            for role, spec, d in reward_groups
        ],
        learner=WorkerGroup(backends["learner"], LearnerWorker, learner_args,
                            Placement(cfg.learner.cpus_per_worker, cfg.learner.gpus_per_worker, 0,
                                      cfg.learner.resources), "learner"),
        pools=list(pools.values()),
        scratch=scratch,
        local_node=local_node,
    )
    if sol is not None:
        roles.explore = WorkerGroup(backends["explore"], RolloutWorker, explore_args,
                                    Placement(sol.explore_cpus_per_worker, sol.explore_gpus_per_worker, restarts,
                                              sol.explore_resources), "explore")
    try:
        _set_up(roles, cfg)
    except BaseException:
        roles.shutdown()  # nothing placed by a failed start outlives it
        raise
    return roles


def _set_up(roles: Roles, cfg: RLJobConfig) -> None:
    """setup() on every worker, health checks, restore hooks and (broadcast sync) the broadcast group."""
    # Learner ranks must set up together: init_distributed waits for every rank.
    groups = [roles.rollout, *roles.rewards, roles.learner] + ([roles.explore] if roles.explore is not None else [])
    rendezvous = {} if roles.local_node else {"rendezvous": _rank0_store_url(roles)}
    futures = [f for group in [roles.learner, *[g for g in groups if g is not roles.learner]]
               for f in (group.broadcast("setup", **rendezvous) if group is roles.learner else group.broadcast("setup"))]
    roles.learner.get(futures)
    for group in groups:
        healths = group.run("health")
        not_ready = [rank for rank, health in enumerate(healths) if not health["ready"]]
        if not_ready:
            raise RuntimeError(f"{group.name} workers {not_ready} did not become ready after setup()")
        group.note_health(healths)
    install_restore_hooks(roles, cfg)
    if cfg.learner.sync_backend == "broadcast":
        open_broadcast_channel(roles)


def _rank0_store_url(roles: Roles) -> str:
    """tcp://HOST:PORT on learner rank 0's node, a port free there: where rank 0 serves a rendezvous store."""
    host = roles.learner.backend.node_ip(roles.learner.handles[0])
    port = roles.learner.get([roles.learner.call(0, "free_port", host)])[0]
    return f"tcp://{host}:{port}"


def install_restore_hooks(roles: Roles, cfg: RLJobConfig) -> None:
    """How a restarted worker is brought back before its lost call is sent again: every worker runs setup(); an
    inference worker then loads the weights the others serve (the learner's current policy, or its eval EMA during
    an EMA eval) and, under broadcast sync, the broadcast group is formed again before the next sync."""

    def restore_inference(group: WorkerGroup, rank: int) -> None:
        group.get([group.call(rank, "setup")])
        payload = learner_weights(roles, ema=roles.serving == "ema", zero_stage=cfg.learner.zero_stage)
        group.get([group.call(rank, "load_weights", payload)])
        roles.channel_stale = cfg.learner.sync_backend == "broadcast"

    def restore_reward(group: WorkerGroup, rank: int) -> None:
        group.get([group.call(rank, "setup")])

    for group in roles.inference_groups:
        group.restore = restore_inference
    for group in roles.rewards:
        group.restore = restore_reward


def generate_and_score(roles: Roles, requests: list[SampleRequest], group: WorkerGroup | None = None,
                       times: dict[str, float] | None = None, stage: str = "rollout",
                       **generate_kwargs: Any) -> RolloutBatch:
    """Generate shards over `group` (default: the rollout group) and score them with every reward group; rows stay
    in request order.

    Scoring starts per shard as soon as that shard is generated (reward groups work while other rollout workers are
    still sampling). With `times`, adds the seconds until the last shard is generated to times["time/<stage>"] and
    the further wait for the rewards to times["time/reward"].
    """
    group = group or roles.rollout
    tick = time.perf_counter()
    shards = split_evenly(requests, len(group))
    calls = [Call(index % len(group), "generate", (shard,), generate_kwargs) for index, shard in enumerate(shards)]
    batches: dict[int, RolloutBatch] = {}
    scoring: dict[int, list[tuple[list[Call], list[Any]]]] = {}
    for index, shard in group.calls_as_completed(calls):
        batches[index] = shard
        scoring[index] = [_submit_scores(reward_group, shard) for reward_group in roles.rewards]
    if times is not None:
        times[f"time/{stage}"] = times.get(f"time/{stage}", 0.0) + time.perf_counter() - tick
        tick = time.perf_counter()
    for index in sorted(batches):
        outputs = [
            RewardOutput.concat(reward_group.gather(*submitted))
            for reward_group, submitted in zip(roles.rewards, scoring[index])
        ]
        batches[index].rewards = torch.tensor(np.sum([o.scores for o in outputs], axis=0), dtype=torch.float32)
        batches[index].reward_details = {k: v for o in outputs for k, v in o.details.items()}
    if times is not None:
        times["time/reward"] = times.get("time/reward", 0.0) + time.perf_counter() - tick
    return RolloutBatch.concat([batches[i] for i in sorted(batches)])


def _submit_scores(reward_group: WorkerGroup, batch: RolloutBatch) -> tuple[list[Call], list[Any]]:
    """Score `batch` split over the group's replicas; returns the calls and their futures, in row order (pass both
    to `reward_group.gather`, which re-sends a call whose replica died)."""
    calls = [
        Call(i % len(reward_group), "score",
             (batch.images[rows], [batch.prompts[r] for r in rows], [batch.metadata[r] for r in rows]))
        for i, rows in enumerate(split_evenly(list(range(len(batch))), len(reward_group)))
    ]
    return calls, reward_group.submit(calls)


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


def save_weights(roles: Roles, run_dir: Path, name: str, ema: bool = False, zero_stage: int = 0) -> Path:
    """Learner rank 0's trainable tensors (or its eval EMA's) as safetensors, written to a temp file and renamed."""
    payload = roles.learner.get([learner_weights(roles, ema, zero_stage)])[0]
    path = run_dir / f"{name}.safetensors"
    tmp = path.with_suffix(".tmp")
    save_file({k: v.clone() for k, v in payload.tensors().items()}, str(tmp), metadata={"version": str(payload.version)})
    os.replace(tmp, path)
    return path


def _state_groups(roles: Roles) -> list[WorkerGroup]:
    """Groups whose workers' state (RNG states, weight versions) a checkpoint keeps besides the learners'."""
    return [*roles.inference_groups, *roles.rewards]


def save_checkpoint(roles: Roles, cfg: RLJobConfig, run_dir: Path, step: int, trainer: dict[str, Any]) -> Path:
    """Write checkpoints/step_N atomically (see diffrl.platform.checkpoint): every learner rank's state, the trained
    weights, the other workers' state and the controller's `trainer` state."""
    states = roles.learner.get([roles.learner.call(rank, "state_dict", weights=rank == 0)
                                for rank in range(len(roles.learner))])
    tmp = ckpt.begin(run_dir, step)
    weights = states[0]["weights"]
    save_file(weights, str(tmp / "model.safetensors"), metadata={"version": str(states[0]["version"])})
    for rank, state in enumerate(states):
        ckpt.write_state({k: v for k, v in state.items() if k != "weights"}, tmp, f"learner_rank{rank}")
    workers = {group.name: group.gather([Call(rank, "state_dict") for rank in range(len(group))])
               for group in _state_groups(roles)}
    ckpt.write_state(workers, tmp, "workers")
    (tmp / "trainer.json").write_text(json.dumps({**trainer, "step": step}, indent=1))
    return ckpt.commit(tmp, step, keep=cfg.trainer.keep_checkpoints)


def restore_checkpoint(roles: Roles, cfg: RLJobConfig, checkpoint: ckpt.Checkpoint) -> None:
    """Load a checkpoint into freshly set-up roles: learner ranks first, then the inference workers receive the
    restored weights and every worker its own state back."""
    weights = checkpoint.model_tensors()
    roles.learner.get([roles.learner.call(rank, "load_state_dict", {**checkpoint.learner_state(rank), "weights": weights})
                       for rank in range(len(roles.learner))])
    sync_weights(roles, cfg)
    saved = checkpoint.workers()
    for group in _state_groups(roles):
        states = saved.get(group.name, [])
        group.gather([Call(rank, "load_state_dict", (state,)) for rank, state in enumerate(states[: len(group)])])


def _learner_died(roles: Roles, error: BaseException) -> bool:
    """Whether `error` left a learner rank dead (its health call fails as a lost worker)."""
    if isinstance(error, WorkerLost):
        return error.group == roles.learner.name
    if not roles.learner.backend.is_lost(error):
        return False
    for rank in range(len(roles.learner)):
        try:
            roles.learner.get([roles.learner.call(rank, "health")], timeout=30)
        except Exception as err:  # noqa: BLE001
            if roles.learner.backend.is_lost(err):
                return True
    return False


def run_rl(cfg: RLJobConfig, echo: Callable[[str], None] = print, resume: bool = False) -> dict[str, Any]:
    """Run an RL job (or continue it: `resume` or cfg.resume == "auto", see runs.open_run); returns the summary
    (base and final headline, run dir, final weights).

    With resume: auto, a learner that dies mid-run brings the roles down and up again from the newest checkpoint
    (at most trainer.max_learner_failures times); other workers are restarted in place by their groups."""
    train_prompts, heldout_prompts = prompt_splits(cfg)
    eval_prompts = heldout_prompts if cfg.trainer.eval_prompts == "heldout" else train_prompts
    run_dir, checkpoint = open_run(cfg, must_resume=resume)
    log = RunLog(run_dir, cfg)
    echo(f"diffrl: run directory {run_dir}" + (f" (resuming from step {checkpoint.step})" if checkpoint else ""))
    failures = 0
    try:
        while True:
            t0 = time.perf_counter()
            roles = start_roles(cfg)
            try:
                explore = f", {len(roles.explore)} explore ({cfg.rollout.sol.explore_precision})" if roles.explore else ""
                echo(f"diffrl: roles ready in {time.perf_counter() - t0:.1f}s ({len(roles.rollout)} rollout, "
                     f"{sum(len(g) for g in roles.rewards)} reward, {len(roles.learner)} learner{explore}, "
                     f"{cfg.backend})")
                if checkpoint is not None:
                    restore_checkpoint(roles, cfg, checkpoint)
                _write_quantization_report(roles, run_dir)
                evaluations = _train(cfg, roles, train_prompts, eval_prompts, run_dir, log, checkpoint)
                weights_path = save_weights(roles, run_dir, "final", ema=cfg.learner.eval_ema_decay > 0,
                                            zero_stage=cfg.learner.zero_stage)
                break
            except Exception as err:
                if cfg.resume != "auto" or failures >= cfg.trainer.max_learner_failures or not _learner_died(roles, err):
                    raise
                failures += 1
                checkpoint = ckpt.latest_checkpoint(run_dir)
                rewind_metrics(run_dir, checkpoint.step if checkpoint else None)
                where = f"checkpoint step {checkpoint.step}" if checkpoint else "the start (no checkpoint yet)"
                echo(f"diffrl: a learner died ({err}); restarting the roles from {where} "
                     f"(failure {failures} of {cfg.trainer.max_learner_failures} allowed)")
            finally:
                roles.shutdown()
        plot_curves(log.read(), run_dir / "reward_curve.png", f"{cfg.name}: {cfg.trainer.eval_label}")
        base, final = evaluations[0][1], evaluations[-1][1]
        summary = {"run_dir": str(run_dir), "base": base, "final": final, "weights": str(weights_path)}
        log.write({"summary/base": base, "summary/final": final, "step": cfg.trainer.steps})
        _refresh_report(run_dir)
    finally:
        log.close()
    echo(f"held-out {cfg.trainer.eval_label}: base {base:.3f} -> final {final:.3f}")
    return summary


def _refresh_report(run_dir: Path) -> None:
    """Rebuild runs/NAME/report.html; a failure is reported but never stops training (`diffrl report` rebuilds)."""
    import sys

    from diffrl.platform.report_html import write_report

    try:
        write_report(run_dir)
    except Exception as err:  # noqa: BLE001 - the report is a view of the run, not part of it
        print(f"diffrl: warning: report.html not updated: {type(err).__name__}: {err}", file=sys.stderr)


def learner_weights(roles: Roles, ema: bool = False, zero_stage: int = 0) -> Any:
    """A future of learner rank 0's weight payload. Under ZeRO-3 (gathering is collective) every rank is asked and
    the other ranks' calls are awaited; only rank 0's payload travels on."""
    if zero_stage != 3 or ema:
        return roles.learner.call(0, "get_weights", ema=ema)
    futures = roles.learner.broadcast("get_weights", ema=ema)
    roles.learner.get(futures[1:])
    return futures[0]


def _write_quantization_report(roles: Roles, run_dir: Path) -> None:
    """runs/NAME/quantization.json: per low-precision group, which linear layers run quantized and why not."""
    import json

    reports = {group.name: group.run("quantization_report")[0] for group in roles.inference_groups}
    reports = {name: report for name, report in reports.items() if report}
    if reports:
        (run_dir / "quantization.json").write_text(json.dumps(reports, indent=1))


def sync_weights(roles: Roles, cfg: RLJobConfig, ema: bool = False) -> int:
    """Send learner rank 0's trainable weights (or its eval EMA's) to every rollout worker; returns the version."""
    roles.serving = "ema" if ema else "policy"
    if cfg.learner.sync_backend == "broadcast" and not ema:
        if roles.channel_stale:
            open_broadcast_channel(roles)
        futures = [roles.learner.call(0, "broadcast_weights")]
        futures += [f for group in roles.inference_groups for f in group.broadcast("receive_weights")]
        versions = roles.rollout.get(futures)
        return int(versions[1])
    payload = learner_weights(roles, ema, cfg.learner.zero_stage)
    versions = [version for group in roles.inference_groups
                for version in group.gather([Call(rank, "load_weights", (payload,)) for rank in range(len(group))])]
    return int(versions[0])


def open_broadcast_channel(roles: Roles) -> None:
    """Form the weight-broadcast group: learner rank 0 (rank 0) and every inference worker, on a file store in the
    run's scratch directory. All members join at once (the group's construction is collective)."""
    layout = roles.learner.get([roles.learner.call(0, "weight_layout")])[0]
    receivers = [(group, index) for group in roles.inference_groups for index in range(len(group))]
    world = 1 + len(receivers)
    roles.channel_generation += 1
    roles.channel_stale = False
    store = (f"file://{roles.scratch / f'weights_store_{roles.channel_generation}'}" if roles.local_node
             else _rank0_store_url(roles))
    futures = [roles.learner.call(0, "open_weight_channel", store, world)]
    futures += [group.call(index, "open_weight_channel", store, rank, world, layout)
                for rank, (group, index) in enumerate(receivers, start=1)]
    roles.learner.get(futures)


def _evaluate(cfg: RLJobConfig, roles: Roles, prompts: list[dict], step: int, log: RunLog) -> tuple:
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


def _grid(cfg: RLJobConfig, batch: RolloutBatch, run_dir: Path, which: str, step: int, score: float) -> None:
    """samples_<which>.png (one row per prompt) and its entry in samples.json (title, prompts, step) for the
    report."""
    per_prompt = cfg.trainer.eval_seeds_per_prompt
    rows = min(cfg.trainer.sample_grid_prompts, len(batch) // per_prompt)
    keep = [p * per_prompt + j for p in range(rows) for j in range(min(per_prompt, 8))]
    title = f"{'before' if which == 'before' else 'after'} RL: {cfg.trainer.eval_label} {score:.3f}"
    sample_grid(batch.images[keep], [batch.prompts[i] for i in keep], min(per_prompt, 8),
                run_dir / f"samples_{which}.png", title=title)
    index_path = run_dir / "samples.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    index[which] = {"title": title, "step": step, "prompts": [batch.prompts[p * per_prompt] for p in range(rows)]}
    tmp = index_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(index, indent=1))
    os.replace(tmp, index_path)


def step_record(step: int, batch: RolloutBatch, results: list[dict[str, float]], times: dict[str, float],
                version: int) -> dict[str, Any]:
    """One metrics.jsonl record of a training step: reward mean/std, every numeric reward detail (and per task tag
    when prompts carry one), the learner's metrics averaged over ranks, stage times and the weight version."""
    record = {"step": step, "reward/mean": float(batch.rewards.mean()), "reward/std": float(batch.rewards.std()),
              "weight_version": version, **times}
    record.update({f"train/{k}": float(np.mean([r[k] for r in results])) for k in results[0]})
    tags = [m.get("tag") for m in batch.metadata]
    for key, values in batch.reward_details.items():
        if not values or not isinstance(values[0], (int, float)):
            continue
        record[f"reward/{key}"] = float(np.mean(values))
        for tag in sorted({t for t in tags if t}):
            record[f"reward/{key}/{tag}"] = float(np.mean([v for v, t in zip(values, tags) if t == tag]))
    return record


def _train(cfg: RLJobConfig, roles: Roles, train_prompts: list[dict], eval_prompts: list[dict], run_dir: Path,
           log: RunLog, checkpoint: ckpt.Checkpoint | None = None) -> list[tuple[int, float]]:
    """The RL loop from step 0 or from `checkpoint`; returns the held-out history [(step, headline), ...]."""
    if checkpoint is None:
        start = 0
        base, base_batch = _evaluate(cfg, roles, eval_prompts, 0, log)
        _grid(cfg, base_batch, run_dir, "before", 0, base)
        evaluations = [(0, base)]
        _refresh_report(run_dir)
    else:
        start = checkpoint.step
        evaluations = [tuple(e) for e in checkpoint.trainer["evaluations"]]
    bar = tqdm(range(start, cfg.trainer.steps), desc="RL", unit="step", dynamic_ncols=True, initial=start,
               total=cfg.trainer.steps)
    for step in bar:
        times: dict[str, float] = {}
        sol_metrics: dict[str, float] = {}
        if cfg.rollout.strategy == "sol":
            batch, sol_metrics = sol_batch(cfg, roles, train_prompts, step, times)
        else:
            batch = generate_and_score(roles, step_requests(train_prompts, cfg, step), times=times)
        batch.advantages = compute_advantages(batch, cfg)

        tick = time.perf_counter()
        shards = [batch.select(rows) for rows in split_evenly(list(range(len(batch))), len(roles.learner))]
        results = roles.learner.get(roles.learner.scatter("update", shards, step=step))
        times["time/learn"] = time.perf_counter() - tick

        tick = time.perf_counter()
        version = sync_weights(roles, cfg)
        times["time/sync"] = time.perf_counter() - tick
        times["time/step"] = sum(times.values())

        record = {**step_record(step + 1, batch, results, times, version), **sol_metrics}
        log.write(record)
        bar.set_postfix(reward=f"{record['reward/mean']:.3f}", step_s=f"{times['time/step']:.2f}")
        done = step + 1
        last = done == cfg.trainer.steps
        evaluated = last or (cfg.trainer.eval_every and done % cfg.trainer.eval_every == 0)
        if evaluated:
            score, eval_batch = _evaluate(cfg, roles, eval_prompts, done, log)
            evaluations.append((done, score))
            bar.write(f"step {done}: held-out {cfg.trainer.eval_label} {score:.3f}")
            if last:
                _grid(cfg, eval_batch, run_dir, "after", done, score)
        if cfg.trainer.checkpoint_every and done % cfg.trainer.checkpoint_every == 0:
            trainer_state = {
                "evaluations": evaluations,
                # Prompts and seeds of step s are drawn from a generator seeded by (seed, s): the sampler's
                # position is the step itself.
                "sampler": {"kind": "seeded_per_step", "seed": cfg.seed, "next_step": done},
                # Advantages are normalized within each step's groups (per prompt, or over the batch with
                # global_std); no statistics carry over from one step to the next.
                "advantages": {"kind": "per_step_groups", "carried": None},
            }
            path = save_checkpoint(roles, cfg, run_dir, done, trainer_state)
            bar.write(f"step {done}: checkpoint {path}")
        if evaluated or (cfg.trainer.report_every and done % cfg.trainer.report_every == 0):
            _refresh_report(run_dir)
    bar.close()
    return evaluations
