"""Checkpoints the package ships (`builtin:NAME` -> diffrl/models/assets/NAME) and the recipe that rebuilds each, so
a missing one is named with the command that makes it. Every model and reward that takes `builtin:` resolves here."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).parent / "assets"
RECIPES = {
    "shapes_base": "diffrl pretrain-shapes",
    "shapes_cm": "diffrl run configs/adversarial_consistency_shapes.yaml",
    "scenes_base": "diffrl run configs/pretrain_scenes.yaml, then configs/pretrain_scenes_stage2.yaml",
    "scenes_pref": "diffrl run configs/pretrain_scenes_pref.yaml",
    "sorting_dllm": "diffrl run configs/pretrain_dllm.yaml",
    "sorting_dllm_v2": "diffrl run configs/pretrain_dllm_v2.yaml",
    "sorting_dllm_rl_base": "diffrl run configs/pretrain_dllm_rl_base.yaml",
}


def shipped_directory(path: str | Path) -> Path:
    """`builtin:NAME` -> the package's assets/NAME; any other value is a directory of its own."""
    text = str(path)
    return ASSETS / text.removeprefix("builtin:") if text.startswith("builtin:") else Path(text).expanduser()


def missing_hint(path: str | Path) -> str:
    """' (build it with `RECIPE`)' for a builtin name with a recipe, else ''."""
    recipe = RECIPES.get(str(path).removeprefix("builtin:")) if str(path).startswith("builtin:") else None
    return f" (build it with `{recipe}`)" if recipe else ""


def resolve_weights(path: str | Path, what: str = "model weights",
                    required: tuple[str, ...] = ("config.json", "model.safetensors")) -> Path:
    """The directory of `path` holding every `required` file; the error names the first missing one."""
    directory = shipped_directory(path)
    for name in required:
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{what} not found: {directory / name} is missing{missing_hint(path)}")
    return directory
