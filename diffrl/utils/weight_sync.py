"""Versioned, bucketed weight sync from learner rank 0 to the inference copies.

A learner packs its trainable tensors (only the adapters under LoRA) into a few flat buffers per dtype, at most
`bucket_mb` each, plus a layout. The payload travels as one object: through the Ray object store on Ray (put once,
read by every rollout worker, zero-copy for the flat buffers) and by reference in-process. Receivers unpack views of
the buffers and load them; nothing is sent per parameter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DEFAULT_BUCKET_MB = 64


@dataclass(frozen=True)
class TensorSlot:
    name: str
    bucket: int
    offset: int  # in elements of the bucket's dtype
    shape: tuple[int, ...]


@dataclass
class WeightPayload:
    """Flat buckets plus where each tensor lives in them; `version` counts learner updates; `target` says which
    module the tensors belong to ("denoiser", or "model": every module of the adapter)."""

    version: int
    buckets: list[torch.Tensor]
    slots: list[TensorSlot]
    target: str = "denoiser"

    @property
    def num_bytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buckets)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The named tensors, as views into the buckets (copy them before mutating)."""
        out = {}
        for slot in self.slots:
            numel = 1
            for dim in slot.shape:
                numel *= dim
            out[slot.name] = self.buckets[slot.bucket][slot.offset : slot.offset + numel].view(slot.shape)
        return out


def pack(state: dict[str, torch.Tensor], version: int, bucket_mb: float = DEFAULT_BUCKET_MB,
         target: str = "denoiser") -> WeightPayload:
    """Pack CPU tensors into flat buckets of one dtype each, at most `bucket_mb` (a larger tensor gets its own)."""
    if bucket_mb <= 0:
        raise ValueError(f"bucket_mb must be positive, got {bucket_mb}")
    limit = int(bucket_mb * 2**20)
    by_dtype: dict[torch.dtype, list[str]] = {}
    for name, tensor in state.items():
        by_dtype.setdefault(tensor.dtype, []).append(name)
    buckets: list[torch.Tensor] = []
    slots: list[TensorSlot] = []
    for names in by_dtype.values():
        pending: list[torch.Tensor] = []
        size = 0
        for name in names:
            tensor = state[name].detach().to("cpu").contiguous().reshape(-1)
            nbytes = tensor.numel() * tensor.element_size()
            if pending and size + nbytes > limit:
                buckets.append(torch.cat(pending))
                pending, size = [], 0
            slots.append(TensorSlot(name, len(buckets), size // tensor.element_size(), tuple(state[name].shape)))
            pending.append(tensor)
            size += nbytes
        if pending:
            buckets.append(torch.cat(pending))
    return WeightPayload(version=version, buckets=buckets, slots=slots, target=target)
