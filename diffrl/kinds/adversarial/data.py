"""The adversarial job's data: the shapes world's renders (the pretraining source, `diffrl.kinds.pretrain.data`) or
a folder of images, each giving step s's minibatch deterministically from (seed, s) and a held-out real set (images
never trained on) for the Frechet distance and the robustness eval."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from diffrl.envs.shapes import render_prompt
from diffrl.kinds.adversarial.config import AdversarialJobConfig
from diffrl.kinds.pretrain.data import ShapesRenders, TrainingBatch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@dataclass
class RealSet:
    """Held-out real images (uint8 [N, H, W, 3]) with their captions and GenEval metadata (None for a folder)."""

    images: np.ndarray
    prompts: list[str]

    def x0(self) -> torch.Tensor:
        return to_model_space(self.images)


def to_model_space(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float32 [N, 3, H, W] in [-1, 1] (the built-in model's pixel space)."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0).contiguous()


class ShapesSource(ShapesRenders):
    """The shapes world; its real set renders each held-out prompt `per_prompt` times."""

    def real_set(self, per_prompt: int) -> RealSet:
        images, prompts = [], []
        for index, entry in enumerate(self.heldout):
            for j in range(per_prompt):
                images.append(render_prompt(entry, np.random.default_rng([self.seed, 1 << 20, index, j])))
                prompts.append(entry["prompt"])
        return RealSet(np.stack(images), prompts)


def list_images(path: str) -> list[Path]:
    """The image files under `path`, sorted."""
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"data.path: {path} is not a directory")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def read_captions(path: str, captions: str) -> dict[str, str]:
    """{file relative to path: prompt} from a JSON-lines captions file; every named file must exist."""
    root, out = Path(path), {}
    try:
        lines = Path(captions).read_text().splitlines()
    except OSError as err:
        raise ValueError(f"data.captions: cannot read {captions} ({err.strerror})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            out[str(entry["file"])] = str(entry["prompt"])
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"data.captions: {captions} line {number}: expected {{\"file\": ..., \"prompt\": "
                             f"...}} ({err})") from None
    missing = [name for name in out if not (root / name).is_file()]
    if missing:
        raise ValueError(f"data.captions: {captions} names files not under data.path: {missing[:3]}")
    return out


class ImageFolder:
    """Images under a directory (sorted by path, resized to `size` with bilinear filtering), the last `heldout`
    of a seeded shuffle held out; step s draws its minibatch from (seed, s) with `prompt_dropout` empty captions."""

    def __init__(self, path: str, captions: str | None, heldout: int, prompt_dropout: float, seed: int,
                 size: int) -> None:
        from PIL import Image

        root, files = Path(path), list_images(path)
        text = read_captions(path, captions) if captions else {}
        self.images = np.stack([np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR))
                                for f in files])
        self.prompts = [text.get(str(f.relative_to(root)), "") for f in files]
        order = np.random.default_rng([seed, 7]).permutation(len(files))
        self.train, self.held = order[:-heldout], order[-heldout:]
        self.seed, self.dropout = seed, prompt_dropout
        self.heldout: list[dict] = []  # no GenEval prompts: the folder has no metadata

    def batch(self, step: int, size: int) -> TrainingBatch:
        rng = np.random.default_rng([self.seed, step])
        rows = self.train[rng.integers(0, len(self.train), size=size)]
        dropped = rng.random(size) < self.dropout
        seeds = rng.integers(0, 2**62, size=size)
        captions = ["" if drop else self.prompts[r] for r, drop in zip(rows, dropped)]
        return TrainingBatch(to_model_space(self.images[rows]), captions, torch.from_numpy(seeds).long())

    def real_set(self, per_prompt: int) -> RealSet:
        return RealSet(self.images[self.held], [self.prompts[r] for r in self.held])


def build_source(cfg: AdversarialJobConfig) -> ShapesSource | ImageFolder:
    data = cfg.data
    if data.source == "shapes":
        return ShapesSource(cfg.seed, data.renders_per_prompt, data.prompt_dropout,
                            {"heldout_fraction": data.heldout_fraction, "seed": data.split_seed})
    from diffrl.models.tiny_t2i import DEFAULT_CONFIG

    return ImageFolder(data.path, data.captions, data.heldout, data.prompt_dropout, cfg.seed,
                       DEFAULT_CONFIG["image_size"])
