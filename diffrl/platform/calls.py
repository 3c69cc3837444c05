"""Collecting a group's calls: `Pending` (recovering calls as they finish, with per-call timeouts), and the marks
that let a failure after start name its role, rank and method."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    from diffrl.platform.worker import WorkerGroup


class CallTimeout(TimeoutError):
    """A call ran past its group's call_timeout_s; its worker was restarted."""


def locate(error: BaseException, group: str, rank: int, method: str) -> BaseException:
    """Mark `error` with the worker it came from (`diffrl_where`, kept as the exception travels up), once."""
    if getattr(error, "diffrl_where", None) is None:
        try:
            error.diffrl_where = f"{group} worker {rank} ({method})"
        except AttributeError:  # an exception type without a __dict__
            pass
    return error


def describe_failure(error: BaseException) -> str:
    """One line for a failure after start: the role, rank and method it came from, and the cause (for a Ray task
    error, the worker's own exception, without the remote traceback)."""
    cause = getattr(error, "cause", None) or error
    text = next((line for line in str(cause).strip().splitlines() if line.strip()), "")
    where = getattr(error, "diffrl_where", None) or getattr(cause, "diffrl_where", None)
    return f"{where + ' failed: ' if where else ''}{type(cause).__name__}{': ' + text if text else ''}"


class Pending:
    """Calls sent to a group's workers and not yet collected. `as_completed()` yields (index, result) as calls
    finish; `results()` returns them in call order. A call lost to a worker's death — during the call, or before it
    while idle (the restarted worker raises NotReady) — is sent again after the worker was restored."""

    def __init__(self, group: WorkerGroup, calls: list, futures: list[Any], flights: list | None = None) -> None:
        self.group, self.calls, self.futures = group, calls, futures
        self.flights = flights if flights is not None else [None] * len(calls)

    def __len__(self) -> int:
        return len(self.calls)

    def as_completed(self) -> Iterator[tuple[int, Any]]:
        group = self.group
        pending = dict(enumerate(self.futures))
        timeout = group.placement.call_timeout_s
        while pending:
            keys = list(pending)
            wait = None
            if timeout is not None:
                starts = [running[1] for rank in self._ranks(pending) if (running := group.running(rank))]
                wait = max(0.0, min(starts) + timeout - time.monotonic()) if starts else None
            found = group.backend.wait_one([pending[k] for k in keys], timeout=wait)
            if found is None:
                self._restart_overdue(pending, timeout)
                continue
            index = keys[found]
            call = self.calls[index]
            group.settle(call.rank, self.flights[index])
            try:
                result = group.get([pending[index]])[0]
            except Exception as err:  # noqa: BLE001 - only a lost worker is handled; anything else re-raises
                if not group.worker_lost(err):
                    raise locate(err, group.name, call.rank, call.method)
                group.recover(call.rank, err, call.incarnation)
                self._resend(pending, index)
                continue
            del pending[index]
            yield index, result

    def _ranks(self, pending: dict[int, Any]) -> list[int]:
        return sorted({self.calls[index].rank for index in pending})

    def _resend(self, pending: dict[int, Any], index: int) -> None:
        again = self.group.submit([self.calls[index]])
        pending[index], self.flights[index] = again.futures[0], again.flights[0]

    def _restart_overdue(self, pending: dict[int, Any], timeout: float) -> None:
        """Restart every worker (of this Pending's calls) whose running call — whichever Pending sent it — is past
        its timeout, and send this Pending's calls to it again (other Pendings re-send theirs when they see the
        death)."""
        group = self.group
        now = time.monotonic()
        for rank in self._ranks(pending):
            running = group.running(rank)
            if running is None or running[1] + timeout > now:
                continue
            error = CallTimeout(f"{group.name} worker {rank}: {running[0].method} gave no answer within {timeout:g} s "
                                f"(its worker was restarted, so the call does not run beside its retry)")
            group.backend.restart(group.handles[rank])
            group.forget_flights(rank)
            group.recover(rank, error, None)
            for index in [i for i in pending if self.calls[i].rank == rank]:
                self._resend(pending, index)

    def results(self) -> list[Any]:
        done: dict[int, Any] = dict(self.as_completed())
        return [done[i] for i in range(len(self.calls))]
