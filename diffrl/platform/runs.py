"""Run directories: where a run starts or resumes, what may change on resume, and the run's metric log (metrics.jsonl
always, wandb when enabled)."""

from __future__ import annotations

import json
import os
import re
import secrets
from pathlib import Path
from typing import Any

import yaml

from diffrl.platform.checkpoint import Checkpoint, CheckpointError, file_sha256, latest_checkpoint
from diffrl.platform.config import JobConfig, dump_job, input_path_mode
from diffrl.platform.reporting import MetricsLog
from diffrl.utils.atomic import atomic_write_text


class RunFinished(CheckpointError):
    """Resuming a run that already finished its steps: nothing to do (the CLI says so and exits 0)."""

def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys of nested dicts and lists (list items by index: reward.rewards.0.num_workers)."""
    if isinstance(tree, dict) and tree:
        items = tree.items()
    elif isinstance(tree, list) and tree and any(isinstance(v, (dict, list)) for v in tree):
        items = enumerate(tree)
    else:
        return {prefix[:-1]: tree}
    out: dict[str, Any] = {}
    for key, value in items:
        out.update(_flatten(value, f"{prefix}{key}."))
    return out


def _resumable(key: str, resumable: tuple[str, ...]) -> bool:
    generic = re.sub(r"\.\d+\.", ".*.", key)  # reward.rewards.0.num_workers -> reward.rewards.*.num_workers
    return any(k == p or k.startswith(p) for p in resumable for k in (key, generic))


def _same_file(old: Any, new: Any) -> bool:
    """Input files compare by content: a run staged by `diffrl submit` names its copy data/train.jsonl."""
    if not (isinstance(old, str) and isinstance(new, str)):
        return False
    try:
        return Path(old).read_bytes() == Path(new).read_bytes()
    except (OSError, TypeError):
        return False


def config_changes(saved: dict, cfg: JobConfig) -> list[str]:
    """Keys whose value differs between a run's saved config.yaml and `cfg` and that a resume may not change: all
    but the config class's RESUMABLE keys (files compare by content)."""
    old, new = _flatten(saved), _flatten(yaml.safe_load(dump_job(cfg)))
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    changed = [k for k in changed if not _same_file(old.get(k), new.get(k))]
    return [k for k in changed if not _resumable(k, cfg.RESUMABLE)]


INPUTS_FILE = "inputs.json"


def input_digests(cfg: JobConfig) -> dict[str, dict[str, str]]:
    """{key: {"path", "sha256"}} of every input file the job names (its INPUT_PATHS keys whose value is a file: a
    prompt or pair file, a file reward's FILE.py, a reward's data file; model directories are not read)."""
    out = {}
    for key, value in _flatten(yaml.safe_load(dump_job(cfg))).items():
        mode = input_path_mode(cfg.INPUT_PATHS, tuple(key.split(".")))
        if mode is None or not isinstance(value, str) or not value:
            continue
        path = Path(value.rpartition(":")[0] if mode == "reward" else value).expanduser()
        if path.is_file():
            out[key] = {"path": value, "sha256": file_sha256(path)}
    return out


def check_inputs(run_dir: Path, cfg: JobConfig) -> dict[str, dict[str, str]]:
    """The job's input digests, after refusing to resume `run_dir` when an input file the run started with (its
    inputs.json) has other content now: the resumed steps would train on other data than the checkpoint's (a
    changed path is config_changes' job)."""
    path, now = run_dir / INPUTS_FILE, input_digests(cfg)
    if not path.is_file():
        return now  # a run from before inputs were recorded
    saved = json.loads(path.read_text())
    changed = [key for key in saved.keys() & now.keys() if saved[key]["sha256"] != now[key]["sha256"]]
    if changed:
        files = ", ".join(f"{key} ({now[key]['path']})" for key in sorted(changed))
        raise CheckpointError(f"cannot resume {run_dir}: {files} changed since the run started (sha256 differs "
                              f"from {INPUTS_FILE}); restore the file, or start a new run (resume: never, or another "
                              "name)")
    return now


def write_inputs(run_dir: Path, digests: dict[str, dict[str, str]]) -> None:
    atomic_write_text(run_dir / INPUTS_FILE, json.dumps(digests, indent=1, sort_keys=True) + "\n")


def new_run_dir(cfg: JobConfig) -> Path:
    """runs/NAME, or runs/NAME_2, ... when it exists: a new run never overwrites an old one."""
    base = cfg.run_dir
    run_dir, suffix = base, 2
    while run_dir.exists():
        run_dir, suffix = base.with_name(f"{base.name}_{suffix}"), suffix + 1
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(dump_job(cfg))
    write_inputs(run_dir, input_digests(cfg))
    return run_dir


def open_run(cfg: JobConfig, must_resume: bool = False) -> tuple[Path, Checkpoint | None]:
    """The run directory and the checkpoint to continue from.

    - `must_resume` (`diffrl run --resume`): runs/NAME must hold a complete checkpoint; it is continued.
    - `resume: auto`: continue runs/NAME from its newest checkpoint if it has one; start it afresh when it has
      none and never finished (a run that died before its first checkpoint; its old metrics are kept aside as
      metrics.attemptN.jsonl); a finished run without checkpoints is left alone (a new directory is used).
    - otherwise a new directory (runs/NAME, or NAME_2, ...).
    A corrupt newest checkpoint, a config that changes keys outside the config's RESUMABLE, or an input file whose
    content changed since the run started (inputs.json), is an error before any work.
    """
    base = cfg.run_dir
    if not (must_resume or cfg.resume == "auto"):
        return new_run_dir(cfg), None
    if not base.is_dir():
        if must_resume:
            raise CheckpointError(f"--resume: there is no run directory {base} to resume")
        return new_run_dir(cfg), None
    checkpoint = latest_checkpoint(base)
    saved_path = base / "config.yaml"
    if checkpoint is None and must_resume:
        raise CheckpointError(f"--resume: {base} has no complete checkpoint (set trainer.checkpoint_every to write "
                              f"them); remove --resume to start a new run directory")
    if checkpoint is None and (base / "final.safetensors").exists():
        return new_run_dir(cfg), None  # a finished run without checkpoints: never start over on top of it
    if checkpoint is not None and checkpoint.step > cfg.trainer.steps:
        raise CheckpointError(f"cannot resume {base}: its newest checkpoint is at step {checkpoint.step}, past "
                              f"trainer.steps={cfg.trainer.steps}")
    if checkpoint is not None and checkpoint.step == cfg.trainer.steps and (base / "final.safetensors").exists():
        raise RunFinished(f"{base} already finished all {cfg.trainer.steps} steps (final.safetensors); raise "
                          f"trainer.steps to continue it")
    if saved_path.is_file():
        changed = config_changes(yaml.safe_load(saved_path.read_text()) or {}, cfg)
        if changed:
            allowed = ", ".join(cfg.RESUMABLE)
            raise CheckpointError(f"cannot resume {base}: the job changes {', '.join(changed)} (see its config.yaml); "
                                  f"a resumed run may only change {allowed}")
    digests = check_inputs(base, cfg)
    (base / "config.yaml").write_text(dump_job(cfg))
    write_inputs(base, digests)
    rewind_metrics(base, checkpoint.step if checkpoint is not None else None)
    return base, checkpoint


def rewind_metrics(run_dir: Path, step: int | None) -> None:
    """Keep the records up to `step` (None: none) in metrics.jsonl; the previous file is kept whole as
    metrics.attemptN.jsonl (the steps after the checkpoint are recomputed, identically, by the resumed run)."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return
    attempt = 1
    while (run_dir / f"metrics.attempt{attempt}.jsonl").exists():
        attempt += 1
    try:
        records = MetricsLog(path).read()
    except ValueError as err:
        raise CheckpointError(f"cannot resume {run_dir}: {err}") from None
    os.replace(path, run_dir / f"metrics.attempt{attempt}.jsonl")
    kept = [r for r in records if step is not None and r.get("step", 0) <= step
            and not any(k.startswith("summary/") for k in r)]
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))


class RunLog:
    """metrics.jsonl (always) and wandb (trainer.wandb.mode offline or online; files under runs/NAME/wandb). A
    resumed run logs to the same wandb run id (kept in runs/NAME/wandb_id)."""

    def __init__(self, run_dir: Path, cfg: JobConfig) -> None:
        self.metrics = MetricsLog(run_dir / "metrics.jsonl")
        self.wandb = None
        settings = cfg.trainer.wandb
        if settings.mode == "disabled":
            return
        import wandb

        id_file = run_dir / "wandb_id"
        run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)
        id_file.write_text(run_id)
        self.wandb = wandb.init(
            project=settings.project, entity=settings.entity, name=run_dir.name, id=run_id, resume="allow",
            mode=settings.mode, dir=str(run_dir), config=yaml.safe_load(dump_job(cfg)), tags=settings.tags,
            settings=wandb.Settings(console="off", silent=True),
        )

    def write(self, record: dict[str, Any]) -> None:
        self.metrics.write(record)
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if k != "step"}, step=int(record.get("step", 0)))

    def read(self) -> list[dict[str, Any]]:
        return self.metrics.read()

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None
