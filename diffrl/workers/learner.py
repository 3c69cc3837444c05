"""LearnerWorker: one data-parallel rank of a DeepSpeed engine that trains the denoiser (LoRA or full) with AWM,
Flow-GRPO or DiffusionNFT (`diffrl.workers.objectives`).

Each rank receives its shard of the rollout batch and expands it into rows (see the objectives); rows do not depend
on how the batch was split, so N ranks compute the same update as one rank (DeepSpeed averages gradients over ranks
and scales micro-batch losses by 1 / gradient_accumulation_steps).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
from typing import Any, Callable

import torch
from torch import nn

from diffrl.algorithms.awm import ema_update_
from diffrl.utils.net import pin_loopback_interfaces
from diffrl.utils.rng import capture_rng, restore_rng
from diffrl.models.adapter import Conditioning, encode_each, guided_velocity, select_conditioning
from diffrl.platform.worker import WorkerBase
from diffrl.models.registry import apply_lora, build_model_from_config, load_trainable_state_dict, trainable_state_dict
from diffrl.utils.collective_sync import BroadcastChannel, BucketLayout
from diffrl.utils.weight_sync import DEFAULT_BUCKET_MB, WeightPayload, pack
from diffrl.workers.batch import RolloutBatch
from diffrl.workers.finite import check_gradients, check_loss, check_weights
from diffrl.workers.modules import (ENGINE_COUNTERS, ModuleEngine, engine_config, load_optimizer_state,
                                    optimizer_state)
from diffrl.workers.objectives import build_objective


def lr_factor(cfg: dict) -> Callable[[int], float]:
    """The learning-rate multiplier after `done` updates: linear warm-up over warmup_steps, then constant, or
    (lr_schedule: cosine) a cosine decay to min_lr at total_steps."""
    warmup, lr = cfg.get("warmup_steps", 0), cfg["lr"]
    if cfg.get("lr_schedule", "constant") == "constant":
        return lambda done: min(1.0, (done + 1) / max(1, warmup))
    total, floor = cfg["total_steps"], cfg["min_lr"] / lr

    def cosine(done: int) -> float:
        if done < warmup:
            return (done + 1) / warmup
        progress = min(1.0, (done - warmup) / max(1, total - warmup))
        return floor + 0.5 * (1 - floor) * (1 + math.cos(math.pi * progress))

    return cosine


def largest_divisor_at_most(n: int, limit: int) -> int:
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


class LearnerWorker(WorkerBase):
    def __init__(
        self,
        rank: int,
        world_size: int,
        model_cfg: dict,
        learner_cfg: dict,
        samples_per_rank: int,
        rollout_cfg: dict | None = None,
    ) -> None:
        super().__init__()
        self.rank, self.world_size = rank, world_size
        self.model_cfg, self.cfg = model_cfg, learner_cfg
        self.samples_per_rank = samples_per_rank
        self.objective = build_objective(learner_cfg, rollout_cfg)
        # Flow-GRPO recomputes the rollout's guided velocity; AWM and NFT train the conditional velocity.
        self.guidance = (rollout_cfg or {}).get("guidance_scale", 1.0) if self.objective.guided else 1.0
        self.version = 0
        self.engine = None

    # ----------------------------------------------------------------------------------------------- set-up
    def build(self, rendezvous: str) -> None:
        """Join the ranks' process group at `rendezvous` and build the DeepSpeed engine.

        On one node the ranks meet through a file store (a file:// URL) instead of a TCP store, whose server would
        listen on every interface, and gloo/NCCL connections are pinned to loopback. Across nodes the runtime passes
        tcp://HOST:PORT on learner rank 0's node and the node's network is used."""
        self.rendezvous = rendezvous
        os.environ.update(RANK=str(self.rank), LOCAL_RANK="0", WORLD_SIZE=str(self.world_size))
        if self.rendezvous.startswith("file://"):
            pin_loopback_interfaces()
        if not torch.cuda.is_available():  # name the accelerator: auto-detection warns on every CPU start
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        import deepspeed
        import deepspeed.ops

        on_gpu = torch.cuda.is_available()
        if not on_gpu:
            # DeepSpeed JIT-compiles a shared-memory all-reduce for CPU inference on first init (about 2 minutes);
            # training over gloo never uses it, so skip the build.
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo", auto_mpi_discovery=False, verbose=False,
                                   init_method=self.rendezvous, rank=self.rank, world_size=self.world_size)

        self.model = build_model_from_config(self.model_cfg)
        self.model.requires_grad_(False)
        lora = self.model_cfg["lora"]
        self.frozen_reference = None  # under LoRA the base model is the denoiser with its adapters disabled
        if lora["enabled"]:
            apply_lora(self.model, lora["rank"], lora["alpha"], lora["target_modules"])
        # What the engine trains: the denoiser (LoRA-wrapped or not), or (objective.trains == "model") every module
        # of the adapter.
        trained = self.model if self.objective.trains == "model" else self.model.denoiser
        if not lora["enabled"]:
            if self.objective.needs_reference:
                self.frozen_reference = copy.deepcopy(self.model.denoiser).eval()
            trained.requires_grad_(True)
        params = [p for p in trained.parameters() if p.requires_grad]
        # Shadow copies of the trained weights: the objective's (AWM trust region, NFT old policy) and the eval EMA.
        # They are plain modules copied before DeepSpeed wraps (and, under ZeRO-3, partitions) the trained module.
        wanted = dict(self.objective.shadows)
        if self.cfg.get("eval_ema_decay", 0.0) > 0:
            decay = self.cfg["eval_ema_decay"]
            wanted["eval"] = lambda step: decay
        self.shadows: dict[str, tuple[nn.Module, list[torch.Tensor], Callable[[int], float]]] = {}
        for name, schedule in wanted.items():
            module = copy.deepcopy(trained).eval().requires_grad_(False)
            named = dict(module.named_parameters())
            tracked = [named[n] for n, p in trained.named_parameters() if p.requires_grad]
            self.shadows[name] = (module, tracked, schedule)

        rows = self.objective.rows_for(self.samples_per_rank, self.cfg["algorithm"])
        micro = largest_divisor_at_most(rows, self.cfg["micro_batch_size"])
        ds_config = engine_config(micro, rows // micro, self.world_size, self.cfg["grad_clip"], self.cfg["zero_stage"])
        optimizer = torch.optim.AdamW(
            params, lr=self.cfg["lr"], betas=tuple(self.cfg["betas"]), weight_decay=self.cfg["weight_decay"]
        )
        # DeepSpeed steps the schedule with the optimizer.
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(self.cfg))
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=trained, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
        )
        self.micro_batch = micro
        self._params = params
        # Modules the objective trains beside the main one, each with its own engine and optimizer.
        self.modules = {name: ModuleEngine(name, spec, self.model, micro, rows // micro, self.world_size,
                                           self.cfg["zero_stage"]) for name, spec in self.objective.modules.items()}
        self.device = self.engine.device
        self.model.to(self.device)  # frozen parts (text encoders, VAE); DeepSpeed placed the denoiser
        if self.frozen_reference is not None:
            self.frozen_reference.to(self.device)
        for module, _, _ in self.shadows.values():
            module.to(self.device)
        with torch.no_grad():
            self._null_cond = encode_each(self.model, [""]) if self.guidance != 1.0 else None

    # ------------------------------------------------------------------------------------------- training
    def _guided(self, net, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """net's velocity, with classifier-free guidance against the empty prompt when self.guidance != 1."""
        return guided_velocity(net, x, t, cond, self.guidance, self._null_cond)

    def policy(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        return self._guided(self.engine, x, t, cond)

    def reference(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The base model: the frozen copy, or (LoRA) the trained denoiser with its adapters disabled."""
        if self.frozen_reference is not None:
            return self._guided(self.frozen_reference, x, t, cond)
        with self.engine.module.disable_adapter():
            return self._guided(self.engine.module, x, t, cond)

    def shadow(self, name: str, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        return self.shadows[name][0](x, t, cond)

    def shadow_module(self, name: str) -> nn.Module:
        """Shadow copy `name` itself (language models call it with their own signature)."""
        return self.shadows[name][0]

    def trained(self) -> nn.Module:
        """The module the engine trains (the denoiser, or the whole adapter)."""
        return self.engine.module

    def module(self, name: str) -> nn.Module:
        """Extra trained module `name` (its engine: call it with gradients)."""
        return self.modules[name].engine

    def frozen(self, name: str):
        """A block that yields extra module `name` with no gradient reaching its parameters."""
        return self.modules[name].frozen()

    def _encode(self, prompts: list[str]) -> Conditioning:
        unique = sorted(set(prompts))
        with torch.no_grad():
            encoded = encode_each(self.model, unique)
        lookup = {p: i for i, p in enumerate(unique)}
        return select_conditioning(encoded, torch.tensor([lookup[p] for p in prompts]))

    def update(self, batch: RolloutBatch, step: int) -> dict[str, float]:
        """One optimizer step of the objective on this rank's shard; returns rank-local metrics (the controller
        averages them over ranks)."""
        if len(batch) != self.samples_per_rank:
            raise ValueError(f"learner rank {self.rank} expects {self.samples_per_rank} samples, got {len(batch)}")
        # A trained text encoder encodes inside each micro-batch, with gradients; a frozen one once, per prompt.
        # Objectives without text conditioning (language models) get None.
        with_grad = self.objective.trains == "model"
        conditioned = self.objective.conditioning
        cond = self._encode(batch.prompts) if conditioned and not with_grad else None
        rows = {key: value.to(self.device) for key, value in self.objective.rows(batch, step).items()}
        count = len(rows["index"])
        totals: dict[str, float] = {}
        grad_norm = 0.0
        # Objectives with passes > 1 (free adversarial training) replay the minibatch: each pass is one optimizer
        # step and one EMA update, and after each backward the objective updates its per-row state (`ascend`).
        passes = getattr(self.objective, "passes", 1)
        for done in range(passes):
            if hasattr(self.objective, "start_pass"):  # objectives whose loss depends on the pass (dLLM RL's mu)
                self.objective.start_pass(done)
            for start in range(0, count, self.micro_batch):
                sl = slice(start, start + self.micro_batch)
                part = {key: value[sl] for key, value in rows.items()}
                if not conditioned:
                    part_cond = None
                elif with_grad:
                    part_cond = self.engine.module.encode_prompts([batch.prompts[i] for i in part["index"].tolist()])
                else:
                    part_cond = select_conditioning(cond, part["index"])
                loss, stats = self.objective.loss(self, part, part_cond)
                losses = loss if isinstance(loss, dict) else {"main": loss}
                loss = losses["main"]
                for name, value in losses.items():
                    where = f"pass {done + 1} of {passes}, rows from {start}"
                    check_loss(value, step, self.rank, where if name == "main" else f"module {name}, {where}")
                self._backward(losses)
                if done + 1 < passes:
                    self.objective.ascend(part, rows, sl, self._loss_scale())
                if self.engine.is_gradient_accumulation_boundary():
                    grad_norm = self._grad_norm()
                    if not self.engine.fp16_enabled():  # fp16 overflow is the loss scaler's to handle
                        check_gradients(self.engine.module, grad_norm, step, self.rank)
                self.engine.step()
                for extra in self.modules.values():
                    extra.engine.step()
                weight = len(part["index"]) / count / passes
                extra_losses = {f"{name}/loss": value.detach() for name, value in losses.items() if name != "main"}
                for key, value in {"loss": loss.detach(), **extra_losses, **stats}.items():
                    totals[key] = totals.get(key, 0.0) + float(value) * weight
                if passes > 1 and done == 0:  # the unperturbed pass, comparable with one-pass training's loss
                    totals["clean_loss"] = totals.get("clean_loss", 0.0) + float(loss.detach()) * weight * passes
            with self._gathered():
                for _, tracked, decay in self.shadows.values():
                    ema_update_(tracked, self._params, decay(step))
        self.version += 1
        totals["grad_norm"] = float(self.engine.get_global_grad_norm() or grad_norm)
        if not self.engine.fp16_enabled():
            check_gradients(self.engine.module, totals["grad_norm"], step, self.rank, applied=True)
        for engine in [self.engine, *(m.engine for m in self.modules.values())]:
            check_weights(engine.module, step, self.rank)
        return totals

    def _backward(self, losses: dict[str, torch.Tensor]) -> None:
        """Each engine's backward of its own loss; an extra module's gradients must come from its loss only."""
        if set(losses) != {"main", *self.modules}:
            raise ValueError(f"learner.algorithm={self.cfg['algorithm']}: loss() must return losses for "
                             f"{sorted({'main', *self.modules})}, got {sorted(losses)}")
        engines = {"main": self.engine, **{name: extra.engine for name, extra in self.modules.items()}}
        for index, (name, engine) in enumerate(engines.items()):
            others = {n: m.grad_total() for n, m in self.modules.items() if n != name}
            engine.backward(losses[name], retain_graph=index + 1 < len(engines))
            reached = [n for n, total in others.items() if self.modules[n].grad_total() != total]
            if reached:
                raise ValueError(f"learner.algorithm={self.cfg['algorithm']}: the {name} loss reached the parameters "
                                 f"of module(s) {reached}; compute their part with the module models.frozen(name) "
                                 "yields or on detached inputs")

    def _loss_scale(self) -> float:
        """The fp16 engine's current loss scale (gradients arrive multiplied by it), else 1."""
        if self.engine.fp16_enabled():
            return float(getattr(self.optimizer, "cur_scale", getattr(self.optimizer, "loss_scale", 1.0)))
        return 1.0

    def _grad_norm(self) -> float:
        """Norm of the reduced gradients before clipping (ZeRO-1/2 report theirs through the engine instead)."""
        grads = [p.grad for p in self._params if p.grad is not None]
        return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))) if grads else 0.0

    def get_weights(self, ema: bool = False) -> WeightPayload:
        """Trainable tensors (adapters only under LoRA) packed into buckets with their version, for the rollout
        workers; `ema` gives the eval EMA's instead (learner.eval_ema_decay > 0)."""
        if ema:
            if "eval" not in self.shadows:
                raise ValueError("get_weights(ema=True) needs learner.eval_ema_decay > 0")
            module = self.shadows["eval"][0]
            return pack(trainable_state_dict(module), self.version, self.cfg.get("sync_bucket_mb", DEFAULT_BUCKET_MB),
                        target=self.objective.trains)
        # Under ZeRO-3 gathering is collective: every rank must call get_weights (see diffrl.kinds.rl.sync.WeightSync.learner_weights).
        with self._gathered():
            state = trainable_state_dict(self.engine.module)
        return pack(state, self.version, self.cfg.get("sync_bucket_mb", DEFAULT_BUCKET_MB), target=self.objective.trains)

    def save_model(self, directory: str, ema: bool = True) -> str:
        """Save the whole adapter (its `save`: config and safetensors weights) with the trained weights — the eval
        EMA's when `ema` — so that jobs can load it as `model.path` (full training, not LoRA)."""
        trained = self.shadows["eval"][0] if ema else self.engine.module
        if self.objective.trains == "model":
            trained.save(directory)
        elif self.model_cfg["lora"]["enabled"]:
            raise ValueError("save_model saves a fully trained model; under LoRA save the adapters (get_weights)")
        else:
            model = copy.deepcopy(self.model)
            model.denoiser.load_state_dict(trained.state_dict())
            model.save(directory)
        return directory

    def perturbation_errors(self, x0: torch.Tensor, prompts: list[str], seeds: list[int], times: list[float],
                            radii: list[float], attack: str) -> list[float]:
        """Robustness of the eval EMA (or the trained weights): x0-prediction error under input perturbations of
        each size in `radii` (`diffrl.algorithms.adversarial.perturbation_errors`), averaged over `times`; row i's
        noise comes from seeds[i]."""
        from diffrl.algorithms.adversarial import perturbation_errors

        net = self.shadows["eval"][0] if "eval" in self.shadows else self.engine.module
        denoiser = getattr(net, "denoiser", net)
        if net is denoiser:
            cond = self._encode(prompts)
        else:  # the whole adapter trains: its own text encoder
            with torch.no_grad():
                cond = encode_each(net, prompts)
        x0 = x0.to(self.device)
        eps = torch.stack([torch.randn(x0.shape[1:], generator=torch.Generator().manual_seed(int(s))) for s in seeds])
        totals = [0.0] * len(radii)
        for t_value in times:
            t = torch.full((len(x0),), float(t_value), device=self.device)
            x_t = (1 - t_value) * x0 + t_value * eps.to(self.device)

            def predict_x0(x: torch.Tensor) -> torch.Tensor:
                if hasattr(denoiser, "predict_x0"):
                    return denoiser.predict_x0(x, t, cond)
                return x - t_value * denoiser(x, t, cond)

            errors = perturbation_errors(predict_x0, x0, x_t, radii, attack,  # type: ignore[arg-type]
                                         torch.Generator().manual_seed(int(seeds[0])))
            totals = [a + b / len(times) for a, b in zip(totals, errors)]
        return totals

    # --------------------------------------------------------------- weight sync by broadcast (sync_backend)
    def weight_layout(self) -> BucketLayout:
        """The bucket layout of get_weights(), fixed for a run; receivers allocate from it."""
        return BucketLayout.of(self.get_weights())

    def open_weight_channel(self, store_path: str, world_size: int) -> None:
        """Join the weight-broadcast group as its sender (call on rank 0, together with every receiver)."""
        self._channel = BroadcastChannel(store_path, 0, world_size, self.device)

    def broadcast_weights(self) -> int:
        """Broadcast the current trainable tensors to every receiver; returns their version."""
        payload = self.get_weights()
        self._channel.send(payload)
        return payload.version

    def _gathered(self):
        """Full parameters inside the block under ZeRO-3 (a collective over the ranks); a no-op otherwise."""
        if self.cfg["zero_stage"] != 3:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(self._params, modifier_rank=None)

    # ------------------------------------------------------------------------------------- checkpoints
    def state_dict(self, weights: bool = True) -> dict[str, Any]:
        """Everything an exact resume needs from this rank: trained weights (`weights=False` leaves them out: every
        rank holds the same), optimizer (this rank's partition under ZeRO-1/2) and scheduler state, the shadow
        copies (EMA, old policy), DeepSpeed's step counters, the extra trained modules, RNG states and the weight
        version."""
        if self.cfg["zero_stage"] == 3:
            raise NotImplementedError("checkpoints for resume support learner.zero_stage 0-2")
        return {
            "version": self.version,
            "weights": ({k: v.detach().clone() for k, v in trainable_state_dict(self.engine.module).items()}
                        if weights else {}),
            "optimizer": optimizer_state(self.optimizer),
            "scheduler": self.scheduler.state_dict(),
            "shadows": {name: [t.detach().clone() for t in tracked] for name, (_, tracked, _) in self.shadows.items()},
            "engine": {key: int(getattr(self.engine, key)) for key in ENGINE_COUNTERS},
            "modules": {name: extra.state_dict() for name, extra in self.modules.items()},
            "rng": capture_rng(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict()` of the same rank and config (after setup())."""
        load_trainable_state_dict(self.engine.module, state["weights"])
        load_optimizer_state(self.optimizer, state["optimizer"], self.cfg["zero_stage"], self.world_size)
        self.scheduler.load_state_dict(state["scheduler"])
        with torch.no_grad():
            for name, (_, tracked, _) in self.shadows.items():
                for target, value in zip(tracked, state["shadows"][name], strict=True):
                    target.copy_(value)
        for key, value in state["engine"].items():
            setattr(self.engine, key, value)
        for name, extra in self.modules.items():
            extra.load_state_dict(state["modules"][name])
        restore_rng(state["rng"])
        self.version = int(state["version"])

    def status(self) -> dict[str, Any]:
        return {"rank": self.rank, "version": self.version}
