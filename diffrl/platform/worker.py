"""The Worker protocol and WorkerGroup: role classes, placed N at a time, called by broadcast and scatter.

Nothing here imports Ray. A backend turns worker classes into handles and method calls into futures; the local
backend runs workers in this process (a breakpoint works), the Ray backend (`ray_backend.py`) places them as actors
on a resource pool. The controller code is the same for both.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol, Sequence, runtime_checkable

from diffrl.workers.base import NotReady


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
    and how often a dead worker is restarted (Ray backend only; see WorkerGroup.call_with_recovery)."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    max_restarts: int = 0
    resources: dict[str, float] = field(default_factory=dict)


class Backend(Protocol):
    def create(self, cls: type, args: Sequence[tuple], placement: Placement, name: str) -> list[Any]: ...

    def call(self, handle: Any, method: str, *args: Any, **kwargs: Any) -> Any: ...

    def get(self, futures: Sequence[Any], timeout: float | None = None) -> list[Any]: ...

    def wait_one(self, futures: Sequence[Any]) -> int: ...

    def kill(self, handles: Sequence[Any]) -> None: ...

    def is_lost(self, error: BaseException) -> bool:
        """True when `error` means the worker process died (rather than the method raising)."""


class WorkerLost(RuntimeError):
    """A worker died and could not be brought back (no restarts left, or a role that is never restarted)."""

    def __init__(self, group: str, rank: int, detail: str) -> None:
        super().__init__(f"{group} worker {rank} died: {detail}")
        self.group, self.rank = group, rank


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

    def wait_one(self, futures: Sequence[Any]) -> int:
        """Index of a finished future (local calls finish when made: the first)."""
        return 0

    def kill(self, handles: Sequence[Any]) -> None:
        return None

    def is_lost(self, error: BaseException) -> bool:
        return False  # in-process workers cannot die on their own


class WorkerGroup:
    """N workers of one class. `broadcast` calls every worker; `scatter` sends shard i to worker i mod N.

    Both return futures; `get` resolves them in call order, so results come back in shard order whatever the
    completion order.
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
        self.handles = backend.create(cls, args, placement, self.name)
        # Called as restore(group, rank) after a worker restarted, before its lost call is sent again: it brings
        # the fresh worker to the state the others have (setup, current weights). The controller sets it.
        self.restore: Callable[[WorkerGroup, int], None] | None = None
        self.restarts = [0] * len(self.handles)
        # The process each worker runs in, from health()["incarnation"] (None: not known yet).
        self.incarnations: list[str | None] = [None] * len(self.handles)

    def __len__(self) -> int:
        return len(self.handles)

    def broadcast(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        return [self.backend.call(handle, method, *args, **kwargs) for handle in self.handles]

    def scatter(self, method: str, shards: Sequence[Any], **kwargs: Any) -> list[Any]:
        return [
            self.backend.call(self.handles[index % len(self.handles)], method, shard, **kwargs)
            for index, shard in enumerate(shards)
        ]

    def call(self, rank: int, method: str, *args: Any, **kwargs: Any) -> Any:
        return self.backend.call(self.handles[rank], method, *args, **kwargs)

    def get(self, futures: Sequence[Any], timeout: float | None = None) -> list[Any]:
        return self.backend.get(futures, timeout=timeout)

    # ------------------------------------------------------------------ calls that survive a worker's death
    def submit(self, calls: Sequence[Call]) -> list[Any]:
        for c in calls:
            c.incarnation = self.incarnations[c.rank]
        return [self.call(c.rank, c.method, *c.args, **c.kwargs) for c in calls]

    def note_health(self, healths: Sequence[dict[str, Any]]) -> None:
        """Remember each worker's incarnation from a `run("health")`."""
        self.incarnations = [h.get("incarnation") for h in healths]

    def _worker_lost(self, error: BaseException) -> bool:
        return self.backend.is_lost(error) or isinstance(error, NotReady)

    def calls_as_completed(self, calls: Sequence[Call], futures: Sequence[Any] | None = None
                           ) -> Iterator[tuple[int, Any]]:
        """Yield (index, result) for `calls` as they finish (`futures`: the calls, already submitted). A call whose
        worker died — during the call, or before it while idle (the restarted worker raises NotReady) — is sent
        again after the worker was restarted and restored (`recover`): nothing is lost or duplicated."""
        pending = dict(enumerate(futures if futures is not None else self.submit(calls)))
        while pending:
            keys = list(pending)
            index = keys[self.backend.wait_one([pending[k] for k in keys])]
            try:
                result = self.get([pending[index]])[0]
            except Exception as err:  # noqa: BLE001 - only a lost worker is handled; anything else re-raises
                if not self._worker_lost(err):
                    raise
                self.recover(calls[index].rank, err, calls[index].incarnation)
                pending[index] = self.submit([calls[index]])[0]
                continue
            del pending[index]
            yield index, result

    def gather(self, calls: Sequence[Call], futures: Sequence[Any] | None = None) -> list[Any]:
        """Results of `calls` in call order, with the same recovery as calls_as_completed."""
        results: dict[int, Any] = dict(self.calls_as_completed(calls, futures))
        return [results[i] for i in range(len(calls))]

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
                if time.monotonic() > deadline or not (self.backend.is_lost(err) or "Timeout" in type(err).__name__):
                    raise WorkerLost(self.name, rank, f"did not come back within {timeout_s:.0f} s: {err}") from err
                time.sleep(0.5)
        current = health.get("incarnation")
        if current is not None and current == submitted:
            raise error
        if current is None or current != self.incarnations[rank]:
            self.restarts[rank] += 1
            if self.restarts[rank] > allowed:
                raise WorkerLost(self.name, rank, f"no restarts left ({allowed} allowed; last error: {error})") from error
            if self.restore is not None:
                self.restore(self, rank)
            self.incarnations[rank] = current

    def run(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        """Broadcast and wait: the results of every worker, in rank order."""
        return self.get(self.broadcast(method, *args, **kwargs))

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
