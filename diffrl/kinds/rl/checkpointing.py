"""RL checkpoints (exact resume) and final weights: every learner rank's state, the trained weights, the other
workers' RNG states and weight versions, and the controller's own state (see diffrl.platform.checkpoint)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from diffrl.kinds.rl.sync import WeightSync
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


def restore_checkpoint(roles: Roles, sync: WeightSync, checkpoint: ckpt.Checkpoint) -> None:
    """Load a checkpoint into freshly set-up roles: learner ranks first, then the inference workers receive the
    restored weights and every worker its own state back."""
    learner = roles["learner"]
    weights = checkpoint.model_tensors()
    learner.get([learner.call(rank, "load_state_dict", {**checkpoint.learner_state(rank), "weights": weights})
                 for rank in range(len(learner))])
    sync.sync()
    saved = checkpoint.workers()
    for group in _state_groups(roles):
        states = saved.get(group.name, [])[: len(group)]
        group.scatter_async("load_state_dict", states).results()


def save_weights(sync: WeightSync, run_dir: Path, name: str, ema: bool = False) -> Path:
    """Learner rank 0's trainable tensors (or its eval EMA's) as safetensors, written to a temp file and renamed."""
    payload = sync.learner.get([sync.learner_weights(ema)])[0]
    tensors = {k: v.clone() for k, v in payload.tensors().items()}
    return atomic_write(run_dir / f"{name}.safetensors",
                        lambda tmp: save_file(tensors, str(tmp), metadata={"version": str(payload.version)}))
