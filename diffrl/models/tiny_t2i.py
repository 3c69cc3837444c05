"""The built-in tiny text-to-image flow model: a diffusers SD3 transformer in pixel space plus a small CLIP text
encoder with a word-level tokenizer, all built from small configs (no download).

Design for learnability on CPU (the project's second shapes-world probe, docs/architecture.md): one transformer token per cell of the shapes world
(patch size = cell size), and the network predicts the clean image x0, converted to a velocity for sampling and for
the losses: with x_t = (1 - t) x0 + t eps, v = (x_t - x0_hat) / t.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from diffusers import SD3Transformer2DModel  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast  # noqa: E402

from diffrl.models.adapter import Conditioning, ModelAdapter  # noqa: E402
from diffrl.models.shipped import resolve_weights  # noqa: E402

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]

DEFAULT_CONFIG: dict[str, Any] = {
    "image_size": 30,
    "patch_size": 10,
    "num_layers": 4,
    "num_heads": 4,
    "head_dim": 32,
    "text_dim": 128,
    "text_layers": 2,
    "max_tokens": 16,
    "min_t": 1e-3,
}


def build_tokenizer(vocab: Sequence[str]) -> PreTrainedTokenizerFast:
    """A lower-case whitespace word-level tokenizer over `vocab`, built locally with the `tokenizers` library."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    words = list(SPECIAL_TOKENS) + [w for w in vocab if w not in SPECIAL_TOKENS]
    table = {word: index for index, word in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab=table, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", table["[BOS]"]), ("[EOS]", table["[EOS]"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]", eos_token="[EOS]"
    )


class TinyDenoiser(nn.Module):
    """SD3 transformer predicting x0; forward returns the flow-matching velocity."""

    def __init__(self, transformer: SD3Transformer2DModel, min_t: float) -> None:
        super().__init__()
        self.transformer = transformer
        self.min_t = min_t

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        return self.transformer(
            hidden_states=x_t,
            encoder_hidden_states=cond["tokens"],
            pooled_projections=cond["pooled"],
            timestep=t * 1000.0,
        ).sample

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        x0_hat = self.predict_x0(x_t, t, cond)
        t_b = t.clamp_min(self.min_t).view(-1, *([1] * (x_t.dim() - 1))).to(x_t.dtype)
        return (x_t - x0_hat) / t_b


class TinyT2I(ModelAdapter):
    """The built-in pixel-space text-to-image model (about 2.6M parameters)."""

    def __init__(self, vocab: Sequence[str], config: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.config = {**DEFAULT_CONFIG, **(config or {})}
        self.vocab = list(vocab)
        c = self.config
        self.tokenizer = build_tokenizer(self.vocab)
        special = {name: self.tokenizer.convert_tokens_to_ids(name) for name in SPECIAL_TOKENS}
        self.text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(self.tokenizer),
                hidden_size=c["text_dim"],
                intermediate_size=2 * c["text_dim"],
                num_hidden_layers=c["text_layers"],
                num_attention_heads=4,
                max_position_embeddings=c["max_tokens"],
                pad_token_id=special["[PAD]"],
                bos_token_id=special["[BOS]"],
                eos_token_id=special["[EOS]"],
            )
        )
        grid = c["image_size"] // c["patch_size"]
        transformer = SD3Transformer2DModel(
            sample_size=c["image_size"],
            patch_size=c["patch_size"],
            in_channels=3,
            out_channels=3,
            num_layers=c["num_layers"],
            attention_head_dim=c["head_dim"],
            num_attention_heads=c["num_heads"],
            joint_attention_dim=c["text_dim"],
            caption_projection_dim=c["num_heads"] * c["head_dim"],
            pooled_projection_dim=c["text_dim"],
            pos_embed_max_size=grid,
        )
        self.denoiser = TinyDenoiser(transformer, c["min_t"])
        self.sample_shape = (3, c["image_size"], c["image_size"])

    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        """Token states and pooled state of the CLIP text encoder (callers choose no_grad or not)."""
        batch = self.tokenizer(
            list(prompts), padding="max_length", max_length=self.config["max_tokens"], truncation=True,
            return_tensors="pt",
        )
        out = self.text_encoder(input_ids=batch["input_ids"].to(self.text_encoder.device))
        return {"tokens": out.last_hidden_state, "pooled": out.pooler_output}

    def decode(self, samples: torch.Tensor) -> np.ndarray:
        images = ((samples.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return images.permute(0, 2, 3, 1).cpu().numpy()

    def encode_images(self, images: np.ndarray) -> torch.Tensor:
        """The tiny model samples in pixel space: uint8 to [-1, 1] (`decode` rounds back to the same bytes)."""
        self._check_image_size(images, *self.sample_shape[1:])
        return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1

    def lora_target_modules(self) -> list[str]:
        return ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]

    def save(self, directory: str | Path) -> None:
        """Write config.json and model.safetensors (text encoder + denoiser) into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(
            json.dumps({"architecture": "tiny_t2i", "vocab": self.vocab, "config": self.config}, indent=1)
        )
        tensors = {f"text_encoder.{k}": v for k, v in self.text_encoder.state_dict().items()}
        tensors.update({f"denoiser.{k}": v for k, v in self.denoiser.state_dict().items()})
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(directory / "model.safetensors"))

    @classmethod
    def from_pretrained(cls, path: str | Path) -> TinyT2I:
        """Load from a directory written by `save`, or `builtin:NAME` for a checkpoint shipped in the package."""
        directory = resolve_weights_path(path)
        meta = json.loads((directory / "config.json").read_text())
        if meta.get("architecture") != "tiny_t2i":
            raise ValueError(f"{directory / 'config.json'}: architecture is {meta.get('architecture')!r}, "
                             "expected 'tiny_t2i'")
        model = cls(meta["vocab"], meta["config"])
        tensors = load_file(str(directory / "model.safetensors"))
        model.text_encoder.load_state_dict(
            {k.removeprefix("text_encoder."): v for k, v in tensors.items() if k.startswith("text_encoder.")}
        )
        model.denoiser.load_state_dict(
            {k.removeprefix("denoiser."): v for k, v in tensors.items() if k.startswith("denoiser.")}
        )
        return model


def resolve_weights_path(path: str | Path) -> Path:
    """`builtin:NAME` -> the package's assets/NAME; a directory otherwise. Errors name the missing path."""
    return resolve_weights(path)
