"""Modules an objective trains beside its main one, each on its own DeepSpeed engine with its own optimizer: a
discriminator, a critic, a value head. An objective lists them in `modules` (name -> TrainedModule); the learner
builds one engine per entry on the same ranks and micro-batching as the main engine, and the objective's `loss`
returns a dict of losses, "main" for the main module and one entry per extra module.

Each loss must reach only its own module's parameters: compute another module's part on detached inputs or with
the module `models.frozen(name)` yields (a generator loss through a discriminator, say), since every engine accumulates whatever
gradients land on its parameters. After each backward the learner checks that no other loss reached an extra
module's parameters, and names the module.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn

# Keys of a ZeRO-1/2 optimizer state that hold live objects (the loss scaler, parameter-fragment maps) rather than
# data: not saved; on load the live optimizer's own values are used (they depend only on the config).
RUNTIME_KEYS = ("loss_scaler", "param_slice_mappings")
ENGINE_COUNTERS = ("global_steps", "global_samples", "micro_steps", "skipped_steps")


@dataclass(frozen=True)
class TrainedModule:
    """A module trained beside the main one: `build(model)` makes it from the learner's (frozen) model adapter, e.g.
    a head on its width; it trains with AdamW at its own constant `lr`."""

    build: Callable[[nn.Module], nn.Module]
    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    grad_clip: float = 1.0


def engine_config(micro: int, accumulation: int, world_size: int, grad_clip: float, zero_stage: int) -> dict:
    return {"train_micro_batch_size_per_gpu": micro, "gradient_accumulation_steps": accumulation,
            "train_batch_size": micro * accumulation * world_size, "gradient_clipping": grad_clip,
            "zero_optimization": {"stage": zero_stage}, "zero_allow_untested_optimizer": True,
            "steps_per_print": 10**9}


def optimizer_state(optimizer: Any) -> dict:
    return {k: v for k, v in optimizer.state_dict().items() if k not in RUNTIME_KEYS}


def load_optimizer_state(optimizer: Any, state: dict, zero_stage: int, world_size: int) -> None:
    if zero_stage in (1, 2):
        live = optimizer.state_dict()
        saved = {**{k: live[k] for k in RUNTIME_KEYS if k in live}, **state}
        # DeepSpeed reads entry [dp rank] of the list (the checkpoint is rigid: this rank's own partition), and takes
        # the fp32 partition from it exactly.
        optimizer.load_state_dict([saved] * world_size, load_optimizer_states=True, load_from_fp32_weights=True)
    else:
        optimizer.load_state_dict(state)


class ModuleEngine:
    """One extra trained module on its DeepSpeed engine."""

    def __init__(self, name: str, spec: TrainedModule, model: nn.Module, micro: int, accumulation: int,
                 world_size: int, zero_stage: int) -> None:
        import deepspeed

        if zero_stage == 3:
            raise ValueError(f"trained module {name!r}: extra modules support learner.zero_stage 0-2")
        self.name, self.zero_stage, self.world_size = name, zero_stage, world_size
        module = spec.build(model)
        self.params = [p for p in module.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError(f"trained module {name!r} has no trainable parameters")
        optimizer = torch.optim.AdamW(self.params, lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=module, optimizer=optimizer,
            config=engine_config(micro, accumulation, world_size, spec.grad_clip, zero_stage))

    @contextlib.contextmanager
    def frozen(self) -> Iterator[nn.Module]:
        """The plain module (outside its engine, whose backward hooks would fire inside another engine's backward),
        with no gradient reaching its parameters inside the block."""
        for p in self.params:
            p.requires_grad_(False)
        try:
            yield self.engine.module
        finally:
            for p in self.params:
                p.requires_grad_(True)

    def grad_total(self) -> float:
        """Sum of |grad| over the parameters (0 when none has arrived): how the learner sees foreign gradients."""
        return float(sum(p.grad.abs().sum() for p in self.params if p.grad is not None))

    def state_dict(self) -> dict[str, Any]:
        return {"weights": {k: v.detach().clone() for k, v in self.engine.module.state_dict().items()},
                "optimizer": optimizer_state(self.optimizer),
                "engine": {key: int(getattr(self.engine, key)) for key in ENGINE_COUNTERS}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.engine.module.load_state_dict(state["weights"])
        load_optimizer_state(self.optimizer, state["optimizer"], self.zero_stage, self.world_size)
        for key, value in state["engine"].items():
            setattr(self.engine, key, value)
