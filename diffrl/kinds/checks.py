"""Deep checks of a validated job, run by `--check` and before every `diffrl run` / `diffrl submit` starts anything:
the things a config class cannot see by itself — the model weights exist, every reward resolves with its kwargs,
the prompts parse and carry what the chosen rewards need. Each check returns problems as "key: message" lines."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

DIFFUSERS_FAMILIES = ("sd3", "flux", "sana")


def _hf_cached(model_id: str) -> bool:
    """Whether a Hugging Face model id is in the local cache (nothing is downloaded: HF_HUB_OFFLINE)."""
    if model_id.count("/") != 1:
        return False
    cache = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.join(os.path.expanduser("~"), ".cache", "huggingface")), "hub")
    return (Path(cache) / f"models--{model_id.replace('/', '--')}" / "snapshots").is_dir()


def model_problems(name: str, path: str | None, key: str = "model") -> list[str]:
    """Where `name`'s weights at `path` should be and are not (builtin:NAME, a local directory, or for diffusers
    families a model id in the local Hugging Face cache)."""
    if path is None:
        if name in DIFFUSERS_FAMILIES or name == "dllm":
            return [f"{key}.path: a {name} model needs weights (a local directory"
                    f"{' or a cached Hugging Face model id' if name in DIFFUSERS_FAMILIES else ''})"]
        return []
    if name in ("tiny_t2i", "scenes_pref"):
        from diffrl.models.shipped import resolve_weights

        try:
            resolve_weights(path)
        except FileNotFoundError as err:
            return [f"{key}.path: {err}"]
        return []
    if name in ("dllm", "tiny_dllm", "tiny_dllm_v2"):
        from diffrl.models.dllm.adapter import resolve_checkpoint

        try:
            resolve_checkpoint(path)
        except FileNotFoundError as err:
            return [f"{key}.path: {str(err).removeprefix('model.path: ')}"]
        return []
    if name in DIFFUSERS_FAMILIES:
        local = Path(path).expanduser()
        if local.is_dir():
            if not (local / "model_index.json").is_file():
                return [f"{key}.path: {local} is not a diffusers pipeline folder (no model_index.json)"]
            return []
        if _hf_cached(path):
            return []
        return [f"{key}.path: {path!r} is neither a local directory nor a model id in the local Hugging Face cache "
                f"(nothing is downloaded at run time: HF_HUB_OFFLINE=1)"]
    return []


def reward_problems(specs: list[Any], prompts: list[dict], local: bool = True, key: str = "reward.rewards") -> list[str]:
    """Every reward resolves (registered name, entry point, import path, file, URL syntax) with kwargs that fit its
    factory, its model directories exist (`local` only: on a cluster they are on its storage), and every prompt
    carries the metadata the reward needs."""
    from diffrl.rewards.base import RewardError, check_reward, path_problems, prompt_problems

    problems = []
    for index, spec in enumerate(specs):
        if getattr(spec, "python", None):
            continue  # it resolves in its own Python environment (e.g. a vLLM one), not in this one
        try:
            check_reward(spec.name, dict(spec.kwargs))
        except RewardError as err:
            problems.append(f"{key}.{index}.name: {err}")
            continue
        if local:
            problems += [f"{key}.{index}.{problem}" for problem in path_problems(spec.name, dict(spec.kwargs))]
        problems += [f"{key}.{index}: reward '{spec.name}': {problem}" for problem in prompt_problems(spec.name, prompts)]
    return problems


def model_check(cfg: Any, local: bool) -> list[str]:
    """Kinds whose only outside input is the model (pretrain, adversarial): its weights, where the job runs."""
    return model_problems(cfg.model.name, cfg.model.path) if local else []


def rl_problems(cfg: Any, local: bool = True) -> list[str]:
    """The RL and solver_tune kinds: model weights (`local` only), the prompt files, the rewards against them."""
    from diffrl.kinds.rl.data import prompt_splits
    from diffrl.kinds.rl.pairs import pairs_file

    problems = model_problems(cfg.model.name, cfg.model.path) if local else []
    if local and not problems:
        problems += world_size_problems(cfg.model.name, cfg.model.path, cfg.data.source)
    try:
        train, heldout = prompt_splits(cfg)
    except (OSError, ValueError) as err:
        return problems + [f"data: {err}"]
    if local and pairs_file(cfg) is not None:
        problems += pair_problems(cfg, heldout)
    return problems + reward_problems(cfg.reward.rewards, train + heldout, local)


def pair_problems(cfg: Any, heldout: list[dict]) -> list[str]:
    """Diffusion-DPO's offline pairs file parses, its images exist and share the size the model draws, and none of
    its prompts is a held-out one (training on those would inflate the held-out eval)."""
    from diffrl.kinds.rl.pairs import pair_size, read_pairs

    try:
        pairs = read_pairs(cfg.learner.diffusion_dpo.pairs)
    except ValueError as err:
        return [str(err)]
    problems = []
    leaked = sorted({p["prompt"] for p in pairs} & {h["prompt"] for h in heldout})
    if leaked:
        problems.append(f"learner.diffusion_dpo.pairs: {len(leaked)} of its prompts are held-out eval prompts "
                        f"(e.g. {leaked[0]!r}); training on them inflates the held-out eval: drop those pairs or "
                        "change the split (data.split_seed, data.eval_file)")
    size = None
    if cfg.model.name in DIFFUSERS_FAMILIES:
        size = cfg.model.resolution
    elif cfg.model.name == "tiny_t2i" and cfg.model.path is not None:
        try:
            size = tiny_image_size(cfg.model.path)
        except (OSError, ValueError):
            pass  # model_problems names a missing model
    width, height = pair_size(pairs)
    if size is not None and (width, height) != (size, size):
        problems.append(f"learner.diffusion_dpo.pairs: its images are {width}x{height}; model {cfg.model.name} "
                        f"({cfg.model.path}) draws {size}x{size}")
    return problems


def world_size_problems(name: str, path: str | None, source: str) -> list[str]:
    """A tiny_t2i model draws one embedded world's image size: refuse a model of another world's (the detector would
    fail after start)."""
    from diffrl.envs.worlds import WORLDS, world

    if name != "tiny_t2i" or path is None or source not in WORLDS:
        return []
    size, wanted = tiny_image_size(path), world(source).IMAGE_SIZE
    if size != wanted:
        return [f"model.path: {path} draws {size}x{size} images; data.source={source} needs {wanted}x{wanted} "
                f"(a model pretrained on that world)"]
    return []


def tiny_image_size(path: str) -> int:
    """The image size a built-in tiny_t2i model at `path` draws (its config.json)."""
    import json

    from diffrl.models.tiny_t2i import DEFAULT_CONFIG, resolve_weights_path

    config = json.loads((resolve_weights_path(path) / "config.json").read_text()).get("config", {})
    return config.get("image_size", DEFAULT_CONFIG["image_size"])
