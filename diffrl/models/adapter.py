"""The model adapter interface every text-to-image model implements (tiny built-in, SD3.5, FLUX.1, SANA).

Workers and losses see a model only through this interface: prompts become a conditioning dict, a `denoiser` module
maps (x_t, t, conditioning) to a flow-matching velocity, and `decode` turns clean samples into uint8 images for
rewards. The denoiser is the module a learner trains (wrapped by DeepSpeed) and the module LoRA adapts.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import numpy as np
import torch
from torch import nn

Conditioning = dict[str, torch.Tensor]


def select_conditioning(cond: Conditioning, index: torch.Tensor | slice) -> Conditioning:
    """Rows `index` of every tensor of a conditioning dict."""
    return {key: value[index] for key, value in cond.items()}


def concat_conditioning(conds: Sequence[Conditioning]) -> Conditioning:
    return {key: torch.cat([cond[key] for cond in conds]) for key in conds[0]}


def guided_velocity(net, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning, guidance_scale: float = 1.0,
                    null_cond: Conditioning | None = None) -> torch.Tensor:
    """`net`'s velocity at (x_t, t), with classifier-free guidance (Ho & Salimans, arXiv 2207.12598) against
    `null_cond` (the empty prompt's encoding, one row or one per sample) when guidance_scale != 1:
    v_uncond + scale * (v_cond - v_uncond), both halves in one batched forward."""
    if guidance_scale == 1.0:
        return net(x_t, t, cond)
    if null_cond is None:
        raise ValueError("classifier-free guidance needs null_cond (the encoding of the empty prompt)")
    null = {k: v.expand(len(x_t), *v.shape[1:]) for k, v in null_cond.items()}
    both = net(torch.cat([x_t, x_t]), torch.cat([t, t]), concat_conditioning([null, cond]))
    uncond, conditional = both.chunk(2)
    return uncond + guidance_scale * (conditional - uncond)


def encode_each(model: "ModelAdapter", prompts: Sequence[str]) -> Conditioning:
    """Encode prompts one at a time, so that a prompt's encoding never depends on the batch it came in.

    Rollout workers and learners both encode this way: Flow-GRPO's on-policy importance ratio is then exactly 1,
    because the learner recomputes the rollout's log-probs from bit-identical conditioning.
    """
    return concat_conditioning([model.encode_prompts([prompt]) for prompt in prompts])


class ModelAdapter(nn.Module, ABC):
    """A text-to-image flow model seen by diffrl. Subclasses set `denoiser` and `sample_shape`."""

    denoiser: nn.Module
    sample_shape: tuple[int, ...]

    @abstractmethod
    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        """Frozen text encoding of `prompts`; row i conditions sample i."""

    @abstractmethod
    def decode(self, samples: torch.Tensor) -> np.ndarray:
        """Clean samples (model space) to uint8 images [N, H, W, 3] for rewards and grids."""

    def encode_images(self, images: np.ndarray) -> torch.Tensor:
        """uint8 images [N, H, W, 3] to clean samples in model space, the inverse of `decode` (offline preference
        pairs); adapters without an image encoder refuse."""
        raise NotImplementedError(f"{type(self).__name__} cannot encode images into samples (needed by offline "
                                  "pairs, learner.diffusion_dpo.pairs)")

    def _check_image_size(self, images: np.ndarray, height: int, width: int) -> None:
        if images.ndim != 4 or images.shape[1:] != (height, width, 3):
            raise ValueError(f"images of shape {tuple(images.shape[1:])} do not fit this model: it draws "
                             f"{height}x{width} RGB images")

    @abstractmethod
    def lora_target_modules(self) -> list[str]:
        """Default module names of `denoiser` that LoRA adapts (attention projections)."""

    def velocity(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond: Conditioning,
        guidance_scale: float = 1.0,
        null_cond: Conditioning | None = None,
    ) -> torch.Tensor:
        """Velocity at (x_t, t); with guidance_scale != 1, classifier-free guidance against `null_cond`."""
        return guided_velocity(self.denoiser, x_t, t, cond, guidance_scale, null_cond)

    def initial_noise(self, seeds: Sequence[int]) -> torch.Tensor:
        """The starting noise of each sample, a function of its seed alone (so batch splits never change it)."""
        return torch.stack(
            [torch.randn(self.sample_shape, generator=torch.Generator().manual_seed(int(seed))) for seed in seeds]
        )
