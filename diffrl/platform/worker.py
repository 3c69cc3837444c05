"""Workers and worker groups: role classes, placed N at a time, called through recovering group calls.

Nothing here imports Ray. A backend turns worker classes into handles and method calls into futures; the local
backend runs workers in this process (a breakpoint works), the Ray backend (`ray_backend.py`) places them as actors
on a resource pool. The controller code is the same for both.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

from diffrl.utils.net import free_port
from diffrl.platform.calls import Pending
from diffrl.utils.rng import capture_rng, restore_rng


class NotReady(RuntimeError):
    """Raised by a role method called before setup() — after a restart, the constructor ran again but setup did not.
    WorkerGroup treats it like a lost worker: it restores the worker and sends the call again."""


class WorkerBase:
    """What every role class shares. Subclasses implement `build()` (load models; may be slow), their role methods
    (which start with `self.require_ready()`), and optionally `status()`, `role_state()` / `load_role_state()`.

    - `incarnation`: a fresh id per worker object, so a group can tell a restarted actor (its constructor ran again)
      from the one it sent a call to;
    - `setup(num_threads, **kwargs)`: sets the torch thread count to the worker's own CPUs, then `build(**kwargs)`;
      until it has run, `require_ready()` raises NotReady;
    - `health()`: ready flag, incarnation and the role's `status()`;
    - `state_dict()` / `load_state_dict()`: the process's RNG states plus the role's own state, for exact resume.
    """

    def __init__(self) -> None:
        self.incarnation = uuid.uuid4().hex
        self.ready = False

    def setup(self, num_threads: int = 1, **kwargs: Any) -> None:
        import torch

        torch.set_num_threads(max(1, int(num_threads)))
        self.build(**kwargs)
        self.ready = True

    def build(self, **kwargs: Any) -> None:
        """Load what the role needs (models, rewards, process groups)."""

    def require_ready(self) -> None:
        if not self.ready:
            raise NotReady(f"{type(self).__name__} is not set up (restarted?): call setup() first")

    def status(self) -> dict[str, Any]:
        return {}

    def health(self) -> dict[str, Any]:
        return {"ready": self.ready, "incarnation": self.incarnation, **self.status()}

    def role_state(self) -> dict[str, Any]:
        return {}

    def load_role_state(self, state: dict[str, Any]) -> None:
        """Restore `role_state()` (after setup())."""

    def state_dict(self) -> dict[str, Any]:
        return {**self.role_state(), "rng": capture_rng()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.load_role_state(state)
        restore_rng(state["rng"])

    def free_port(self, host: str) -> int:
        """A port free on this worker's node at `host`, for a rendezvous store this worker will serve."""
        return free_port(host)


@runtime_checkable
class Worker(Protocol):
    """A role class: constructed from plain arguments, `setup()` loads models (may be slow)."""

    def setup(self) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def health(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Placement:
    """What one worker of a group asks of its resource pool: CPUs, (fractional) GPUs and custom resources per worker,
    and how often a dead worker is restarted (Ray backend only; see WorkerGroup.recover)."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    max_restarts: int = 0
    resources: dict[str, float] = field(default_factory=dict)
    runtime_env: dict[str, Any] = field(default_factory=dict)  # Ray runtime environment (another Python env)
    # Seconds one call may run (from when the worker starts it); an overdue call's worker is restarted and the call
    # re-sent, so it never runs beside its retry (Ray backend; None waits forever).
    call_timeout_s: float | None = None


class Backend(Protocol):
    def create(self, cls: type, args: Sequence[tuple], placement: Placement, name: str) -> list[Any]: ...

    def call(self, handle: Any, method: str, *args: Any, **kwargs: Any) -> Any: ...

    def get(self, futures: Sequence[Any], timeout: float | None = None) -> list[Any]: ...

    def wait_one(self, futures: Sequence[Any], timeout: float | None = None) -> int | None:
        """Index of a finished future; None when none finished within `timeout` seconds."""

    def kill(self, handles: Sequence[Any]) -> None: ...

    def restart(self, handle: Any) -> None:
        """Kill the worker's process so that it is restarted (it counts as a death)."""

    def is_lost(self, error: BaseException) -> bool:
        """True when `error` means the worker process died (rather than the method raising)."""

    def is_timeout(self, error: BaseException) -> bool:
        """True when `error` is a `get` that ran past its timeout."""

    def node_ip(self, handle: Any) -> str:
        """The address of the node the worker runs on."""

    def threads_for(self, cpus: float) -> int:
        """Torch threads for a worker that asked for `cpus` CPUs."""

    def single_node(self) -> bool:
        """Whether every worker runs on the driver's node (files in its temp dir and loopback reach them all)."""


class WorkerLost(RuntimeError):
    """A worker died and could not be brought back (no restarts left, or a role that is never restarted)."""

    def __init__(self, group: str, rank: int, detail: str) -> None:
        super().__init__(f"{group} worker {rank} died: {detail}")
        self.group, self.rank = group, rank


@dataclass(eq=False)
class Flight:
    """A recovering call in flight on one worker: when it was sent, its future and method (for call timeouts)."""

    sent: float
    future: Any
    method: str


@dataclass
class Call:
    """One method call on one worker of a group, kept so that it can be sent again if the worker dies.
    `incarnation` is the worker process the call was last sent to, as the group knew it then."""

    rank: int
    method: str
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    incarnation: str | None = None


class _Done:
    """A finished local call; `get` returns its value or re-raises its exception."""

    __slots__ = ("value", "error")

    def __init__(self, value: Any = None, error: BaseException | None = None) -> None:
        self.value, self.error = value, error


class LocalBackend:
    """Runs workers in this process, one call at a time, for debugging and for timing the Ray overhead."""

    def create(self, cls: type, args: Sequence[tuple], placement: Placement, name: str) -> list[Any]:
        return [cls(*worker_args) for worker_args in args]

    def call(self, handle: Any, method: str, *args: Any, **kwargs: Any) -> _Done:
        """Run now; futures among the arguments are resolved first, as Ray resolves object refs."""
        args = tuple(self.get([a])[0] if isinstance(a, _Done) else a for a in args)
        kwargs = {k: self.get([v])[0] if isinstance(v, _Done) else v for k, v in kwargs.items()}
        try:
            return _Done(getattr(handle, method)(*args, **kwargs))
        except Exception as err:  # re-raised by get(), like a Ray future
            return _Done(error=err)

    def get(self, futures: Sequence[Any], timeout: float | None = None) -> list[Any]:
        values = []
        for future in futures:
            if future.error is not None:
                raise future.error
            values.append(future.value)
        return values

    def wait_one(self, futures: Sequence[Any], timeout: float | None = None) -> int | None:
        """Index of a finished future (local calls finish when made: the first)."""
        return 0

    def kill(self, handles: Sequence[Any]) -> None:
        return None

    def restart(self, handle: Any) -> None:
        raise RuntimeError("in-process workers cannot be restarted")

    def is_lost(self, error: BaseException) -> bool:
        return False  # in-process workers cannot die on their own

    def is_timeout(self, error: BaseException) -> bool:
        return False  # local calls finish when made

    def node_ip(self, handle: Any) -> str:
        return "127.0.0.1"

    def threads_for(self, cpus: float) -> int:
        """In-process workers take turns on this process's cores."""
        return os.cpu_count() or 1

    def single_node(self) -> bool:
        return True


class WorkerGroup:
    """N workers of one class, called through recovering group calls:

    - `map(method, items)`: split `items` into one contiguous shard per worker, call `method(shard)` on each, and
      return the per-shard results in order; `map_async` returns the Pending calls instead (to overlap stages);
    - `each(method, ...)`: the same call on every worker, results in rank order;
    - `scatter_async(method, shards)`: shard i to worker i mod N (`spread`: each shard is an argument tuple).
    A call whose worker died is sent again after the group restarted and restored it (see `recover`): nothing is
    lost or duplicated. `broadcast`, `call` and `get` are the raw, non-recovering calls (set-up, collectives).
    """

    def __init__(
        self,
        backend: Backend,
        cls: type,
        args: Sequence[tuple],
        placement: Placement = Placement(),
        name: str | None = None,
    ) -> None:
        if not args:
            raise ValueError(f"WorkerGroup {name or cls.__name__} needs at least one worker")
        self.backend = backend
        self.name = name or cls.__name__
        self.placement = placement
        # What setup() is called with: the worker's thread count, from its own CPUs.
        self.setup_kwargs = {"num_threads": backend.threads_for(placement.num_cpus)}
        self.handles = backend.create(cls, args, placement, self.name)
        # Called as restore(group, rank) after a worker restarted, before its lost call is sent again: it brings
        # the fresh worker to the state the others have (by default: setup; a job kind adds e.g. current weights).
        self.restore: Callable[[WorkerGroup, int], None] = lambda group, rank: group.get([group.setup_worker(rank)])
        self.restarts = [0] * len(self.handles)
        # Recovering calls in flight per worker, in send order, across every Pending (a worker runs its calls one
        # after another: the first is the one it is running), and when each worker last finished one.
        self.flights: list[list[Flight]] = [[] for _ in self.handles]
        self.last_done = [0.0] * len(self.handles)
        # The process each worker runs in, from health()["incarnation"] (None: not known yet).
        self.incarnations: list[str | None] = [None] * len(self.handles)

    def __len__(self) -> int:
        return len(self.handles)

    # ------------------------------------------------------------------------------ raw calls (futures)
    def broadcast(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        return [self.backend.call(handle, method, *args, **kwargs) for handle in self.handles]

    def call(self, rank: int, method: str, *args: Any, **kwargs: Any) -> Any:
        return self.backend.call(self.handles[rank], method, *args, **kwargs)

    def get(self, futures: Sequence[Any], timeout: float | None = None) -> list[Any]:
        return self.backend.get(futures, timeout=timeout)

    def run(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        """Broadcast and wait: the results of every worker, in rank order (no recovery: set-up and health)."""
        return self.get(self.broadcast(method, *args, **kwargs))

    def setup_worker(self, rank: int, **extra: Any) -> Any:
        """The future of setup() on worker `rank` with the group's setup arguments."""
        return self.call(rank, "setup", **self.setup_kwargs, **extra)

    # -------------------------------------------------------------------------------- recovering calls
    def map(self, method: str, items: Sequence[Any], **kwargs: Any) -> list[Any]:
        """Per-shard results of `method(shard, **kwargs)`, `items` split evenly over the workers, in order."""
        return self.map_async(method, items, **kwargs).results()

    def map_async(self, method: str, items: Sequence[Any], **kwargs: Any) -> Pending:
        return self.scatter_async(method, split_evenly(items, len(self)), **kwargs)

    def scatter_async(self, method: str, shards: Sequence[Any], spread: bool = False, **kwargs: Any) -> Pending:
        """Shard i to worker i mod N, as Pending recovering calls; with `spread`, each shard is a tuple of
        positional arguments rather than the one argument."""
        return self.submit([Call(index % len(self), method, tuple(shard) if spread else (shard,), kwargs)
                            for index, shard in enumerate(shards)])

    def each(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        """`method(*args, **kwargs)` on every worker, results in rank order."""
        return self.submit([Call(rank, method, args, kwargs) for rank in range(len(self))]).results()

    def submit(self, calls: Sequence[Call]) -> Pending:
        futures, flights = [], []
        for c in calls:
            c.incarnation = self.incarnations[c.rank]
            futures.append(self.call(c.rank, c.method, *c.args, **c.kwargs))
            flights.append(Flight(time.monotonic(), futures[-1], c.method))
            if self.placement.call_timeout_s is not None:  # only timed groups keep the books
                self.flights[c.rank].append(flights[-1])
        return Pending(self, list(calls), futures, flights)

    # ------------------------------------------------------------------ call timeouts (Pending's bookkeeping)
    def settle(self, rank: int, flight: Flight | None) -> None:
        """`flight` finished (or failed): the worker's next call starts now."""
        if flight in self.flights[rank]:
            self.flights[rank].remove(flight)
            self.last_done[rank] = time.monotonic()

    def forget_flights(self, rank: int) -> None:
        """The worker was restarted: every call in flight on it is lost (their Pendings send them again)."""
        self.flights[rank].clear()
        self.last_done[rank] = time.monotonic()

    def running(self, rank: int) -> tuple[Flight, float] | None:
        """The call worker `rank` is running — its oldest flight that is not finished (finished ones that their
        Pending has not collected yet are settled here) — and when it started (sent, or when the call before it
        finished); None when it runs none."""
        while self.flights[rank]:
            head = self.flights[rank][0]
            if self.backend.wait_one([head.future], timeout=0) is None:
                return head, max(head.sent, self.last_done[rank])
            self.settle(rank, head)
        return None

    def note_health(self, healths: Sequence[dict[str, Any]]) -> None:
        """Remember each worker's incarnation from a `run("health")`."""
        self.incarnations = [h.get("incarnation") for h in healths]

    def worker_lost(self, error: BaseException) -> bool:
        return self.backend.is_lost(error) or isinstance(error, NotReady)

    def recover(self, rank: int, error: BaseException, submitted: str | None = None,
                timeout_s: float = 300.0) -> None:
        """After `error` on a call sent to incarnation `submitted` of worker `rank`: wait until the worker answers
        again; if it is a new process not yet restored, count the restart and run the restore hook on it. One death
        is counted once however many calls it failed. If the worker answers as the very process the call was sent
        to, it never died (the error came from elsewhere, e.g. a dead learner whose weights the call carried):
        `error` is raised. WorkerLost when the worker has no restarts left or does not come back in time."""
        allowed = self.placement.max_restarts
        deadline = time.monotonic() + timeout_s
        while True:  # a call to a restarting actor fails until its constructor has run again
            try:
                health = self.get([self.call(rank, "health")], timeout=max(1.0, deadline - time.monotonic()))[0]
                break
            except Exception as err:  # noqa: BLE001
                if self.backend.is_lost(err) and self.restarts[rank] >= allowed:
                    raise WorkerLost(self.name, rank, f"no restarts left ({allowed} allowed, {self.restarts[rank]} "
                                                      f"used; last error: {error})") from error
                if time.monotonic() > deadline or not (self.backend.is_lost(err) or self.backend.is_timeout(err)):
                    raise WorkerLost(self.name, rank, f"did not come back within {timeout_s:.0f} s: {err}") from err
                time.sleep(0.5)
        current = health.get("incarnation")
        if current is not None and current == submitted:
            raise error
        if current is None or current != self.incarnations[rank]:
            self.restarts[rank] += 1
            if self.restarts[rank] > allowed:
                raise WorkerLost(self.name, rank, f"no restarts left ({allowed} allowed; last error: {error})") from error
            self.restore(self, rank)
            self.incarnations[rank] = current

    def shutdown(self) -> None:
        self.backend.kill(self.handles)


def split_evenly(items: Sequence[Any], num_shards: int) -> list[list[Any]]:
    """Contiguous shards whose sizes differ by at most one, in order; empty shards are dropped."""
    base, extra = divmod(len(items), num_shards)
    shards, start = [], 0
    for index in range(num_shards):
        size = base + (1 if index < extra else 0)
        if size:
            shards.append(list(items[start : start + size]))
        start += size
    return shards
