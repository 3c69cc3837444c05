"""The job runtime: start a kind's roles (pools, groups, set-up, health), run its controller in a run directory,
and bring everything down again. The same for every job kind, on Ray and in-process."""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from diffrl.platform.roles import RoleSpec, resource_pools
from diffrl.platform.calls import locate
from diffrl.platform.worker import LocalBackend, Placement, WorkerGroup, WorkerLost

if TYPE_CHECKING:
    from diffrl.platform.checkpoint import Checkpoint
    from diffrl.platform.config import JobConfig
    from diffrl.platform.kind import JobKind
    from diffrl.platform.runs import RunLog


def file_rendezvous(directory: Path, name: str = "store") -> str:
    """A file:// store in `directory` for process groups on this node (a TCP store would listen on every
    interface)."""
    return f"file://{Path(directory).resolve()}/{name}"


@dataclass
class Roles:
    """The live worker groups of a job, by role name, and what they were placed on."""

    groups: dict[str, WorkerGroup]
    specs: dict[str, RoleSpec]
    pools: list = field(default_factory=list)
    scratch: Path | None = None  # holds file rendezvous stores; removed at shutdown
    single_node: bool = True  # every worker on the driver's node: rendezvous through files, loopback connections

    def __getitem__(self, name: str) -> WorkerGroup:
        return self.groups[name]

    def get(self, name: str) -> WorkerGroup | None:
        return self.groups.get(name)

    def rendezvous(self, group: WorkerGroup, name: str = "store") -> str:
        """Where a process group over `group` (and maybe others) meets: a file store in the scratch directory on
        one node, else tcp://HOST:PORT on the node of `group`'s rank 0, a port free there (rank 0 serves it)."""
        if self.single_node:
            return file_rendezvous(self.scratch, name)
        host = group.backend.node_ip(group.handles[0])
        port = group.get([group.call(0, "free_port", host)])[0]
        return f"tcp://{host}:{port}"

    def died(self, error: BaseException) -> str | None:
        """The role of a group that is never restarted in place (max_restarts 0) and lost a worker, if `error`
        came from such a death (its error can surface through another group's call, so each is asked)."""
        if isinstance(error, WorkerLost):
            role = next((n for n, g in self.groups.items() if g.name == error.group), None)
            return role if role is not None and not self.specs[role].max_restarts else None
        if not any(group.backend.is_lost(error) for group in self.groups.values()):
            return None
        for name, group in self.groups.items():
            if self.specs[name].max_restarts:
                continue
            for rank in range(len(group)):
                try:
                    group.get([group.call(rank, "health")], timeout=30)
                except Exception as err:  # noqa: BLE001
                    if group.backend.is_lost(err):
                        return name
        return None

    def shutdown(self) -> None:
        """Stop every worker, release the resource pools and remove the scratch directory."""
        for group in self.groups.values():
            group.shutdown()
        for pool in self.pools:
            pool.remove()
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


def start_roles(cfg: JobConfig, specs: list[RoleSpec]) -> Roles:
    """Place and set up every role's worker group (Ray actors on resource pools, or in-process), then check that
    every worker is healthy. Collective roles set up first and together (init waits for every rank)."""
    scratch = Path(tempfile.mkdtemp(prefix="diffrl-"))
    if cfg.backend == "local":
        backend = LocalBackend()
        backends = {spec.name: backend for spec in specs}
        pools: list = []
        single_node = True
    else:
        from diffrl.platform.ray_backend import RayBackend, ResourcePool
        from diffrl.platform.ray_cluster import connect_ray

        connect_ray(cfg.ray.address, cfg.ray.num_cpus, cfg.ray.num_gpus)
        pools, backends = [], {}
        try:
            for pool_spec in resource_pools(specs, cfg.ray.colocate):
                pool = ResourcePool(pool_spec.role, pool_spec.workers, pool_spec.cpus, pool_spec.gpus,
                                    pool_spec.resources, timeout_s=cfg.ray.placement_timeout_s,
                                    bundles=pool_spec.bundle_list())
                pools.append(pool)
                backends.update({role: RayBackend(pool) for role in pool_spec.roles})
        except Exception:
            for pool in pools:
                pool.remove()
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        single_node = next(iter(backends.values())).single_node()
    roles = Roles({}, {spec.name: spec for spec in specs}, pools, scratch, single_node)
    try:
        for spec in specs:
            placement = Placement(spec.cpus, spec.gpus, spec.max_restarts, dict(spec.resources),
                                  dict(spec.runtime_env), spec.call_timeout_s if cfg.backend == "ray" else None)
            roles.groups[spec.name] = WorkerGroup(backends[spec.name], spec.worker_class(), list(spec.args), placement,
                                                  spec.display_name)
        _set_up(roles, specs)
    except BaseException:
        roles.shutdown()  # nothing placed by a failed start outlives it
        raise
    return roles


def _set_up(roles: Roles, specs: list[RoleSpec]) -> None:
    ordered = [s for s in specs if s.collective] + [s for s in specs if not s.collective]
    futures = []
    for spec in ordered:
        group = roles[spec.name]
        extra = {"rendezvous": roles.rendezvous(group, f"{spec.name}_store")} if spec.collective else {}
        futures += [(group, rank, group.setup_worker(rank, **extra)) for rank in range(len(group))]
    for group, rank, future in futures:
        try:
            group.get([future])
        except Exception as err:
            raise locate(err, group.name, rank, "setup") from None
    for spec in specs:
        group = roles[spec.name]
        healths = group.run("health")
        not_ready = [rank for rank, health in enumerate(healths) if not health["ready"]]
        if not_ready:
            raise RuntimeError(f"{group.name} workers {not_ready} did not become ready after setup()")
        group.note_health(healths)


@dataclass
class RunContext:
    """What a kind's controller gets: its config, its live roles, the run directory and log, the checkpoint to
    continue from (None: a fresh start), and `echo` for one-line messages."""

    cfg: Any
    roles: Roles
    run_dir: Path
    log: RunLog
    checkpoint: Checkpoint | None
    echo: Callable[[str], None] = print


def run_job(kind: JobKind, cfg: JobConfig, resume: bool = False, echo: Callable[[str], None] = print) -> dict:
    """Run (or continue: `resume`, or cfg.resume == "auto") a job of `kind` in its run directory; returns the
    controller's summary.

    With resume: auto, a death in a role that is never restarted in place (a learner rank) brings the roles down and
    up again from the newest checkpoint, at most trainer.max_learner_failures times; the other roles' workers are
    restarted in place by their groups."""
    from diffrl.platform import checkpoint as ckpt
    from diffrl.platform.runs import RunLog, open_run, rewind_metrics

    run_dir, checkpoint = open_run(cfg, must_resume=resume)
    log = RunLog(run_dir, cfg)
    echo(f"diffrl: run directory {run_dir}" + (f" (resuming from step {checkpoint.step})" if checkpoint else ""))
    failures = 0
    try:
        while True:
            t0 = time.perf_counter()
            roles = start_roles(cfg, kind.roles(cfg))
            try:
                counts = ", ".join(f"{len(g)} {name}" for name, g in roles.groups.items())
                echo(f"diffrl: roles ready in {time.perf_counter() - t0:.1f}s ({counts}, {cfg.backend})")
                return kind.run(RunContext(cfg, roles, run_dir, log, checkpoint, echo))
            except Exception as err:
                role = roles.died(err) if cfg.resume == "auto" else None
                if role is None or failures >= cfg.trainer.max_learner_failures:
                    raise
                failures += 1
                checkpoint = ckpt.latest_checkpoint(run_dir)
                rewind_metrics(run_dir, checkpoint.step if checkpoint else None)
                where = f"checkpoint step {checkpoint.step}" if checkpoint else "the start (no checkpoint yet)"
                echo(f"diffrl: a {role} died ({err}); restarting the roles from {where} "
                     f"(failure {failures} of {cfg.trainer.max_learner_failures} allowed)")
            finally:
                roles.shutdown()
    finally:
        log.close()
