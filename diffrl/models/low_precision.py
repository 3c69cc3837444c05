"""Low-precision inference copies of a denoiser for Sol-RL's exploration workers.

`quantize_linears` gives the linear layers of a module (in place) an `NVFP4Forward`, which fake-quantizes both the
weight and the activation with the NVFP4 numerics of `diffrl.algorithms.nvfp4` (E2M1 values, E4M3 scale per 16
elements along the reduction dimension, FP32 per-tensor scale) and multiplies in float32. The distribution shift of
NVFP4 is therefore real on any device; only the speed-up needs NVFP4 tensor cores. LoRA layers (peft) are
quantized with their adapters merged into the weight (W + scale * B A), as Sol-RL merges the learner's LoRA into
its inference copies. Skip rules keep embedders, the final projection and small layers in full precision, and a
per-layer report says what was quantized and why not.

On GPUs, `te_recipe()` picks transformer-engine's recipe by compute capability: NVFP4 block scaling on 10.x
(`NVFP4BlockScaling`, the true NVFP4 recipe, not per-tensor delayed scaling) and FP8 current scaling on 9.x; other
devices get a clear error naming what is missing.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from diffrl.algorithms.nvfp4 import fake_quantize

# Embedders, the time/text conditioning path and the output projection stay in full precision by default: they
# are small and sensitive (the same layers NVIDIA's and Sol-RL's FP4 recipes keep in BF16).
DEFAULT_SKIP = (r"(^|\.)pos_embed", r"time_text_embed", r"context_embedder", r"(^|\.)proj_out", r"norm_out",
                r"caption_projection", r"x_embedder", r"time_embed")


@dataclass
class LayerReport:
    name: str
    in_features: int
    out_features: int
    quantized: bool
    reason: str


class NVFP4Forward:
    """The forward of a fake-NVFP4 linear layer, installed on the layer instance (an nn.Linear, or a peft LoRA Linear
    whose adapters are merged), so parameter names and weight sync stay exactly as before.

    The quantized weight is cached and recomputed whenever a weight tensor changes in place (weight sync), using
    the tensors' version counters.
    """

    def __init__(self, layer: nn.Module) -> None:
        self.layer = layer
        self._cache: Tensor | None = None
        self._versions: tuple[int, ...] = ()

    def _tensors(self) -> list[Tensor]:
        layer = self.layer
        if _is_lora_linear(layer):
            tensors = [layer.base_layer.weight]
            for name in layer.active_adapters:
                if name in layer.lora_A:
                    tensors += [layer.lora_A[name].weight, layer.lora_B[name].weight]
            return tensors
        return [layer.weight]

    def effective_weight(self) -> Tensor:
        """The weight the layer applies: the linear weight, plus scale * B A for each active LoRA adapter."""
        layer = self.layer
        if not _is_lora_linear(layer):
            return layer.weight.float()
        weight = layer.base_layer.weight.float()
        for name in layer.active_adapters:
            if name in layer.lora_A:
                delta = layer.lora_B[name].weight.float() @ layer.lora_A[name].weight.float()
                weight = weight + layer.scaling[name] * delta
        return weight

    def quantized_weight(self) -> Tensor:
        tensors = self._tensors()
        versions = tuple(t._version for t in tensors)
        if self._cache is None or versions != self._versions or self._cache.device != tensors[0].device:
            with torch.no_grad():
                self._cache = fake_quantize(self.effective_weight())
            self._versions = versions
        return self._cache

    def __call__(self, x: Tensor, *args, **kwargs) -> Tensor:
        bias = getattr(self.layer, "base_layer", self.layer).bias
        out = F.linear(fake_quantize(x.float()), self.quantized_weight(), None if bias is None else bias.float())
        return out.to(x.dtype)


def _is_lora_linear(module: nn.Module) -> bool:
    return hasattr(module, "base_layer") and hasattr(module, "lora_A") and isinstance(module.base_layer, nn.Linear)


def quantize_linears(
    module: nn.Module, skip: Sequence[str] = DEFAULT_SKIP, min_features: int = 16
) -> list[LayerReport]:
    """Give every eligible linear layer of `module` the NVFP4 forward, in place; returns the per-layer report.

    A layer is skipped when its qualified name matches a `skip` regex, or when in_features or out_features is below
    `min_features` (a 16-element block would be mostly padding).
    """
    patterns = [re.compile(p) for p in skip]
    report: list[LayerReport] = []
    targets: list[tuple[str, nn.Module]] = []
    for name, child in module.named_modules():
        if _is_lora_linear(child):
            targets.append((name, child))
        elif isinstance(child, nn.Linear) and not any(name.startswith(t + ".") for t, _ in targets):
            targets.append((name, child))
    for name, layer in targets:
        linear = layer.base_layer if _is_lora_linear(layer) else layer
        reason = _skip_reason(name, linear, patterns, min_features)
        report.append(LayerReport(name, linear.in_features, linear.out_features, not reason, reason or "nvfp4"))
        if not reason:
            layer.forward = NVFP4Forward(layer)
    return report


def _skip_reason(name: str, linear: nn.Linear, patterns: list[re.Pattern], min_features: int,
                 whole_blocks: bool = False) -> str:
    """Why a linear layer stays in full precision ("" when it is quantized): a skip rule or its size. Emulation pads
    partial 16-element blocks; transformer-engine needs whole blocks (`whole_blocks`)."""
    if any(p.search(name) for p in patterns):
        return "skip rule"
    if min(linear.in_features, linear.out_features) < min_features:
        return f"smaller than {min_features} features"
    if whole_blocks and linear.in_features % 16:
        return "in_features not a multiple of 16"
    return ""


def is_quantized(layer: nn.Module) -> bool:
    return isinstance(layer.__dict__.get("forward"), NVFP4Forward)


def report_table(report: list[LayerReport]) -> list[dict]:
    return [asdict(r) for r in report]


def te_recipe(precision: str = "nvfp4"):
    """transformer-engine's recipe for `precision` on this GPU: NVFP4BlockScaling on compute capability 10.x, FP8
    (Float8CurrentScaling) on 9.x. Raises RuntimeError naming what is missing elsewhere."""
    if not torch.cuda.is_available():
        raise RuntimeError("transformer-engine NVFP4/FP8 needs a CUDA GPU; on CPU the NVFP4 copy is emulated "
                           "(rollout.quant_backend: emulated)")
    try:
        from transformer_engine.common import recipe
    except ImportError as err:
        raise RuntimeError("transformer-engine is not installed: `pip install diffrl[gpu]` on a CUDA machine "
                           f"({err})") from None
    major, minor = torch.cuda.get_device_capability()
    if precision == "nvfp4":
        if major != 10:
            raise RuntimeError(f"NVFP4 block scaling needs compute capability 10.x (Blackwell); this GPU is "
                               f"{major}.{minor} — use rollout.precision: fp8 on 9.x or the emulated backend")
        return recipe.NVFP4BlockScaling()
    if precision == "fp8":
        if major < 9:
            raise RuntimeError(f"FP8 needs compute capability 9.x or newer; this GPU is {major}.{minor}")
        return recipe.Float8CurrentScaling()
    raise ValueError(f"te_recipe: precision must be nvfp4 or fp8, got {precision!r}")


def te_convert_linears(module: nn.Module, skip: Sequence[str] = DEFAULT_SKIP, min_features: int = 16) -> list[LayerReport]:
    """Swap eligible nn.Linear layers for transformer_engine.pytorch.Linear with the same weights (GPU only); run
    the model under `transformer_engine.pytorch.fp8_autocast(enabled=True, fp8_recipe=te_recipe(...))`."""
    import transformer_engine.pytorch as te

    patterns = [re.compile(p) for p in skip]
    report = []
    for name, layer in list(module.named_modules()):
        if not isinstance(layer, nn.Linear):
            continue
        reason = _skip_reason(name, layer, patterns, min_features, whole_blocks=True)
        report.append(LayerReport(name, layer.in_features, layer.out_features, not reason, reason or "te"))
        if reason:
            continue
        te_layer = te.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                             params_dtype=layer.weight.dtype, device=layer.weight.device)
        with torch.no_grad():
            te_layer.weight.copy_(layer.weight)
            if layer.bias is not None:
                te_layer.bias.copy_(layer.bias)
        parent_name, _, attr = name.rpartition(".")
        setattr(module.get_submodule(parent_name) if parent_name else module, attr, te_layer)
    return report
