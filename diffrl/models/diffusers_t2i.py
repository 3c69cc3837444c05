"""Model adapters for real text-to-image flow pipelines through diffusers: SD3/SD3.5, FLUX.1 and SANA.

Weights load from a local directory or the local Hugging Face cache only (`local_files_only=True`): diffrl never
downloads at run time, and a missing model is an error that names the path. Each adapter exposes the pipeline's own
prompt encoding, a `denoiser` module that maps (x_t, t, conditioning) to the flow-matching velocity (the module the
learner trains and LoRA adapts), and VAE decoding to uint8 images for rewards.

Velocity convention (all three pipelines): x_t = (1 - t) x0 + t eps, the transformer predicts v = eps - x0, and the
Euler step is x + (sigma_next - sigma) v, as diffusers' FlowMatchEulerDiscreteScheduler (SD3, FLUX) and SANA's flow
DPM-Solver use. Timestep inputs follow each pipeline: SD3 and SANA take sigma * 1000 (SANA times its
timestep_scale), FLUX takes sigma (its pipeline divides the scheduler's timestep by 1000).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from diffrl.models.adapter import Conditioning, ModelAdapter  # noqa: E402

FAMILIES = ("sd3", "flux", "sana")
_ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]
_JOINT_ATTENTION = _ATTENTION + ["add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]


def pipeline_class(family: str) -> type:
    """The diffusers pipeline class of `family`."""
    from diffusers import FluxPipeline, SanaPipeline, StableDiffusion3Pipeline

    classes = {"sd3": StableDiffusion3Pipeline, "flux": FluxPipeline, "sana": SanaPipeline}
    if family not in classes:
        raise ValueError(f"model.name: unknown diffusers family {family!r}; allowed: {list(FAMILIES)}")
    return classes[family]


def load_pipeline(family: str, path: str, dtype: torch.dtype = torch.float32):
    """The diffusers pipeline of `family` from a local directory or the local HF cache; never downloads."""
    cls = pipeline_class(family)
    try:
        return cls.from_pretrained(path, local_files_only=True, torch_dtype=dtype)
    except (OSError, ValueError, EnvironmentError) as err:
        where = "directory" if Path(path).exists() else "local directory or cached Hugging Face model"
        raise FileNotFoundError(
            f"model.path: cannot load a {family} pipeline from {path!r}: no such {where} with complete weights "
            f"(diffrl never downloads at run time; download it beforehand, e.g. `huggingface-cli download`, or "
            f"point model.path at a local copy). Cause: {err}"
        ) from None


class _SD3Denoiser(nn.Module):
    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        dtype = self.transformer.dtype
        return self.transformer(
            hidden_states=x_t.to(dtype), timestep=(t * 1000.0).to(dtype),
            encoder_hidden_states=cond["tokens"].to(dtype), pooled_projections=cond["pooled"].to(dtype),
        ).sample


class _FluxDenoiser(nn.Module):
    """Packs [B, C, H, W] latents into FLUX's 2x2 patch tokens and back, so the rest of diffrl sees images."""

    def __init__(self, transformer: nn.Module, guidance: float) -> None:
        super().__init__()
        self.transformer = transformer
        self.guidance = guidance

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        b, c, h, w = x_t.shape
        dtype = self.transformer.dtype
        packed = x_t.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)
        img_ids = torch.zeros(h // 2, w // 2, 3, device=x_t.device)
        img_ids[..., 1] += torch.arange(h // 2, device=x_t.device)[:, None]
        img_ids[..., 2] += torch.arange(w // 2, device=x_t.device)[None, :]
        txt_ids = torch.zeros(cond["tokens"].shape[1], 3, device=x_t.device)
        guidance = None
        if self.transformer.config.guidance_embeds:  # FLUX.1-dev's distilled guidance
            guidance = torch.full((b,), self.guidance, device=x_t.device, dtype=torch.float32)
        out = self.transformer(
            hidden_states=packed.to(dtype), timestep=t.to(dtype), guidance=guidance,
            pooled_projections=cond["pooled"].to(dtype), encoder_hidden_states=cond["tokens"].to(dtype),
            txt_ids=txt_ids.to(dtype), img_ids=img_ids.reshape(-1, 3).to(dtype),
        ).sample
        return out.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


class _SanaDenoiser(nn.Module):
    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        dtype = self.transformer.dtype
        scale = self.transformer.config.timestep_scale
        return self.transformer(
            x_t.to(dtype), encoder_hidden_states=cond["tokens"].to(dtype), encoder_attention_mask=cond["mask"],
            timestep=(t * 1000.0 * scale).to(dtype),
        ).sample


class DiffusersT2I(ModelAdapter):
    """A diffusers flow pipeline seen through diffrl's ModelAdapter interface."""

    def __init__(self, family: str, pipeline, resolution: int, max_sequence_length: int,
                 guidance: float = 3.5) -> None:
        super().__init__()
        self.family = family
        self.pipeline = pipeline
        self.max_sequence_length = max_sequence_length
        factor = self.vae_scale_factor = pipeline.vae_scale_factor
        multiple = factor * (2 if family == "flux" else 1) * getattr(pipeline.transformer.config, "patch_size", 1)
        if resolution % multiple:
            raise ValueError(f"model.resolution={resolution} must be a multiple of {multiple} for {family}")
        channels = pipeline.vae.config.latent_channels
        self.sample_shape = (channels, resolution // factor, resolution // factor)
        # Registered submodules so that .to(device) moves the frozen parts too; the pipeline keeps its references.
        self.encoders = nn.ModuleList(
            m for m in (getattr(pipeline, n, None) for n in ("text_encoder", "text_encoder_2", "text_encoder_3"))
            if m is not None
        )
        self.vae = pipeline.vae
        if family == "sd3":
            self.denoiser = _SD3Denoiser(pipeline.transformer)
        elif family == "flux":
            self.denoiser = _FluxDenoiser(pipeline.transformer, guidance)
        else:
            self.denoiser = _SanaDenoiser(pipeline.transformer)
        self.requires_grad_(False)

    @classmethod
    def from_pretrained(cls, family: str, path: str, resolution: int, max_sequence_length: int,
                        dtype: torch.dtype = torch.float32, guidance: float = 3.5) -> DiffusersT2I:
        return cls(family, load_pipeline(family, path, dtype), resolution, max_sequence_length, guidance)

    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        device = self.vae.device
        prompts = list(prompts)
        if self.family == "sd3":
            embeds, _, pooled, _ = self.pipeline.encode_prompt(
                prompts, prompts, prompts, device=device, do_classifier_free_guidance=False,
                max_sequence_length=self.max_sequence_length,
            )
            return {"tokens": embeds.float(), "pooled": pooled.float()}
        if self.family == "flux":
            embeds, pooled, _ = self.pipeline.encode_prompt(
                prompts, prompts, device=device, max_sequence_length=self.max_sequence_length
            )
            return {"tokens": embeds.float(), "pooled": pooled.float()}
        embeds, mask, _, _ = self.pipeline.encode_prompt(
            prompts, do_classifier_free_guidance=False, device=device, max_sequence_length=self.max_sequence_length
        )
        return {"tokens": embeds.float(), "mask": mask}

    def decode(self, samples: torch.Tensor) -> np.ndarray:
        config = self.vae.config
        latents = samples.to(self.vae.device, self.vae.dtype) / config.scaling_factor
        if getattr(config, "shift_factor", None) is not None and self.family != "sana":
            latents = latents + config.shift_factor
        with torch.no_grad():
            images = self.vae.decode(latents, return_dict=False)[0]
        images = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return images.permute(0, 2, 3, 1).cpu().numpy()

    def encode_images(self, images: np.ndarray) -> torch.Tensor:
        """VAE-encode uint8 images (the latent distribution's mode; SANA's DC-AE gives its latent directly), then
        the inverse of `decode`'s scaling and shift."""
        factor = self.vae_scale_factor
        self._check_image_size(images, self.sample_shape[1] * factor, self.sample_shape[2] * factor)
        pixels = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
        with torch.no_grad():
            out = self.vae.encode(pixels.to(self.vae.device, self.vae.dtype))
        latents = (out.latent_dist.mode() if hasattr(out, "latent_dist") else out.latent).float()
        config = self.vae.config
        if getattr(config, "shift_factor", None) is not None and self.family != "sana":
            latents = latents - config.shift_factor
        return (latents * config.scaling_factor).cpu()

    def lora_target_modules(self) -> list[str]:
        return list(_ATTENTION if self.family == "sana" else _JOINT_ATTENTION)
