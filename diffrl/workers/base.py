"""What every role class shares: an incarnation id per process (so a group can tell a restarted worker from the one
it sent a call to) and the error a worker raises when it is asked to work before setup()."""

from __future__ import annotations

import uuid


class NotReady(RuntimeError):
    """Raised by a role method called before setup() — after a restart, the constructor ran again but setup did not.
    WorkerGroup treats it like a lost worker: it restores the worker and sends the call again."""


def new_incarnation() -> str:
    """A fresh id for this worker object; a restarted actor gets a new one (its constructor runs again)."""
    return uuid.uuid4().hex
