"""Offline preference pairs for Diffusion-DPO (learner.diffusion_dpo.pairs): a JSON-lines file with one pair per line,

    {"prompt": "a photo of two red circles", "chosen": "img/0001_w.png", "rejected": "img/0001_l.png"}

(image paths relative to the pairs file; any other keys are the prompt's metadata, e.g. GenEval's "include").
Each RL step draws rollout.prompts_per_step pairs (deterministic in (seed, step)), the rollout workers encode the
images into model space (`ModelAdapter.encode_images`), and each pair becomes a group of two samples scored 1
(chosen) and 0 (rejected): the online objective's best/worst pair is then exactly the file's pair. The held-out
eval still samples the policy. Pick-a-Pic-style data is what the Diffusion-DPO paper (arXiv 2311.12908) trains on.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import torch

from diffrl.kinds.rl.data import prompt_line
from diffrl.platform.worker import WorkerGroup, split_evenly
from diffrl.workers.batch import RolloutBatch, SampleRequest

IMAGE_KEYS = ("chosen", "rejected")


def pairs_file(cfg) -> str | None:
    """learner.diffusion_dpo.pairs of a job (None: online pairs, or a kind without that section)."""
    section = getattr(getattr(cfg, "learner", None), "diffusion_dpo", None)
    return getattr(section, "pairs", None)


def read_pairs(path: str | Path) -> list[dict]:
    """The pairs of `path`, image paths resolved against its directory; errors name the file, line and key. Every
    image must exist and every image must have one size (read from its header, not decoded)."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"learner.diffusion_dpo.pairs: file not found: {path}")
    pairs, sizes = [], {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"learner.diffusion_dpo.pairs: {path}:{number}"
        entry = prompt_line(line, where)
        for key in IMAGE_KEYS:
            if not isinstance(entry.get(key), str):
                raise ValueError(f"{where}: '{key}' must be an image path (relative to the pairs file)")
            image = (path.parent / entry[key]).resolve()
            if not image.is_file():
                raise ValueError(f"{where}: '{key}' image not found: {image}")
            try:
                with Image.open(image) as opened:
                    sizes.setdefault(opened.size, f"{image.name} (line {number})")
            except OSError as err:
                raise ValueError(f"{where}: '{key}' is not a readable image: {err}") from None
            entry[key] = str(image)
        if len(sizes) > 1:
            (a, first), (b, second) = list(sizes.items())[:2]
            raise ValueError(f"{where}: images differ in size: {first} is {a[0]}x{a[1]}, {second} is {b[0]}x{b[1]}")
        pairs.append(entry)
    if not pairs:
        raise ValueError(f"learner.diffusion_dpo.pairs: {path}: no pairs")
    return pairs


def pairs_digest(path: str | Path, pairs: list[dict]) -> str:
    """A digest of the pairs file's bytes and of each image's size and modification time (not its bytes: a real
    preference set is too large to hash at every start), kept in checkpoints so that a resumed run refuses pairs
    that were edited since (its steps would no longer be the run's)."""
    digest = hashlib.sha256(Path(path).read_bytes())
    for entry in pairs:
        for key in IMAGE_KEYS:
            stat = Path(entry[key]).stat()
            digest.update(f"{entry[key]}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def check_resumed_pairs(path: str | Path, pairs: list[dict], checkpoint=None) -> str:
    """The pairs' digest, after checking it against the one `checkpoint` (a run being resumed; None: a new run)
    recorded (older checkpoints recorded none); a difference is a CheckpointError naming the file."""
    from diffrl.platform.checkpoint import CheckpointError

    digest = pairs_digest(path, pairs)
    saved = checkpoint.trainer.get("pairs_digest") if checkpoint is not None else None
    if saved is not None and saved != digest:
        raise CheckpointError(f"cannot resume: learner.diffusion_dpo.pairs {path} or its images changed since the "
                              f"checkpoint at step {checkpoint.step} (content, image sizes or modification times); "
                              "restore them, or start a new run (resume: never, or another name)")
    return digest


def pair_size(pairs: list[dict]) -> tuple[int, int]:
    """(width, height) of the pairs' images (read_pairs made them one size)."""
    from PIL import Image

    with Image.open(pairs[0]["chosen"]) as opened:
        return opened.size


def _load(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as opened:
        return np.asarray(opened.convert("RGB"), dtype=np.uint8)


def pair_batch(pairs: list[dict], prompts_per_step: int, seed: int, step: int, rollout: WorkerGroup,
               times: dict[str, float] | None = None) -> RolloutBatch:
    """The step's pairs as a scored RolloutBatch: rows 2g and 2g + 1 are pair g's chosen and rejected images (group
    g, rewards 1 and 0), encoded by the rollout workers. Pairs are drawn without replacement while the file has
    enough (deterministic in (seed, step)); with `times`, the seconds go to times["time/rollout"]."""
    tick = time.perf_counter()
    rng = np.random.default_rng([seed, step])
    chosen = rng.choice(len(pairs), size=prompts_per_step, replace=prompts_per_step > len(pairs))
    requests, images = [], []
    for group, index in enumerate(chosen.tolist()):
        entry = pairs[index]
        metadata = {k: v for k, v in entry.items() if k not in IMAGE_KEYS}
        for key in IMAGE_KEYS:
            requests.append(SampleRequest(entry["prompt"], metadata, group, seed=index))
            images.append(_load(entry[key]))
    images = np.stack(images)
    shards = [(requests[rows[0]:rows[-1] + 1], images[rows[0]:rows[-1] + 1])
              for rows in split_evenly(list(range(len(requests))), len(rollout)) if rows]
    batch = RolloutBatch.concat(rollout.scatter_async("encode_images", shards, spread=True).results())
    batch.rewards = torch.tensor([1.0, 0.0] * prompts_per_step)
    if times is not None:
        times["time/rollout"] = time.perf_counter() - tick
    return batch
