"""`diffrl export`: a finished run's weights in a form other tools load.

- `--format diffusers`: the base pipeline (the run's model.path) with the trained transformer, written with
  `save_pretrained` (LoRA runs are merged into the base weights first);
- `--format lora`: a LoRA run's adapters as `pytorch_lora_weights.safetensors`, written with the pipeline's own
  `save_lora_weights`, so `pipe.load_lora_weights(OUT)` accepts it. PEFT scales an adapter by alpha / rank, while
  diffusers loads a LoRA file with alpha = rank, so the scale is folded into lora_B and the loaded adapter computes
  exactly what the trained one did.
The run's `final.safetensors` holds the trained tensors of diffrl's denoiser wrapper (keys `transformer.*`, or PEFT
adapter keys `base_model.model.transformer.*` under LoRA).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from diffrl.platform.config import ConfigError

FAMILIES = ("sd3", "flux", "sana")
FORMATS = ("diffusers", "lora")


def _run_config(run_dir: Path):
    """The run's resolved config, validated as a config only: its rewards and prompt files played their part in the
    run and need not resolve from here."""
    from diffrl.kinds import get_kind
    from diffrl.platform.config import read_job, validate_job

    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir}: not a run directory (no config.yaml)")
    data, origins = read_job(run_dir / "config.yaml")
    cfg = validate_job(get_kind(data.get("kind", "rl")).config, data, str(run_dir / "config.yaml"), origins)
    model = getattr(cfg, "model", None)
    if model is None or model.name not in FAMILIES:
        name = getattr(model, "name", None)
        raise ConfigError(f"{run_dir}: model.name={name!r}; export writes diffusers pipelines ({', '.join(FAMILIES)}); "
                          f"a tiny_t2i run's model is runs/NAME/model (or final.safetensors) already")
    if not (run_dir / "final.safetensors").is_file():
        raise ConfigError(f"{run_dir}: no final.safetensors (the run has not finished)")
    return cfg


def _trained_model(cfg, run_dir: Path):
    """The run's model adapter with its trained weights loaded (LoRA adapters applied when the run used them)."""
    from diffrl.models.registry import apply_lora, build_model_from_config, load_trainable_state_dict

    model = build_model_from_config(cfg.model.model_dump())
    lora = cfg.model.lora
    if lora.enabled:
        apply_lora(model, lora.rank, lora.alpha, lora.target_modules)
    load_trainable_state_dict(model.denoiser, load_file(str(run_dir / "final.safetensors")))
    return model


def lora_layers(adapters: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """diffrl's PEFT adapter keys of the denoiser wrapper as the transformer's own PEFT keys, lora_B scaled by
    alpha / rank (diffusers loads a LoRA file with alpha = rank)."""
    prefix = "base_model.model.transformer."
    layers = {}
    for key, tensor in adapters.items():
        if not key.startswith(prefix):
            raise ConfigError(f"final.safetensors: unexpected LoRA key {key!r}")
        layers[key[len(prefix):]] = tensor * scale if ".lora_B." in key else tensor
    return layers


def export_run(run_dir: str | Path, fmt: str, out: str | Path, force: bool = False) -> Path:
    """Write run_dir's trained model to `out` in `fmt`; returns `out`. ConfigError for a run that cannot be
    exported that way, or an `out` that exists without `force`."""
    run_dir, out = Path(run_dir).resolve(), Path(out).resolve()
    if fmt not in FORMATS:
        raise ConfigError(f"--format: got {fmt!r}; allowed: {list(FORMATS)}")
    if out == run_dir or out in run_dir.parents:
        raise ConfigError(f"{out} holds the run directory {run_dir}; export somewhere else")
    if out.exists() and not force:
        raise ConfigError(f"{out} exists; pass --force to replace it")
    cfg = _run_config(run_dir)
    if fmt == "lora" and not cfg.model.lora.enabled:
        raise ConfigError(f"{run_dir}: --format lora needs a LoRA run (model.lora.enabled); this run fine-tuned the "
                          f"full transformer: use --format diffusers")
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    if fmt == "diffusers":
        model = _trained_model(cfg, run_dir)
        if cfg.model.lora.enabled:
            model.denoiser = model.denoiser.merge_and_unload()
            model.pipeline.transformer = model.denoiser.transformer
        model.pipeline.save_pretrained(str(staging), safe_serialization=True)
    else:  # the adapters alone: no pipeline to load
        from diffrl.models.diffusers_t2i import pipeline_class

        lora = cfg.model.lora
        layers = lora_layers(load_file(str(run_dir / "final.safetensors")), lora.alpha / lora.rank)
        pipeline_class(cfg.model.name).save_lora_weights(str(staging), transformer_lora_layers=layers,
                                                         safe_serialization=True)
    if out.is_symlink() or out.is_file():
        out.unlink()
    elif out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return out
