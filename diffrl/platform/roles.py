"""Role specs: what a job kind asks of the runtime, one entry per worker group. Resource pools, colocation, the
placement-timeout messages and the cluster templates are all derived from them here, for every kind."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Sequence


@dataclass(frozen=True)
class RoleSpec:
    """One worker group: `workers` actors of `worker` (a class, or "module:Class" imported when the group starts),
    each built from its entry of `args` and reserving `cpus` / `gpus` / custom `resources`.

    - `label`: the name errors use ("reward 'ocr'"); default the role name;
    - `max_restarts`: how often a dead worker is restarted in place (its lost call re-sent); 0 means a death ends
      the attempt, and under `resume: auto` the runtime restarts every role from the newest checkpoint;
    - `collective`: the ranks form one process group; setup() receives `rendezvous` (a file store on one node, a
      TCP store on rank 0's node otherwise) and the ranks set up together;
    - `colocate_with`: put worker i on the resource bundle of worker i of that role (fractional GPUs);
    - `runtime_env`: the Ray runtime environment of its workers (e.g. {"py_executable": ...}: another Python env);
    - `call_timeout_s`: seconds one call may run; an overdue call's worker is restarted (a death, counted against
      max_restarts) and the call re-sent (Ray backend; None waits forever).
    """

    name: str
    worker: type | str
    args: tuple[tuple, ...]
    cpus: float = 1.0
    gpus: float = 0.0
    resources: dict[str, float] = field(default_factory=dict)
    max_restarts: int = 0
    label: str | None = None
    collective: bool = False
    colocate_with: str | None = None
    runtime_env: dict[str, Any] = field(default_factory=dict)
    call_timeout_s: float | None = None

    @property
    def workers(self) -> int:
        return len(self.args)

    @property
    def display_name(self) -> str:
        return self.label or self.name

    def worker_class(self) -> type:
        if not isinstance(self.worker, str):
            return self.worker
        module, _, name = self.worker.partition(":")
        return getattr(importlib.import_module(module), name)

    def bundle(self) -> dict[str, float]:
        """What one worker reserves, as a Ray placement-group bundle."""
        return {"CPU": self.cpus, **self.resources, **({"GPU": self.gpus} if self.gpus else {})}


@dataclass(frozen=True)
class PoolSpec:
    """One resource pool (Ray placement group): the roles it holds (one name, or colocated names joined by '+')
    and its bundles; bundle i holds worker i of each of its roles that has an i-th worker."""

    role: str
    bundles: tuple[dict[str, float], ...]

    @property
    def roles(self) -> list[str]:
        return self.role.split("+")

    @property
    def workers(self) -> int:
        return len(self.bundles)

    @property
    def cpus(self) -> float:
        return self.bundles[0].get("CPU", 0.0)

    @property
    def gpus(self) -> float:
        return self.bundles[0].get("GPU", 0.0)

    @property
    def resources(self) -> dict[str, float]:
        return {k: v for k, v in self.bundles[0].items() if k not in ("CPU", "GPU")}

    def bundle_list(self) -> list[dict[str, float]]:
        return [dict(b) for b in self.bundles]

    @property
    def total_cpus(self) -> float:
        return sum(b.get("CPU", 0.0) for b in self.bundles)

    @property
    def total_gpus(self) -> float:
        return sum(b.get("GPU", 0.0) for b in self.bundles)

    def describe(self) -> str:
        gpus = f", {self.gpus:g} GPU" if self.gpus else ""
        return f"{self.role} {self.workers} x ({self.cpus:g} CPU{gpus})"


def colocation_groups(specs: Sequence[RoleSpec], colocate: Sequence[Sequence[str]]) -> list[list[str]]:
    """Roles that share one pool: the job's `ray.colocate` groups, joined by each spec's `colocate_with`."""
    groups = [list(group) for group in colocate]
    for spec in specs:
        if spec.colocate_with is None:
            continue
        joined = next((g for g in groups if spec.colocate_with in g), None)
        if joined is None:
            groups.append([spec.colocate_with, spec.name])
        elif spec.name not in joined:
            joined.append(spec.name)
    return groups


def check_colocation(specs: Sequence[RoleSpec], colocate: Sequence[Sequence[str]]) -> None:
    """ValueError (naming ray.colocate and the job's roles) unless every group names two or more known roles and
    every role is in one group at most."""
    roles = [spec.name for spec in specs]
    seen: set[str] = set()
    for group in colocate:
        unknown = [role for role in group if role not in roles]
        if unknown:
            raise ValueError(f"ray.colocate: unknown role(s) {unknown}; this job's roles are {roles}")
        if len(group) < 2 or seen & set(group) or len(set(group)) < len(group):
            raise ValueError(f"ray.colocate: each group needs two or more roles, each role in one group only "
                             f"(got {[list(g) for g in colocate]})")
        seen |= set(group)
    for spec in specs:
        if spec.colocate_with is not None and spec.name in seen:
            host = next(set(g) for g in colocate if spec.name in g)
            if spec.colocate_with not in host:
                raise ValueError(f"ray.colocate groups {spec.name} away from {spec.colocate_with}, which the job "
                                 f"colocates it with")


def resource_pools(specs: Sequence[RoleSpec], colocate: Sequence[Sequence[str]] = ()) -> list[PoolSpec]:
    """The pools the runtime creates: one per role, except that colocated roles share one whose bundle i holds
    worker i of each role that has an i-th worker (as many bundles as the largest role has workers)."""
    by_name = {spec.name: spec for spec in specs}
    groups = colocation_groups(specs, colocate)
    grouped = {role for group in groups for role in group}
    pools = [PoolSpec(spec.name, tuple(spec.bundle() for _ in range(spec.workers)))
             for spec in specs if spec.name not in grouped]
    for group in groups:
        members = [by_name[role] for role in group]
        bundles = []
        for index in range(max(m.workers for m in members)):
            bundle: dict[str, float] = {}
            for member in (m for m in members if m.workers > index):
                for key, value in member.bundle().items():
                    bundle[key] = bundle.get(key, 0.0) + value
            bundles.append(bundle)
        pools.append(PoolSpec("+".join(group), tuple(bundles)))
    return pools
