"""RolloutWorker: holds an inference copy of the policy and generates seeded samples for sample requests."""

from __future__ import annotations

import contextlib
from typing import Any, Sequence

import numpy as np
import torch

from diffrl.algorithms.flow_matching import timestep_grid
from diffrl.algorithms.solvers import check_grid
from diffrl.models.adapter import concat_conditioning, encode_each
from diffrl.models.registry import apply_lora, build_model_from_config, load_trainable_state_dict
from diffrl.platform.worker import WorkerBase
from diffrl.utils.weight_sync import WeightPayload
from diffrl.workers.batch import RolloutBatch, SampleRequest
from diffrl.workers.sampling import sample


class RolloutWorker(WorkerBase):
    """Generates RolloutBatches. Weights arrive from the learner through `load_weights` with a version number."""

    def __init__(self, model_cfg: dict, rollout_cfg: dict, store_trajectory: bool = False) -> None:
        super().__init__()
        self.model_cfg = model_cfg
        self.cfg = rollout_cfg
        self.store_trajectory = store_trajectory  # Flow-GRPO learners need per-step latents and log-probs
        self.model = None
        self.weight_version = 0
        self._cond_cache: dict[str, Any] = {}

    def build(self) -> None:
        self.model = build_model_from_config(self.model_cfg)
        lora = self.model_cfg["lora"]
        if lora["enabled"]:
            apply_lora(self.model, lora["rank"], lora["alpha"], lora["target_modules"])
        self.model.to("cuda" if torch.cuda.is_available() else "cpu").eval().requires_grad_(False)
        self.quant_report: list[dict] = []
        self._precision_context = contextlib.nullcontext
        if self.cfg["precision"] in ("nvfp4", "fp8"):
            self._quantize()

    def _quantize(self) -> None:
        """Low-precision copy of the denoiser (`rollout.precision`): transformer-engine where the GPU supports the
        precision (quant_backend auto or transformer_engine), else emulated NVFP4 fake quantization."""
        from diffrl.models.low_precision import DEFAULT_SKIP, quantize_linears, report_table, te_convert_linears, te_recipe

        precision, backend = self.cfg["precision"], self.cfg["quant_backend"]
        skip = self.cfg["quant_skip"] if self.cfg["quant_skip"] is not None else DEFAULT_SKIP
        recipe = None
        if backend in ("auto", "transformer_engine"):
            try:
                recipe = te_recipe(precision)
            except RuntimeError as err:
                if backend == "transformer_engine" or precision == "fp8":
                    raise RuntimeError(f"rollout.precision={precision} with transformer-engine: {err}") from None
        if recipe is not None:
            import transformer_engine.pytorch as te

            report = te_convert_linears(self.model.denoiser, skip, self.cfg["quant_min_features"])
            self._precision_context = lambda: te.fp8_autocast(enabled=True, fp8_recipe=recipe)
        else:
            report = quantize_linears(self.model.denoiser, skip, self.cfg["quant_min_features"])
        self.quant_report = report_table(report)

    def quantization_report(self) -> list[dict]:
        """Per linear layer: name, in/out features, whether it runs in low precision and why not."""
        return self.quant_report

    def _encode(self, prompts: Sequence[str]):
        for prompt in sorted(set(prompts) - set(self._cond_cache)):
            with torch.no_grad():
                self._cond_cache[prompt] = encode_each(self.model, [prompt])
        return concat_conditioning([self._cond_cache[p] for p in prompts])

    def generate(
        self, requests: Sequence[SampleRequest], num_steps: int | None = None, sampler: str | None = None,
        solver_options: dict | None = None,
    ) -> RolloutBatch:
        """Sample every request (in micro-batches of rollout.batch_size); row i answers request i.

        With neither override, requests sample with the configured sampler on rollout.grid (or the even grid of
        rollout.num_steps); `num_steps`/`sampler` override that with the even grid of `num_steps` (held-out eval
        uses the deterministic ODE sampler; `solver_options` those of the overriding sampler). Trajectories are stored only for the configured training sampler. A
        request's own `grid` wins over both; all requests of one call must share one grid, the batch's `grid`.
        """
        self.require_ready()
        configured = sampler is None or sampler == self.cfg["sampler"]
        default_grid = self._training_grid() if num_steps is None and configured else timestep_grid(
            num_steps or self.cfg["num_steps"])
        grid = self._grid(requests, default_grid)
        sampler = sampler or self.cfg["sampler"]
        store = self.store_trajectory and configured
        if solver_options is None and sampler == "sa_solver":
            solver_options = self.cfg["sa_solver"]
        autocast = torch.bfloat16 if self.cfg["precision"] == "bf16" else None
        chunks, size = [], self.cfg["batch_size"]
        for start in range(0, len(requests), size):
            part = requests[start : start + size]
            seeds = [r.seed for r in part]
            guidance = self.cfg.get("guidance_scale", 1.0)
            with self._precision_context():
                result = sample(
                    self.model, self._encode([r.prompt for r in part]), seeds, grid=grid,
                    sampler=sampler, noise_level=self.cfg["noise_level"], autocast_dtype=autocast,
                    guidance_scale=guidance, null_cond=self._encode([""] * len(part)) if guidance != 1.0 else None,
                    sde_window=self.cfg["sde_window"] if sampler in ("sde", "cps") else 0, store_trajectory=store,
                    solver_options=solver_options, **self._window(part, sampler),
                )
            chunks.append(
                RolloutBatch(
                    prompts=[r.prompt for r in part],
                    metadata=[r.metadata for r in part],
                    group_ids=torch.tensor([r.group_id for r in part], dtype=torch.long),
                    seeds=torch.tensor(seeds, dtype=torch.long),
                    samples=result.samples,
                    images=self.model.decode(result.samples),
                    grid=result.grid,
                    weight_version=torch.full((len(part),), self.weight_version, dtype=torch.long),
                    latents=result.latents,
                    next_latents=result.next_latents,
                    log_probs=result.log_probs,
                    step_index=result.step_index,
                    nfe=torch.full((len(part),), result.nfe, dtype=torch.long),
                )
            )
        return RolloutBatch.concat(chunks)

    def encode_images(self, requests: Sequence[SampleRequest], images: np.ndarray) -> RolloutBatch:
        """Offline samples (Diffusion-DPO's pairs file): row i is `images[i]` encoded into model space for request i,
        on the training grid (rollout.grid or the even grid of rollout.num_steps), without trajectories."""
        self.require_ready()
        size = self.cfg["batch_size"]  # the VAE encodes in rollout.batch_size chunks, as sampling does
        samples = torch.cat([self.model.encode_images(images[start:start + size])
                             for start in range(0, len(images), size)])
        return RolloutBatch(
            prompts=[r.prompt for r in requests], metadata=[r.metadata for r in requests],
            group_ids=torch.tensor([r.group_id for r in requests], dtype=torch.long),
            seeds=torch.tensor([r.seed for r in requests], dtype=torch.long),
            samples=samples, images=images, grid=self._training_grid(),
            weight_version=torch.full((len(requests),), -1, dtype=torch.long),  # not drawn by any policy version
            nfe=torch.zeros(len(requests), dtype=torch.long))

    def _training_grid(self) -> torch.Tensor:
        """The configured training grid: rollout.grid, else the even grid of rollout.num_steps."""
        if self.cfg.get("grid") is not None:
            return torch.tensor(self.cfg["grid"], dtype=torch.float32)
        return timestep_grid(self.cfg["num_steps"])

    def _window(self, part: Sequence[SampleRequest], sampler: str) -> dict:
        """MixGRPO's window starts from the requests (all or none carry one) and the Flash tail, for the configured
        stochastic sampler only (held-out eval's ODE takes neither)."""
        starts = [r.window_start for r in part]
        if sampler not in ("sde", "cps") or sampler != self.cfg["sampler"] or all(s is None for s in starts):
            return {}
        if any(s is None for s in starts):
            raise ValueError("SampleRequest.window_start: set it on every request of a call or on none")
        return {"window_starts": starts, "tail_compress": self.cfg.get("window_tail_compress")}

    @staticmethod
    def _grid(requests: Sequence[SampleRequest], default_grid: torch.Tensor) -> torch.Tensor:
        """The one time grid of these requests: their SampleRequest.grid, or `default_grid` for None.

        One generate call makes one RolloutBatch with one `grid`, which the learners index by step, so requests on
        different grids go to separate calls."""
        grids = set()
        for requested in {r.grid for r in requests}:
            if requested is None:
                grids.add(tuple(default_grid.tolist()))
                continue
            try:
                grids.add(tuple(check_grid(requested).tolist()))
            except ValueError as err:
                raise ValueError(f"SampleRequest.grid: {err}") from None
        if len(grids) > 1:
            raise ValueError(f"one generate call samples on one time grid (RolloutBatch.grid), but the requests "
                             f"carry {len(grids)}: {sorted(grids, key=len)}; send each grid's requests separately")
        return torch.tensor(grids.pop(), dtype=torch.float32)

    def load_weights(self, payload: WeightPayload) -> int:
        """Apply a learner's `get_weights()` payload (bucketed trainable tensors, version); returns the version.

        Samples generated afterwards record this version in `RolloutBatch.weight_version`."""
        self.require_ready()
        if payload.target == "model":  # a trained text encoder too: cached prompt encodings are stale
            load_trainable_state_dict(self.model, payload.tensors())
            self._cond_cache.clear()
        else:
            load_trainable_state_dict(self.model.denoiser, payload.tensors())
        self.weight_version = payload.version
        return payload.version

    def open_weight_channel(self, store_path: str, rank: int, world_size: int, layout: Any) -> None:
        """Join the learner's weight-broadcast group as receiver `rank` (learner.sync_backend: broadcast)."""
        from diffrl.utils.collective_sync import BroadcastChannel

        self._channel = BroadcastChannel(store_path, rank, world_size, next(self.model.denoiser.parameters()).device)
        self._layout = layout

    def receive_weights(self) -> int:
        """Receive one broadcast from learner rank 0 and load it; returns its version."""
        return self.load_weights(self._channel.receive(self._layout))

    def role_state(self) -> dict[str, Any]:
        return {"weight_version": self.weight_version}

    def load_role_state(self, state: dict[str, Any]) -> None:
        """Restore the version (weights arrive through load_weights, as after any update)."""
        self.weight_version = int(state["weight_version"])

    def status(self) -> dict[str, Any]:
        return {"weight_version": self.weight_version}
