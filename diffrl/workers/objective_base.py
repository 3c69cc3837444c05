"""The learner objective protocol: what an objective declares and the models it may call (`diffrl.workers.objectives`
holds the registry)."""

from __future__ import annotations

from typing import Callable, ClassVar, Protocol

from torch import Tensor

from diffrl.models.adapter import Conditioning
from diffrl.workers.batch import RolloutBatch


class Models(Protocol):
    """What an objective may call: the trained policy and the frozen or shadow copies the learner keeps."""

    def policy(self, x: Tensor, t: Tensor, cond: Conditioning) -> Tensor: ...

    def reference(self, x: Tensor, t: Tensor, cond: Conditioning) -> Tensor: ...

    def shadow(self, name: str, x: Tensor, t: Tensor, cond: Conditioning) -> Tensor: ...

    def shadow_module(self, name: str): ...

    def trained(self): ...

    def module(self, name: str): ...

    def frozen(self, name: str): ...


class Objective:
    """Base. What an objective declares, so the learner builds only what it uses:

    - `rows_per_sample`: fixes the DeepSpeed batch sizes (`rows_for`);
    - `shadows`: the EMA copies the learner keeps, name -> decay(step) ("eval" is the one evaluated and saved);
    - `needs_reference`: a frozen copy of the base denoiser (or, under LoRA, the adapters disabled) for KL terms;
    - `guided`: the loss recomputes the rollout's classifier-free-guided velocity;
    - `trajectories`: rollouts must store their stochastic steps (latents, log-probs);
    - `advantages`: the advantage rule the controller applies before `update` (None: no advantages);
    - `trains`: "denoiser", or "model" (every module of the adapter: the text encoder too, encoded with gradients
      inside each micro-batch);
    - `conditioning`: the loss takes the prompts' text conditioning (False: language models, given None);
    - `passes`: optimizer steps per minibatch; passes > 1 replays it, calling `ascend` after each backward but the
      last (free adversarial training keeps its per-row perturbation in the rows).
    - `modules`: extra modules trained beside the main one, each on its own engine with its own optimizer
      (name -> `diffrl.workers.modules.TrainedModule`); `loss` then returns a dict of losses, "main" and one per
      module, each reaching only its own module's parameters.
    """

    rows_per_sample: int = 1
    shadows: dict[str, Callable[[int], float]] = {}
    modules: dict = {}
    needs_reference: ClassVar[bool] = True
    guided: ClassVar[bool] = False
    trajectories: ClassVar[bool] = False
    advantages: ClassVar[str | None] = "per_prompt_group"
    trains: ClassVar[str] = "denoiser"
    conditioning: ClassVar[bool] = True
    passes: int = 1
    section: ClassVar[str | None] = None  # the learner config section it reads (None: its registry name)

    def rows_for(self, samples: int, name: str) -> int:
        """Training rows of `samples` samples; rows_per_sample may be fractional (pair objectives: Diffusion-DPO's
        timesteps / group_size), and must then make whole rows."""
        rows = samples * self.rows_per_sample
        if rows != int(rows) or rows < 1:
            raise ValueError(f"learner.algorithm={name}: {samples} samples per rank make {rows} rows; each rank "
                             "must hold whole groups")
        return int(rows)

    def rows(self, batch: RolloutBatch, step: int) -> dict[str, Tensor]:
        raise NotImplementedError

    def loss(self, models: Models, rows: dict[str, Tensor],
             cond: Conditioning) -> tuple[Tensor | dict[str, Tensor], dict[str, Tensor]]:
        raise NotImplementedError

    def ascend(self, part: dict[str, Tensor], rows: dict[str, Tensor], rows_slice: slice, loss_scale: float) -> None:
        """After the backward of micro-batch `part` (= rows[rows_slice]) in a pass that is not the last."""
