"""NVFP4 numerics agree bit for bit with the public reference quantizer (torchao's NVFP4Tensor, which runs on CPU)."""

import sys
from pathlib import Path

import pytest
import torch

from diffrl.algorithms.nvfp4 import E2M1_VALUES, e2m1_round, fake_quantize, quantize, tensor_scale_for

# `make test` installs torchao here, outside site-packages (see the Makefile: at run time it would be imported by
# transformers on every start).
sys.path.append(str(Path(__file__).resolve().parents[1] / ".venv" / "test-only"))
from torchao.prototype.mx_formats import kernels  # noqa: E402
from torchao.prototype.mx_formats import nvfp4_tensor as nvfp4_ref  # noqa: E402


def reference(x: torch.Tensor):
    scale = nvfp4_ref.per_tensor_amax_to_scale(x.abs().amax())
    ref = nvfp4_ref.NVFP4Tensor.to_nvfp4(x, per_tensor_scale=scale)
    codes = kernels.unpack_uint4(ref.qdata.contiguous().view(torch.uint8)).view(x.shape)
    return ref, codes


def cases():
    g = torch.Generator().manual_seed(0)
    normal = torch.randn(64, 128, generator=g)
    heavy = torch.randn(32, 64, generator=g) * torch.exp(4 * torch.randn(32, 64, generator=g))  # 1e-6 .. 1e6
    tiny = torch.randn(16, 32, generator=g) * 1e-30
    huge = torch.randn(16, 32, generator=g) * 1e30
    outlier = torch.randn(8, 64, generator=g)
    outlier[3, 5] = 1e4  # one block dominated by an outlier, the rest pushed to tiny block scales
    # Values on rounding boundaries of the E2M1 grid after scaling (ties must go to the even neighbour)
    ties = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0, -0.25, -0.75, -1.25, -1.75, -2.5, -3.5, -5.0,
                         -6.0]).repeat(4, 1)
    mixed_sign_zero = torch.zeros(4, 32)
    mixed_sign_zero[:, 0] = 1.0
    mixed_sign_zero[:, 1] = -1e-9
    # Exact ties: tensor amax 2688 = 448 * 6 makes the tensor scale 1 and the ties block's scale 6 / 6 = 1, so the
    # scaled values are the boundaries themselves (above, a reciprocal of 0.99999994 moves them off the ties).
    exact_ties = torch.zeros(4, 32)
    exact_ties[:, :16] = ties[0]
    exact_ties[:, 16] = 2688.0
    bf16 = torch.randn(8, 48, generator=g).to(torch.bfloat16)
    three_d = torch.randn(2, 8, 32, generator=g)
    return {"normal": normal, "heavy": heavy, "tiny": tiny, "huge": huge, "outlier": outlier, "ties": ties,
            "exact_ties": exact_ties, "mixed_sign_zero": mixed_sign_zero, "bf16": bf16, "3d": three_d}


@pytest.mark.parametrize("name", list(cases()))
def test_bit_exact_against_torchao(name):
    x = cases()[name]
    ref, ref_codes = reference(x)
    mine = quantize(x)
    assert torch.equal(mine.block_scales.view(torch.uint8), ref.scale.view(torch.uint8).view(mine.block_scales.shape))
    assert torch.equal(mine.codes, ref_codes), f"{int((mine.codes != ref_codes).sum())} codes differ"
    ours, theirs = mine.dequantize(torch.float32), ref.dequantize(torch.float32)
    assert torch.equal(ours, theirs)
    assert torch.equal(mine.tensor_scale, ref.per_tensor_scale.to(torch.float32))


@pytest.mark.parametrize("name", list(cases()))
def test_fake_quantize_is_bit_exact_against_torchao(name):
    """The fast path (no round trip through codes) gives torchao's dequantized tensor bit for bit, in x's dtype."""
    x = cases()[name]
    ref, _ = reference(x)
    ours = fake_quantize(x)
    assert ours.dtype == x.dtype
    assert torch.equal(ours.float().view(torch.int32), ref.dequantize(x.dtype).float().view(torch.int32))


def test_exact_ties_are_really_on_the_grid_boundaries():
    x = cases()["exact_ties"]
    q = quantize(x)
    assert float(q.tensor_scale) == 1.0 and torch.all(q.block_scales[:, 0].float() == 1.0)
    even = torch.tensor([0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0])  # each tie to the neighbour with mantissa bit 0
    assert torch.equal(q.dequantize()[0, :16], torch.cat([even, -even]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", ["random", "zeros", "tiny_with_zeros"])
def test_fake_quantize_matches_quantize_dequantize(name, dtype):
    """Bit for bit quantize(x, pad=True).dequantize(x.dtype), with a padded last dimension (40), an all-zero tensor
    and a tensor so small that the scale reciprocal overflows (its zeros must stay zeros, not NaN)."""
    x = {"random": torch.randn(5, 40, generator=torch.Generator().manual_seed(2)) * 3, "zeros": torch.zeros(3, 40),
         "tiny_with_zeros": torch.tensor([1e-35, 0.0, -2e-36] + [0.0] * 29).repeat(2, 1)}[name].to(dtype)
    ours, theirs = fake_quantize(x), quantize(x, pad=True).dequantize(dtype)
    assert torch.isfinite(ours).all() and ours.shape == x.shape and ours.dtype == dtype
    assert torch.equal(ours.float().view(torch.int32), theirs.float().view(torch.int32))


def test_e2m1_rounding_is_nearest_even_on_the_grid():
    x = torch.tensor([0.24, 0.25, 0.26, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 5.01, 6.0, -2.5, -0.25])
    expected = torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0, 6.0, -2.0, -0.0])
    assert torch.equal(e2m1_round(x), expected)
    assert set(e2m1_round(torch.linspace(-6, 6, 2001)).abs().unique().tolist()) <= set(E2M1_VALUES.tolist())


def test_zeros_quantize_to_zeros_with_unit_scale():
    q = quantize(torch.zeros(4, 32))
    assert float(q.tensor_scale) == 1.0 and torch.equal(q.dequantize(), torch.zeros(4, 32))


def test_rows_not_multiple_of_16_raise_or_pad():
    x = torch.randn(3, 20)
    with pytest.raises(ValueError, match="not a multiple of 16.*pad=True"):
        quantize(x)
    padded = quantize(x, pad=True)
    assert padded.codes.shape == (3, 32) and padded.dequantize().shape == (3, 20)
    # padding with zeros changes nothing in the first block: it equals quantizing those 16 columns with the same scale
    first = quantize(x[:, :16].contiguous(), tensor_scale=tensor_scale_for(x))
    assert torch.equal(padded.dequantize()[:, :16], first.dequantize())


def test_non_finite_and_wrong_dtype_raise():
    with pytest.raises(ValueError, match="finite"):
        quantize(torch.tensor([[float("nan")] * 16]))
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        quantize(torch.zeros(2, 16, dtype=torch.float64))


def test_fake_quantize_error_is_bounded():
    x = torch.randn(64, 256, generator=torch.Generator().manual_seed(1))
    y = fake_quantize(x)
    rel = (y - x).norm() / x.norm()
    assert 0.0 < rel < 0.15  # NVFP4 keeps about 1.5 significant bits per element
