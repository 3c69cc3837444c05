"""Checkpoints for exact resume, shared by the job kinds that train: every learner rank's state, the trained weights,
the other workers' RNG states and weight versions, and the controller's own state (see diffrl.platform.checkpoint);
and the final weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from safetensors.torch import save_file

from diffrl.platform import checkpoint as ckpt
from diffrl.platform.runtime import Roles
from diffrl.platform.worker import WorkerGroup
from diffrl.utils.atomic import atomic_write


def _state_groups(roles: Roles) -> list[WorkerGroup]:
    """Groups whose workers' state (RNG states, weight versions) a checkpoint keeps besides the learners'."""
    return [group for name, group in roles.groups.items() if name != "learner"]


def save_checkpoint(roles: Roles, run_dir: Path, step: int, trainer: dict[str, Any], keep: int) -> Path:
    """Write checkpoints/step_N atomically, keeping the newest `keep`."""
    learner = roles["learner"]
    states = learner.get([learner.call(rank, "state_dict", weights=rank == 0) for rank in range(len(learner))])
    tmp = ckpt.begin(run_dir, step)
    save_file(states[0]["weights"], str(tmp / "model.safetensors"), metadata={"version": str(states[0]["version"])})
    for rank, state in enumerate(states):
        ckpt.write_state({k: v for k, v in state.items() if k != "weights"}, tmp, f"learner_rank{rank}")
    ckpt.write_state({group.name: group.each("state_dict") for group in _state_groups(roles)}, tmp, "workers")
    (tmp / "trainer.json").write_text(json.dumps({**trainer, "step": step}, indent=1))
    return ckpt.commit(tmp, step, keep=keep)


def restore_checkpoint(roles: Roles, checkpoint: ckpt.Checkpoint, after_learners: Callable[[], Any]) -> None:
    """Load a checkpoint into freshly set-up roles: learner ranks first, then `after_learners()` (the kind sends the
    restored weights to its inference workers), then every other worker its own state back."""
    learner = roles["learner"]
    weights = checkpoint.model_tensors()
    learner.get([learner.call(rank, "load_state_dict", {**checkpoint.learner_state(rank), "weights": weights})
                 for rank in range(len(learner))])
    after_learners()
    saved = checkpoint.workers()
    for group in _state_groups(roles):
        states = saved.get(group.name, [])[: len(group)]
        group.scatter_async("load_state_dict", states).results()


def save_weights(learner: WorkerGroup, payload_future: Any, run_dir: Path, name: str) -> Path:
    """A learner weight payload (a future of learner rank 0's `get_weights`) as run_dir/NAME.safetensors, written to
    a temp file and renamed."""
    payload = learner.get([payload_future])[0]
    tensors = {k: v.clone() for k, v in payload.tensors().items()}
    return atomic_write(run_dir / f"{name}.safetensors",
                        lambda tmp: save_file(tensors, str(tmp), metadata={"version": str(payload.version)}))
