"""NVFP4 numerics: E2M1 values, one E4M3 scale per 16 consecutive elements, one FP32 scale per tensor.

Format facts (NVIDIA Blackwell NVFP4; torchao prototype/mx_formats/nvfp4_tensor.py): E2M1 magnitudes {0, 0.5, 1, 1.5, 2, 3, 4, 6} with a sign bit,
round to nearest even, saturating at 6; each block of 16 elements along the last (reduction) dimension shares a
scale stored as FP8 E4M3 (max 448); a per-tensor FP32 scale amax / (448 * 6) lets the block scales use the whole
E4M3 range. The scale arithmetic follows the public reference quantizer (torchao.prototype.mx_formats
nvfp4_tensor.nvfp4_quantize, two-level path) operation for operation, so results agree bit for bit with it:

    block = amax(|x_block|) / 6;  s8 = e4m3(clamp(block / s_tensor, 2^-6, 448))
    q = e2m1(clamp(x * ((1 / s_tensor) / s8), -6, 6));  x_hat = q * (s_tensor * s8)

A tensor whose last dimension is not a multiple of 16 raises a ValueError unless `pad=True`, which pads each row
with zeros to the next multiple of 16 (zeros never change a block's amax) and crops the result back. An all-zero
tensor gets per-tensor scale 1 (its codes are all zero either way); the reference would divide by zero there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

BLOCK = 16
E2M1_MAX = 6.0
E4M3_MAX = 448.0
E4M3_TINY = 2.0**-6  # smallest normal E4M3 value; block scales are clamped to it
E2M1_VALUES = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


@dataclass
class NVFP4Tensor:
    """Quantized tensor: codes (uint8, sign bit 3, magnitude index bits 0-2), E4M3 block scales, FP32 tensor scale."""

    codes: Tensor  # uint8 [..., K]
    block_scales: Tensor  # float8_e4m3fn [..., K / 16]
    tensor_scale: Tensor  # float32 scalar
    shape: tuple[int, ...]  # the original shape (before padding)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        values = e2m1_decode(self.codes)
        k = values.shape[-1]
        blocks = values.reshape(*values.shape[:-1], k // BLOCK, BLOCK)
        scale = self.tensor_scale * self.block_scales.to(torch.float32)
        out = (blocks * scale.unsqueeze(-1)).reshape(values.shape)
        return out[..., : self.shape[-1]].to(dtype)


def e2m1_round(x: Tensor) -> Tensor:
    """Round float32 values in [-6, 6] to the nearest E2M1 value, ties to even (the value whose mantissa bit is 0).

    The E2M1 grid has spacing 0.5 on [0, 2), 1 on [2, 4) and 2 on [4, 6]; dividing by the spacing (a power of two,
    so exact) makes the grid the integers, whose round-half-to-even (torch.round) picks exactly the even-mantissa
    neighbour.
    """
    magnitude = x.abs()
    step = torch.where(magnitude < 2.0, 0.5, torch.where(magnitude < 4.0, 1.0, torch.full_like(magnitude, 2.0)))
    return torch.copysign(torch.round(magnitude / step) * step, x)


def e2m1_encode(values: Tensor) -> Tensor:
    """E2M1 values (already on the grid) to 4-bit codes in uint8: sign in bit 3, magnitude index in bits 0-2."""
    magnitude = values.abs()
    index = torch.searchsorted(E2M1_VALUES.to(values.device), magnitude.contiguous())
    sign = torch.signbit(values).to(torch.uint8) << 3
    return sign | index.to(torch.uint8)


def e2m1_decode(codes: Tensor) -> Tensor:
    magnitude = E2M1_VALUES.to(codes.device)[(codes & 7).long()]
    return torch.where((codes & 8) > 0, -magnitude, magnitude)


def tensor_scale_for(x: Tensor) -> Tensor:
    """The per-tensor FP32 scale amax / (448 * 6) (1 for an all-zero tensor)."""
    amax = x.detach().abs().amax().to(torch.float32)
    return torch.where(amax > 0, amax / (E4M3_MAX * E2M1_MAX), torch.ones_like(amax))


def _scaled_blocks(x: Tensor, tensor_scale: Tensor | None, pad: bool) -> tuple[Tensor, Tensor, Tensor, tuple]:
    """The shared first half of quantization: x / scales in [-6, 6] as [..., K / 16, 16] blocks (before E2M1
    rounding), the E4M3 block scales and the FP32 tensor scale."""
    if x.dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"NVFP4 quantizes float32 or bfloat16 tensors, got {x.dtype}")
    if x.ndim == 0:
        raise ValueError("NVFP4 quantizes tensors with at least one dimension")
    shape = tuple(x.shape)
    k = shape[-1]
    if k % BLOCK:
        if not pad:
            raise ValueError(
                f"NVFP4 blocks are 16 consecutive elements along the last dimension; its size {k} is not a multiple "
                f"of 16 (pass pad=True to zero-pad rows to {k + BLOCK - k % BLOCK})"
            )
        x = torch.nn.functional.pad(x, (0, BLOCK - k % BLOCK))
    if not torch.isfinite(x).all():
        raise ValueError("NVFP4 quantization needs finite values (found NaN or inf)")
    data = x.float()
    scale = tensor_scale_for(data) if tensor_scale is None else tensor_scale.to(torch.float32)
    blocks = data.reshape(*data.shape[:-1], data.shape[-1] // BLOCK, BLOCK)
    block_amax = torch.amax(blocks.abs(), dim=-1)
    block_scale = block_amax / E2M1_MAX
    scale_e4m3 = torch.clamp(block_scale / scale, min=E4M3_TINY, max=E4M3_MAX).to(torch.float8_e4m3fn)
    # In a tensor whose amax is below ~4e-33 a block's reciprocal overflows; kept finite, its zeros stay zeros
    # (0 * inf would be NaN) and its normal values still saturate at +-6.
    reciprocal = torch.clamp((1.0 / scale) / scale_e4m3.to(torch.float32), max=torch.finfo(torch.float32).max)
    return torch.clamp(blocks * reciprocal.unsqueeze(-1), -E2M1_MAX, E2M1_MAX), scale_e4m3, scale, shape


def quantize(x: Tensor, tensor_scale: Tensor | None = None, pad: bool = False) -> NVFP4Tensor:
    """Quantize float32/bfloat16 `x` ([..., K]) to NVFP4 along its last dimension."""
    scaled, scale_e4m3, scale, shape = _scaled_blocks(x, tensor_scale, pad)
    codes = e2m1_encode(e2m1_round(scaled.reshape(*scaled.shape[:-2], -1)))
    return NVFP4Tensor(codes, scale_e4m3, scale, shape)


def fake_quantize(x: Tensor, pad: bool = True) -> Tensor:
    """quantize then dequantize, in x's dtype: what an NVFP4 matmul input looks like.

    Bit for bit `quantize(x, pad=pad).dequantize(x.dtype)`, without the round trip through 4-bit codes: the rounded
    values are the E2M1 values the codes decode to, multiplied by the same tensor * block scale product. About 3x
    cheaper on CPU, which matters because every exploration step fake-quantizes every linear layer's input.
    """
    scaled, scale_e4m3, scale, shape = _scaled_blocks(x, None, pad)
    values = e2m1_round(scaled) * (scale * scale_e4m3.to(torch.float32)).unsqueeze(-1)
    return values.reshape(*values.shape[:-2], -1)[..., : shape[-1]].to(x.dtype)
