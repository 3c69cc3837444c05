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


def prompts_by_tag(prompts: list[dict], tags: tuple[str, ...], keep=lambda entry: True) -> list[list[int]]:
    """Indices of `prompts` grouped by tag (in `tags` order), entries failing `keep` left out, empty groups dropped."""
    groups = [[i for i, p in enumerate(prompts) if p["tag"] == tag and keep(p)] for tag in tags]
    return [group for group in groups if group]


def draw_by_tag(rng, groups: list[list[int]], size: int) -> list[int]:
    """`size` prompt indices: a tag drawn uniformly, then a prompt of it (tags with few prompts are not starved)."""
    tags = rng.integers(0, len(groups), size=size)
    return [int(rng.choice(groups[t])) for t in tags]
