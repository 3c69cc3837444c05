"""LearnerWorker: one data-parallel rank of a DeepSpeed engine that trains the denoiser (LoRA or full) with AWM.

Each rank receives its shard of the rollout batch. Every (sample, training timestep) pair is one row; a row's
timestep and noise are drawn from a generator seeded by the sample's seed and the RL step, so the rows do not depend
on how the batch was split, and N ranks compute the same update as one rank (DeepSpeed averages gradients over
ranks and scales micro-batch losses by 1 / gradient_accumulation_steps).
"""

from __future__ import annotations

import copy
import os
import socket
import zlib
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn

from diffrl.algorithms.awm import awm_log_prob, awm_loss, ema_decay, ema_update_, velocity_kl
from diffrl.algorithms.flow_matching import stratified_timesteps
from diffrl.models.adapter import select_conditioning
from diffrl.models.registry import apply_lora, build_model, load_trainable_state_dict, trainable_state_dict
from diffrl.workers.batch import RolloutBatch


def largest_divisor_at_most(n: int, limit: int) -> int:
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


class LearnerWorker:
    def __init__(
        self,
        rank: int,
        world_size: int,
        rendezvous: str,
        model_cfg: dict,
        learner_cfg: dict,
        samples_per_rank: int,
        num_threads: int = 1,
    ) -> None:
        self.rank, self.world_size, self.rendezvous = rank, world_size, rendezvous
        self.model_cfg, self.cfg = model_cfg, learner_cfg
        self.samples_per_rank = samples_per_rank
        self.num_threads = num_threads
        self.version = 0
        self.engine = None

    # ----------------------------------------------------------------------------------------------- set-up
    def setup(self) -> None:
        torch.set_num_threads(self.num_threads)
        # Ranks meet through a file store (`rendezvous`, a file:// URL on this node) instead of a TCP store, whose
        # server would listen on every interface; gloo/NCCL connections are pinned to the loopback interface.
        os.environ.update(RANK=str(self.rank), LOCAL_RANK="0", WORLD_SIZE=str(self.world_size))
        loopback = next((name for _, name in socket.if_nameindex() if name.startswith("lo")), "lo")  # lo0 on macOS
        os.environ.setdefault("GLOO_SOCKET_IFNAME", loopback)
        os.environ.setdefault("NCCL_SOCKET_IFNAME", loopback)
        import deepspeed
        import deepspeed.ops

        on_gpu = torch.cuda.is_available()
        if not on_gpu:
            # DeepSpeed JIT-compiles a shared-memory all-reduce for CPU inference on first init (about 2 minutes);
            # training over gloo never uses it, so skip the build.
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo", auto_mpi_discovery=False, verbose=False,
                                   init_method=self.rendezvous, rank=self.rank, world_size=self.world_size)

        self.model = build_model(self.model_cfg["name"], self.model_cfg["path"])
        self.model.requires_grad_(False)
        lora = self.model_cfg["lora"]
        if lora["enabled"]:
            apply_lora(self.model, lora["rank"], lora["alpha"], lora["target_modules"])
            self.reference = None  # the base model is the denoiser with adapters disabled
        else:
            self.reference = copy.deepcopy(self.model.denoiser).eval()
            self.model.denoiser.requires_grad_(True)
        params = [p for p in self.model.denoiser.parameters() if p.requires_grad]
        awm = self.cfg["awm"]

        rows = self.samples_per_rank * awm["num_timesteps"]
        micro = largest_divisor_at_most(rows, self.cfg["micro_batch_size"])
        ds_config = {
            "train_micro_batch_size_per_gpu": micro,
            "gradient_accumulation_steps": rows // micro,
            "train_batch_size": rows * self.world_size,
            "gradient_clipping": self.cfg["grad_clip"],
            "zero_optimization": {"stage": self.cfg["zero_stage"]},
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 10**9,
        }
        optimizer = torch.optim.AdamW(
            params, lr=self.cfg["lr"], betas=tuple(self.cfg["betas"]), weight_decay=self.cfg["weight_decay"]
        )
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=self.model.denoiser, optimizer=optimizer, config=ds_config
        )
        self.micro_batch = micro
        self._params = params
        self.device = self.engine.device
        self.model.text_encoder.to(self.device)
        if self.reference is not None:
            self.reference.to(self.device)
        self.ema_model, self.ema = None, None
        if awm["ema_beta"] > 0:
            self.ema_model = copy.deepcopy(self.engine.module).eval().requires_grad_(False)
            ema_named = dict(self.ema_model.named_parameters())
            self.ema = [ema_named[n] for n, p in self.engine.module.named_parameters() if p.requires_grad]

    # ------------------------------------------------------------------------------------------- training
    @contextmanager
    def _reference(self) -> Iterator[nn.Module]:
        if self.reference is not None:
            yield self.reference
        else:
            with self.engine.module.disable_adapter():
                yield self.engine.module

    def _rows(self, batch: RolloutBatch, step: int) -> dict[str, torch.Tensor]:
        """Expand samples into (sample, timestep) rows with per-sample seeded timesteps and noise."""
        awm = self.cfg["awm"]
        ts, eps = [], []
        for seed, prompt in zip(batch.seeds.tolist(), batch.prompts):
            # Shared noise gives every sample of a prompt's group the same timesteps and noise (common random
            # numbers), so regions the samples share get nearly cancelling gradients instead of independent noise.
            key = zlib.crc32(prompt.encode()) if awm["shared_noise"] else seed
            gen = torch.Generator().manual_seed(key * 7919 + step)
            ts.append(stratified_timesteps(batch.grid, awm["num_timesteps"], gen))
            eps.append(torch.randn((awm["num_timesteps"], *batch.samples.shape[1:]), generator=gen))
        t = torch.stack(ts).float().reshape(-1)
        sample_index = torch.arange(len(batch)).repeat_interleave(awm["num_timesteps"])
        x0 = batch.samples[sample_index]
        noise = torch.cat(eps)
        t_b = t.view(-1, 1, 1, 1)
        rows = {"t": t, "x0": x0, "eps": noise, "x_t": (1 - t_b) * x0 + t_b * noise,
                "advantages": batch.advantages.float()[sample_index]}
        return {"index": sample_index, **{key: value.to(self.device) for key, value in rows.items()}}

    def update(self, batch: RolloutBatch, step: int) -> dict[str, float]:
        """One optimizer step of AWM on this rank's shard; returns rank-local metrics (the controller averages)."""
        awm = self.cfg["awm"]
        with torch.no_grad():
            prompts = sorted(set(batch.prompts))
            encoded = self.model.encode_prompts(prompts)
            lookup = {p: i for i, p in enumerate(prompts)}
            cond = select_conditioning(encoded, torch.tensor([lookup[p] for p in batch.prompts]))
        rows = self._rows(batch, step)
        totals = {"loss": 0.0, "policy_loss": 0.0, "kl": 0.0, "ema_kl": 0.0, "mse": 0.0}
        count = len(rows["t"])
        for start in range(0, count, self.micro_batch):
            sl = slice(start, start + self.micro_batch)
            row_cond = select_conditioning(cond, rows["index"][sl])
            x_t, t = rows["x_t"][sl], rows["t"][sl]
            v = self.engine(x_t, t, row_cond)
            log_prob = awm_log_prob(v, rows["x0"][sl], rows["eps"][sl], t, huber_p=awm["huber_p"])
            policy = awm_loss(log_prob, rows["advantages"][sl].double())
            loss = policy.float()
            with torch.no_grad(), self._reference() as reference:
                v_ref = reference(x_t, t, row_cond)
            kl = velocity_kl(v, v_ref).mean()
            loss = loss + awm["kl_beta"] * kl
            if self.ema is not None:
                with torch.no_grad():
                    v_ema = self.ema_model(x_t, t, row_cond)
                ema_kl = velocity_kl(v, v_ema).mean()
                loss = loss + awm["ema_beta"] * ema_kl
                totals["ema_kl"] += float(ema_kl.detach()) * len(t) / count
            self.engine.backward(loss)
            if self.engine.is_gradient_accumulation_boundary():
                grad_norm = self._grad_norm()
            self.engine.step()
            mse = ((v.detach() - (rows["eps"][sl] - rows["x0"][sl])) ** 2).flatten(1).mean(1).mean()
            for key, value in (("loss", loss), ("policy_loss", policy), ("kl", kl), ("mse", mse)):
                totals[key] += float(value.detach()) * len(t) / count
        if self.ema is not None:
            ema_update_(self.ema, self._params, ema_decay(step, awm["ema_rate"], awm["ema_max_decay"]))
        self.version += 1
        totals["grad_norm"] = float(self.engine.get_global_grad_norm() or grad_norm)
        return totals

    def _grad_norm(self) -> float:
        """Norm of the reduced gradients before clipping (ZeRO-1/2 report theirs through the engine instead)."""
        grads = [p.grad for p in self._params if p.grad is not None]
        return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))) if grads else 0.0

    def get_weights(self) -> tuple[dict[str, torch.Tensor], int]:
        """Trainable tensors (adapters only under LoRA) and their version, for the rollout workers."""
        return trainable_state_dict(self.engine.module), self.version

    def state_dict(self) -> dict[str, Any]:
        return {"weights": trainable_state_dict(self.engine.module), "version": self.version}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_trainable_state_dict(self.engine.module, state["weights"])
        self.version = int(state["version"])

    def health(self) -> dict[str, Any]:
        return {"ready": self.engine is not None, "rank": self.rank, "version": self.version}
