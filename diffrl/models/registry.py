"""Building a model adapter from a job's model section, and applying LoRA to its denoiser."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from diffrl.models.adapter import ModelAdapter


MODEL_NAMES = ("tiny_t2i", "sd3", "flux", "sana", "dllm", "tiny_dllm", "tiny_dllm_v2", "scenes_pref")


def build_model(name: str, path: str | None, seed: int = 0, **options: Any) -> ModelAdapter | Any:
    """The adapter `name` with weights from `path`; `path=None` builds the tiny model with random weights from
    `seed` (tests), for the embedded world `world` ("shapes" or "scenes": its vocabulary and image size). Diffusers families (sd3, flux, sana) take `resolution`, `max_sequence_length`, `dtype` ("fp32" or
    "bf16") and `guidance` (FLUX.1-dev's distilled guidance) from the model config. Masked-diffusion LMs ("dllm": a
    local LLaDA / Dream / Fast-dLLM v2 or native checkpoint; "tiny_dllm", "tiny_dllm_v2": the project's own, fresh
    from `seed` when `path` is None) give a `MaskedDiffusionLM`."""
    if name == "tiny_t2i":
        from diffrl.models.tiny_t2i import TinyT2I

        if path is None:
            from diffrl.envs.worlds import model_config, vocabulary

            world = options.get("world", "shapes")
            torch.manual_seed(seed)
            return TinyT2I(vocabulary(world), model_config(world))
        return TinyT2I.from_pretrained(path)
    if name in ("sd3", "flux", "sana"):
        from diffrl.models.diffusers_t2i import DiffusersT2I

        if path is None:
            raise ValueError(f"model.path: a {name} model needs a local directory or cached Hugging Face model id")
        dtype = torch.bfloat16 if options.get("dtype") == "bf16" else torch.float32
        return DiffusersT2I.from_pretrained(name, path, options.get("resolution", 512),
                                            options.get("max_sequence_length", 256), dtype,
                                            options.get("guidance", 3.5))
    if name in ("dllm", "tiny_dllm", "tiny_dllm_v2"):
        from diffrl.models.dllm.adapter import MaskedDiffusionLM
        from diffrl.models.dllm.presets import build_preset

        if path is None:
            if name == "dllm":
                raise ValueError("model.path: a dllm model needs a local checkpoint directory")
            return build_preset(name, seed)
        return MaskedDiffusionLM.from_pretrained(path)
    if name == "scenes_pref":  # the learned preference reward's dual encoder (trained by kind: pretrain)
        from diffrl.models.preference import PreferenceModel, fresh_preference_model

        return fresh_preference_model(seed) if path is None else PreferenceModel.from_pretrained(path)
    raise ValueError(f"model.name: unknown model {name!r}; allowed: {list(MODEL_NAMES)}")


def build_model_from_config(model_cfg: dict[str, Any]) -> ModelAdapter:
    """build_model from a job's `model` section (a dict, as workers receive it)."""
    options = {k: model_cfg[k] for k in ("resolution", "max_sequence_length", "dtype", "guidance", "world")
               if k in model_cfg}
    return build_model(model_cfg["name"], model_cfg["path"], model_cfg.get("seed", 0), **options)


def apply_lora(model: ModelAdapter, rank: int, alpha: float, target_modules: list[str] | None) -> None:
    """Wrap `model.denoiser` in a peft LoRA model (base weights frozen, adapters trainable)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=rank, lora_alpha=alpha, target_modules=target_modules or model.lora_target_modules(), lora_dropout=0.0
    )
    model.denoiser = get_peft_model(model.denoiser, config)


def is_lora(module: nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(module, PeftModel)


def trainable_state_dict(denoiser: nn.Module) -> dict[str, torch.Tensor]:
    """What a weight sync moves: only adapter tensors for LoRA, every denoiser tensor otherwise (detached CPU copies,
    so a CPU-only receiver can load what a GPU learner sent)."""
    if is_lora(denoiser):
        from peft import get_peft_model_state_dict

        state = get_peft_model_state_dict(denoiser)
    else:
        state = denoiser.state_dict()
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


def load_trainable_state_dict(denoiser: nn.Module, state: dict[str, Any]) -> None:
    if is_lora(denoiser):
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(denoiser, state)
        if getattr(result, "unexpected_keys", None):
            raise KeyError(f"unexpected LoRA keys in weight sync: {result.unexpected_keys[:5]}")
    else:
        denoiser.load_state_dict(state)
