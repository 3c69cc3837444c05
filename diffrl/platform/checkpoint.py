"""Checkpoints for exact resume: written atomically, verified before they are loaded, never unpickled.

A checkpoint is a directory `runs/NAME/checkpoints/step_000050/`:

    model.safetensors          the trained tensors (adapters only under LoRA), the same format as final.safetensors
    learner_rank0.safetensors  one learner rank's tensors: optimizer state, EMA / old-policy shadows, RNG states
    learner_rank0.json         ... and the rest of its state (optimizer hyper-parameters, scheduler, step counters)
    workers.json               inference workers' state (weight version, RNG states)
    trainer.json               the controller: step, held-out history, prompt-sampler position, advantage state
    manifest.json              size and sha256 of every file above; written last

It is built in a hidden temporary directory beside its final place and renamed into place in one step, so a crash
leaves either no checkpoint or a complete one. `latest_checkpoint` checks the manifest (every file present, sizes and
hashes equal) before anything is read and names the file at fault otherwise. Nested state (Python containers of
tensors, numbers and strings) is split into safetensors (the tensors) and JSON (the structure), so nothing needs
pickle to load.
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

FORMAT = 1
MANIFEST = "manifest.json"
# What a run's checkpoint must hold (learner ranks beyond 0 and the workers' files are checked when read).
REQUIRED = ("model.safetensors", "trainer.json", "learner_rank0.safetensors", "learner_rank0.json",
            "workers.safetensors", "workers.json")
PREFIX = "step_"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, partial or corrupt; the message names the directory and file."""


# ----------------------------------------------------------------------------------- nested state <-> files
def flatten_state(state: Any, path: str = "") -> tuple[dict[str, torch.Tensor], Any]:
    """Split nested state into ({key: tensor}, JSON tree). Tensors and numpy arrays become {"__tensor__": key}
    references; tuples, dicts with non-string keys and int enums are tagged so `unflatten_state` restores them
    exactly. Anything else (arbitrary objects) is an error naming its path: state must be plain data."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(node: Any, where: str) -> Any:
        if isinstance(node, (torch.Tensor, np.ndarray)):
            key = where or "value"
            if key in tensors:  # e.g. {"a.b": x} beside {"a": {"b": y}}
                raise ValueError(f"checkpoint state has two tensors at '{key}'; rename one of the keys")
            if isinstance(node, torch.Tensor):
                tensors[key] = node.detach().cpu().contiguous().clone()
                return {"__tensor__": key}
            tensors[key] = torch.from_numpy(np.ascontiguousarray(node).copy())
            return {"__ndarray__": key}
        if isinstance(node, enum.IntEnum):
            return int(node)
        if isinstance(node, (bool, int, float, str)) or node is None:
            return node
        if isinstance(node, np.generic):
            return node.item()
        if isinstance(node, dict):
            if all(isinstance(k, str) for k in node):
                return {k: walk(v, f"{where}.{k}" if where else k) for k, v in node.items()}
            return {"__items__": [[walk(k, f"{where}.key{i}"), walk(v, f"{where}.{i}")]
                                  for i, (k, v) in enumerate(node.items())]}
        if isinstance(node, (list, tuple)):
            items = [walk(v, f"{where}.{i}" if where else str(i)) for i, v in enumerate(node)]
            return {"__tuple__": items} if isinstance(node, tuple) else items
        raise TypeError(f"checkpoint state at '{where or '<root>'}' is a {type(node).__name__}; only tensors, "
                        f"arrays, numbers, strings and containers of them can be saved")

    return tensors, walk(state, path)


def unflatten_state(tensors: dict[str, torch.Tensor], tree: Any) -> Any:
    """Inverse of flatten_state."""
    if isinstance(tree, list):
        return [unflatten_state(tensors, v) for v in tree]
    if isinstance(tree, dict):
        if "__tensor__" in tree:
            return tensors[tree["__tensor__"]]
        if "__ndarray__" in tree:
            return tensors[tree["__ndarray__"]].numpy()
        if "__tuple__" in tree:
            return tuple(unflatten_state(tensors, v) for v in tree["__tuple__"])
        if "__items__" in tree:
            return {_hashable(unflatten_state(tensors, k)): unflatten_state(tensors, v) for k, v in tree["__items__"]}
        return {k: unflatten_state(tensors, v) for k, v in tree.items()}
    return tree


def _hashable(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key


def write_state(state: Any, directory: Path, stem: str) -> None:
    """`stem.safetensors` (tensors) and `stem.json` (the rest) in `directory`."""
    tensors, tree = flatten_state(state)
    save_file(tensors, str(directory / f"{stem}.safetensors"))
    (directory / f"{stem}.json").write_text(json.dumps(tree))


def read_state(directory: Path, stem: str) -> Any:
    return unflatten_state(load_file(str(directory / f"{stem}.safetensors")),
                           json.loads((directory / f"{stem}.json").read_text()))


# ------------------------------------------------------------------------------- directories and manifest
def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_root(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def begin(run_dir: Path, step: int) -> Path:
    """A fresh hidden temporary directory for the checkpoint of `step` (removed if a crash left one behind)."""
    root = checkpoint_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{PREFIX}{step:06d}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def commit(tmp: Path, step: int, keep: int = 0) -> Path:
    """Write the manifest, flush everything to disk and rename `tmp` to its final name; then keep only the newest
    `keep` checkpoints (0 keeps all). An existing checkpoint of the same step is replaced only after the new one is
    complete."""
    files = sorted(p for p in tmp.iterdir() if p.is_file())
    manifest = {"format": FORMAT, "step": step, "learner_ranks": len(_learner_ranks(p.name for p in files)),
                "files": {p.name: {"bytes": p.stat().st_size, "sha256": file_sha256(p)} for p in files}}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    for path in [*files, tmp / MANIFEST]:
        _fsync(path)
    final = tmp.parent / f"{PREFIX}{step:06d}"
    if final.exists():
        old = tmp.parent / f".{final.name}.replaced"
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old)
    else:
        os.rename(tmp, final)
    _fsync(tmp.parent)
    if keep:
        for stale in list_checkpoints(tmp.parent.parent)[:-keep]:
            shutil.rmtree(stale)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Committed checkpoint directories, oldest first (hidden partial ones are not listed)."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def _learner_ranks(names) -> list[int]:
    """The learner ranks whose state files are among `names`, sorted."""
    return sorted({int(n[len("learner_rank"):].partition(".")[0]) for n in names
                   if n.startswith("learner_rank") and n[len("learner_rank"):].partition(".")[0].isdigit()})


def _safe_name(name: str) -> bool:
    """A manifest entry must be a plain file name inside the checkpoint directory."""
    return (bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name and "\0" not in name
            and not Path(name).is_absolute())


def verify(directory: Path) -> dict[str, Any]:
    """The manifest of a committed checkpoint after checking every file it lists; CheckpointError otherwise. Entries
    must be plain file names (nothing outside the directory is read), and every learner rank the manifest counts
    must have both of its state files listed. Files on disk the manifest does not list are reported (never read)."""
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"checkpoint {directory} is incomplete: {MANIFEST} is missing (a partial write?); "
                              f"it will not be loaded. Remove it to resume from an older checkpoint.")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
        int(manifest["step"])
        entries = {name: (int(entry["bytes"]), str(entry["sha256"])) for name, entry in files.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"checkpoint {directory}: {MANIFEST} is unreadable ({type(err).__name__}: {err})") from None
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {directory}: format {manifest.get('format')!r}, this version reads {FORMAT}")
    unsafe = sorted(name for name in entries if not _safe_name(name))
    if unsafe:
        raise CheckpointError(f"checkpoint {directory}: {MANIFEST} names files outside the checkpoint directory "
                              f"({', '.join(map(repr, unsafe))}); it will not be loaded")
    listed_ranks = _learner_ranks(entries)
    ranks = manifest.get("learner_ranks", len(listed_ranks))
    if not isinstance(ranks, int) or ranks < 1:
        raise CheckpointError(f"checkpoint {directory}: {MANIFEST} has learner_ranks={ranks!r}")
    for rank in range(ranks):
        for suffix in ("safetensors", "json"):
            if f"learner_rank{rank}.{suffix}" not in entries:
                raise CheckpointError(f"checkpoint {directory} is incomplete: learner rank {rank} of {ranks} has no "
                                      f"learner_rank{rank}.{suffix} in {MANIFEST}")
    if listed_ranks != list(range(ranks)):
        raise CheckpointError(f"checkpoint {directory}: {MANIFEST} lists learner ranks {listed_ranks}, expected "
                              f"0-{ranks - 1}")
    for name, (size, digest) in entries.items():
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"checkpoint {directory} is corrupt: {name} is missing")
        if path.stat().st_size != size:
            raise CheckpointError(f"checkpoint {directory} is corrupt: {name} has {path.stat().st_size} bytes, "
                                  f"the manifest says {size}")
        if file_sha256(path) != digest:
            raise CheckpointError(f"checkpoint {directory} is corrupt: {name} does not match its sha256 in {MANIFEST}")
    unexpected = sorted(p.name for p in directory.iterdir() if p.name not in entries and p.name != MANIFEST)
    if unexpected:
        print(f"warning: checkpoint {directory} holds files its {MANIFEST} does not list, which are not read: "
              f"{', '.join(unexpected)}", file=sys.stderr)
    return manifest


@dataclass
class Checkpoint:
    path: Path
    step: int

    @property
    def trainer(self) -> dict[str, Any]:
        return json.loads((self.path / "trainer.json").read_text())

    ranks: int = 1

    def learner_state(self, rank: int) -> Any:
        if not 0 <= rank < self.ranks:
            raise CheckpointError(f"checkpoint {self.path} holds {self.ranks} learner rank(s); rank {rank} has no "
                                  f"state (the learner count cannot change on resume)")
        return read_state(self.path, f"learner_rank{rank}")

    def model_tensors(self) -> dict[str, torch.Tensor]:
        return load_file(str(self.path / "model.safetensors"))

    def workers(self) -> dict[str, list[Any]]:
        return read_state(self.path, "workers")


def latest_checkpoint(run_dir: Path) -> Checkpoint | None:
    """The newest committed checkpoint of `run_dir`, verified; None when there is none. A corrupt newest checkpoint
    is an error (never silently skipped: the user decides whether to remove it)."""
    found = list_checkpoints(run_dir)
    if not found:
        return None
    manifest = verify(found[-1])
    missing = [name for name in REQUIRED if name not in manifest["files"]]
    if missing:
        raise CheckpointError(f"checkpoint {found[-1]} is incomplete: its manifest lists no {', '.join(missing)}")
    return Checkpoint(found[-1], int(manifest["step"]), len(_learner_ranks(manifest["files"])))
