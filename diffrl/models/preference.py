"""The project's own learned preference reward model for the scenes world: a PickScore-like dual encoder (Kirstain et
al., arXiv 2305.01569: CLIP image and text towers, score = scale * cosine of the L2-normalized embeddings), small
enough to train on a laptop (`configs/pretrain_scenes_pref.yaml`, `kind: pretrain` with `model.name: scenes_pref`).

- image tower: one token per 10x10 grid cell (a linear patch embedding, as the tiny text-to-image model sees the
  image), a learned position per cell, a class token and a pre-norm transformer encoder;
- text tower: a word-level vocabulary of the world's captions (commas are words: they separate bound attributes),
  learned positions, a class token and a transformer encoder;
- both project to `embed_dim`; `logit_scale` is CLIP's learned temperature (exp, capped at 100).

Weights are safetensors with a config.json; `builtin:scenes_pref` is the checkpoint the package ships.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from diffrl.models.shipped import resolve_weights

SPECIAL = ["[PAD]", "[UNK]", "[CLS]"]

DEFAULT_CONFIG: dict[str, Any] = {"image_size": 40, "patch_size": 10, "width": 64, "layers": 2, "heads": 4,
                                  "embed_dim": 64, "max_words": 24}


def words(caption: str) -> list[str]:
    return caption.lower().replace(",", " ,").split()


def caption_vocabulary(captions: Sequence[str]) -> list[str]:
    return sorted({w for c in captions for w in words(c)})


def token_table(vocab: Sequence[str]) -> dict[str, int]:
    return {w: i for i, w in enumerate(SPECIAL + [w for w in vocab if w not in SPECIAL])}


def token_ids(captions: Sequence[str], table: dict[str, int], limit: int) -> Tensor:
    """[CLS] then each caption's word ids ([UNK] for unknown words), padded to 1 + limit."""
    rows = []
    for caption in captions:
        ids = [table.get(w, 1) for w in words(caption)]
        if len(ids) > limit:
            raise ValueError(f"scenes_pref: caption {caption!r} has {len(ids)} words; the model reads {limit}")
        rows.append([2] + ids + [0] * (limit - len(ids)))
    return torch.tensor(rows, dtype=torch.long)


def _encoder(width: int, layers: int, heads: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu", batch_first=True,
                                       norm_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


class PreferenceModel(nn.Module):
    def __init__(self, vocab: Sequence[str], config: dict | None = None) -> None:
        super().__init__()
        self.config = {**DEFAULT_CONFIG, **(config or {})}
        self.vocab = list(vocab)
        c = self.config
        width, patch = c["width"], c["patch_size"]
        self.table = token_table(self.vocab)
        cells = (c["image_size"] // patch) ** 2
        self.patch = nn.Conv2d(3, width, patch, stride=patch)
        self.image_pos = nn.Parameter(torch.randn(1, cells + 1, width) * 0.02)
        self.image_cls = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.image_tower = _encoder(width, c["layers"], c["heads"])
        self.image_norm = nn.LayerNorm(width)
        self.image_proj = nn.Linear(width, c["embed_dim"], bias=False)
        self.token = nn.Embedding(len(self.table), width)
        self.text_pos = nn.Parameter(torch.randn(1, c["max_words"] + 1, width) * 0.02)
        self.text_tower = _encoder(width, c["layers"], c["heads"])
        self.text_norm = nn.LayerNorm(width)
        self.text_proj = nn.Linear(width, c["embed_dim"], bias=False)
        self.logit_scale = nn.Parameter(torch.full((1,), math.log(1 / 0.07)))  # 1-d: DeepSpeed flattens parameters

    # ------------------------------------------------------------------------------------------ inputs
    def tokenize(self, captions: Sequence[str]) -> Tensor:
        """Token ids [N, 1 + max_words]: [CLS] then the words, padded; a caption longer than max_words is an error."""
        return token_ids(captions, self.table, self.config["max_words"])

    @staticmethod
    def pixels(images: np.ndarray | Tensor) -> Tensor:
        """uint8 [N, H, W, 3] images (a reward's input) as floats [N, 3, H, W] in [-1, 1]."""
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(np.ascontiguousarray(images))
        return images.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)

    # -------------------------------------------------------------------------------------- embeddings
    def embed_images(self, x: Tensor) -> Tensor:
        """Unit embeddings [N, D] of images x [N, 3, H, W] in [-1, 1]."""
        size = self.config["image_size"]
        if tuple(x.shape[-2:]) != (size, size):
            raise ValueError(f"scenes_pref reads {size}x{size} images, got {tuple(x.shape[-2:])}")
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.image_cls.expand(len(x), -1, -1), tokens], dim=1) + self.image_pos
        out = self.image_norm(self.image_tower(tokens)[:, 0])
        return nn.functional.normalize(self.image_proj(out), dim=-1)

    def embed_texts(self, ids: Tensor) -> Tensor:
        """Unit embeddings [N, D] of token ids from `tokenize`."""
        pad = ids == 0
        out = self.text_tower(self.token(ids) + self.text_pos[:, : ids.shape[1]], src_key_padding_mask=pad)
        return nn.functional.normalize(self.text_proj(self.text_norm(out[:, 0])), dim=-1)

    def scale(self) -> Tensor:
        return self.logit_scale.exp().clamp(max=100.0)

    @torch.no_grad()
    def score(self, images: np.ndarray, captions: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Cosine similarity of each image with its caption, in [-1, 1] (PickScore's score before its scale)."""
        self.eval()
        device = next(self.parameters()).device
        out = []
        for start in range(0, len(captions), batch_size):
            x = self.pixels(images[start:start + batch_size]).to(device)
            ids = self.tokenize(captions[start:start + batch_size]).to(device)
            out.append((self.embed_images(x) * self.embed_texts(ids)).sum(-1).cpu())
        return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)

    # ------------------------------------------------------------------------------------------ storage
    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(json.dumps({"architecture": "scenes_pref", "vocab": self.vocab,
                                                           "config": self.config}, indent=1))
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()},
                  str(directory / "model.safetensors"))

    @classmethod
    def from_pretrained(cls, path: str | Path) -> PreferenceModel:
        """A directory written by `save`, or `builtin:NAME` for one the package ships."""
        directory = resolve_weights(path, "preference model weights")
        meta = json.loads((directory / "config.json").read_text())
        if meta.get("architecture") != "scenes_pref":
            raise ValueError(f"{directory / 'config.json'}: architecture is {meta.get('architecture')!r}, "
                             "expected 'scenes_pref'")
        model = cls(meta["vocab"], meta["config"])
        model.load_state_dict(load_file(str(directory / "model.safetensors")))
        return model.eval()


def fresh_preference_model(seed: int, world: str = "scenes") -> PreferenceModel:
    """A randomly initialized model over the world's caption vocabulary and image size."""
    from diffrl.envs.worlds import world as world_module

    module = world_module(world)
    torch.manual_seed(seed)
    return PreferenceModel(caption_vocabulary([p["prompt"] for p in module.all_prompts()]),
                           {"image_size": module.IMAGE_SIZE, "patch_size": module.IMAGE_SIZE // module.GRID})
