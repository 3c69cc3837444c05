"""The Worker protocol and WorkerGroup: role classes, placed N at a time, called by broadcast and scatter.

Nothing here imports Ray. A backend turns worker classes into handles and method calls into futures; the local
backend runs workers in this process (a breakpoint works), the Ray backend (`ray_backend.py`) places them as actors
on a resource pool. The controller code is the same for both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence, runtime_checkable


@runtime_checkable
class Worker(Protocol):
    """A role class: constructed from plain arguments, `setup()` loads models (may be slow)."""

    def setup(self) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def health(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Placement:
    """What one worker of a group asks of its resource pool: CPUs and (fractional) GPUs per worker, and how often a
    dead worker is restarted (its in-flight calls are then re-sent to the restarted worker; Ray backend only)."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    max_restarts: int = 0


class Backend(Protocol):
    def create(self, cls: type, args: Sequence[tuple], placement: Placement, name: str) -> list[Any]: ...

    def call(self, handle: Any, method: str, *args: Any, **kwargs: Any) -> Any: ...

    def get(self, futures: Sequence[Any], timeout: float | None = None) -> list[Any]: ...

    def wait_one(self, futures: Sequence[Any]) -> int: ...

    def kill(self, handles: Sequence[Any]) -> None: ...


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
        self.handles = backend.create(cls, args, placement, self.name)

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

    def as_completed(self, futures: Sequence[Any]):
        """Yield (index, result) for `futures` in the order they finish."""
        pending = dict(enumerate(futures))
        while pending:
            keys = list(pending)
            index = keys[self.backend.wait_one([pending[k] for k in keys])]
            yield index, self.get([pending.pop(index)])[0]

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
