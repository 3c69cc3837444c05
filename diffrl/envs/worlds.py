"""The embedded text-to-image worlds by name: `shapes` (the demo's; `diffrl.envs.shapes`) and `scenes` (the harder
one with headroom; `diffrl.envs.scenes`). Each is a module with TAGS, IMAGE_SIZE, all_prompts(), render_prompt() and
prompt_splits(); a world names its GenEval reward, and the tiny model's vocabulary and image size follow from it."""

from __future__ import annotations

import importlib
from types import ModuleType

WORLDS = {"shapes": "diffrl.envs.shapes", "scenes": "diffrl.envs.scenes"}
REWARDS = {"shapes": "geneval_shapes", "scenes": "geneval_scenes"}
LABELS = {"shapes": "GenEval-shapes", "scenes": "GenEval-scenes"}


def world(name: str) -> ModuleType:
    if name not in WORLDS:
        raise ValueError(f"unknown world {name!r}; allowed: {sorted(WORLDS)}")
    return importlib.import_module(WORLDS[name])


def vocabulary(name: str) -> list[str]:
    """Every word of the world's captions, sorted (the tiny model's word-level vocabulary)."""
    return sorted({word for entry in world(name).all_prompts() for word in entry["prompt"].lower().split()})


def model_config(name: str) -> dict:
    """The tiny model's config overrides for the world (its image size; one token per grid cell)."""
    return {"image_size": world(name).IMAGE_SIZE}
