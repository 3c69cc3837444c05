"""Offline Diffusion-DPO from a pairs file (learner.diffusion_dpo.pairs): the file's checks, the batch it becomes,
and a run from a user's own directory through the CLI."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffrl.envs.shapes import render_prompt
from diffrl.kinds.rl.config import RLJobConfig
from diffrl.kinds.rl.pairs import pair_batch, read_pairs
from diffrl.models.registry import build_model
from diffrl.platform.worker import LocalBackend, Placement, WorkerGroup
from diffrl.workers.objectives import objective_class
from diffrl.workers.rollout import RolloutWorker

REPO = Path(__file__).resolve().parents[1]
CIRCLE = {"prompt": "a photo of a circle", "include": [{"class": "circle", "count": 1}], "tag": "single_object"}
# training prompts of the default split (the check refuses held-out ones)
THREE = {"prompt": "a photo of three circles", "include": [{"class": "circle", "count": 3}], "tag": "counting"}


def write_pairs(directory: Path, count: int = 3, size: int | None = None) -> Path:
    """`count` pairs (chosen: a render of the prompt; rejected: a render of another prompt) under `directory`."""
    rng = np.random.default_rng(0)
    (directory / "img").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(count):
        names = {}
        for key, metadata in (("chosen", CIRCLE if i % 2 else THREE), ("rejected", THREE if i % 2 else CIRCLE)):
            image = render_prompt(metadata, rng)
            names[key] = f"img/{i}_{key}.png"
            Image.fromarray(image if size is None else image[:size, :size]).save(directory / names[key])
        lines.append(json.dumps({**(CIRCLE if i % 2 else THREE), **names}))
    path = directory / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_tiny_model_encodes_images_back_to_the_same_bytes():
    model = build_model("tiny_t2i", None)
    images = np.random.default_rng(1).integers(0, 256, (3, *model.sample_shape[1:], 3), dtype=np.uint8)
    samples = model.encode_images(images)
    assert samples.shape == (3, *model.sample_shape) and samples.min() >= -1 and samples.max() <= 1
    np.testing.assert_array_equal(model.decode(samples), images)
    with pytest.raises(ValueError, match="do not fit this model: it draws 30x30"):
        model.encode_images(images[:, :16, :16])


@pytest.mark.parametrize("line,message", [
    ("{not json", "pairs.jsonl:2: not valid JSON"),
    ('{"chosen": "img/0_chosen.png", "rejected": "img/0_rejected.png"}', "pairs.jsonl:2: each line must be an "
                                                                         "object with a string 'prompt'"),
    ('{"prompt": "x", "chosen": "img/0_chosen.png"}', "pairs.jsonl:2: 'rejected' must be an image path"),
    ('{"prompt": "x", "chosen": "img/gone.png", "rejected": "img/0_rejected.png"}', "'chosen' image not found"),
    ('{"prompt": "x", "chosen": "pairs.jsonl", "rejected": "img/0_rejected.png"}', "'chosen' is not a readable"),
    ('{"prompt": "x", "chosen": "small.png", "rejected": "img/0_rejected.png"}', "images differ in size: "
                                                                                 "0_chosen.png \\(line 1\\) is 30x30"),
])
def test_a_bad_pairs_file_is_refused_naming_its_line(tmp_path, line, message):
    path = write_pairs(tmp_path, count=1)
    Image.new("RGB", (16, 16)).save(tmp_path / "small.png")
    path.write_text(path.read_text() + line + "\n")
    with pytest.raises(ValueError, match=message):
        read_pairs(path)


def test_pairs_become_two_sample_groups_whose_best_worst_pair_is_the_files(tmp_path):
    pairs = read_pairs(write_pairs(tmp_path, count=3))
    cfg = RLJobConfig(model={"path": None}, rollout={"num_steps": 6, "sampler": "ode"})
    group = WorkerGroup(LocalBackend(), RolloutWorker, [(cfg.model.model_dump(), cfg.rollout.model_dump())] * 2,
                        Placement(num_cpus=1), "rollout")
    try:
        group.run("setup")
        batch = pair_batch(pairs, 4, seed=0, step=0, rollout=group)  # 4 of 3 pairs: drawn with replacement
    finally:
        group.shutdown()
    assert len(batch) == 8 and batch.group_ids.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert batch.rewards.tolist() == [1.0, 0.0] * 4 and batch.grid.tolist() == pytest.approx(
        torch.linspace(1, 0, 7).tolist())
    files = [Image.open(pairs[s][key]) for s in batch.seeds[::2].tolist() for key in ("chosen", "rejected")]
    np.testing.assert_array_equal(batch.images, np.stack([np.asarray(f.convert("RGB")) for f in files]))
    np.testing.assert_array_equal(build_model("tiny_t2i", None).decode(batch.samples), batch.images)
    objective = objective_class("diffusion_dpo")({"num_timesteps": 2, "timestep_fraction": 0.9}, {"group_size": 2})
    rows = objective.rows(batch, 0)
    assert rows["index"].tolist() == [0, 0, 2, 2, 4, 4, 6, 6]  # every chosen image is its pair's winner
    torch.testing.assert_close(rows["x0_l"][::2], batch.samples[1::2])
    assert rows["keep"].tolist() == [1.0] * 8
    # Offline, two pairs of one prompt are two pairs: each gets its own noise (the same pair drawn twice, the same).
    offline = objective_class("diffusion_dpo")({"num_timesteps": 2, "timestep_fraction": 0.9, "pairs": "p.jsonl"},
                                               {"group_size": 2})
    noise = offline.rows(batch, 0)["eps"].view(4, -1)
    seeds, prompts = batch.seeds[::2].tolist(), batch.prompts[::2]
    shared = [(a, b) for a in range(4) for b in range(a) if prompts[a] == prompts[b]]
    assert any(seeds[a] != seeds[b] for a, b in shared), (seeds, prompts)
    for a, b in shared:
        assert torch.equal(noise[a], noise[b]) == (seeds[a] == seeds[b]), (a, b, seeds)


def test_an_offline_dpo_job_runs_from_the_users_directory(tmp_path):
    """A user's own pairs file, given relative to their current directory, trains two steps through the CLI; the run
    resumes while its pairs are unchanged and refuses to once an image was edited."""
    write_pairs(tmp_path / "mydata", count=4)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    args = [sys.executable, "-m", "diffrl.cli", "run", str(REPO / "configs/shapes_diffusion_dpo_offline.yaml"),
            "learner.diffusion_dpo.pairs=mydata/pairs.jsonl", "backend=local", "trainer.steps=2",
            "trainer.eval_every=0", "trainer.eval_seeds_per_prompt=1", "rollout.prompts_per_step=2",
            "learner.micro_batch_size=8", f"output_dir={tmp_path / 'runs'}", "trainer.sample_grid_prompts=2",
            "trainer.checkpoint_every=1"]
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(line) for line in next((tmp_path / "runs").glob("*/metrics.jsonl")).read_text().splitlines()]
    steps = [r for r in records if "train/loss" in r]
    assert len(steps) == 2 and all(np.isfinite(r["train/loss"]) for r in steps)
    assert steps[0]["train/dpo_accuracy"] == 0.0  # policy == reference before the first update: margins 0
    assert steps[1]["train/dpo_margin"] != 0.0  # the first update moved the policy away from the reference
    assert steps[0]["rollout/nfe"] == 0.0  # no model call made the samples
    resumed = subprocess.run(args + ["--resume", "trainer.steps=3"], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    edited = tmp_path / "mydata/img/0_chosen.png"
    Image.fromarray(np.asarray(Image.open(edited))[::-1].copy()).save(edited)  # same size, other pixels
    refused = subprocess.run(args + ["--resume", "trainer.steps=4"], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=600)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-2000:]
    assert ("cannot resume: learner.diffusion_dpo.pairs mydata/pairs.jsonl or its images changed since the "
            "checkpoint at step 3") in refused.stderr
    # overrides after an option are still overrides
    missing = subprocess.run(args[:5] + ["--check", "learner.diffusion_dpo.pairs=elsewhere/pairs.jsonl"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "learner.diffusion_dpo.pairs: file not found" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_pairs_on_held_out_prompts_are_refused_before_start(tmp_path):
    """Training on held-out prompts would inflate the held-out eval: the check names the pairs file and a prompt."""
    from diffrl.envs.worlds import world
    from diffrl.kinds import load_job
    from diffrl.platform.config import ConfigError

    _, heldout = world("shapes").prompt_splits(heldout_fraction=0.25, seed=0)
    path = write_pairs(tmp_path, count=1)
    entry = {**json.loads(path.read_text()), "prompt": heldout[0]["prompt"]}
    path.write_text(json.dumps(entry) + "\n")
    with pytest.raises(ConfigError, match=re.escape(f"1 of its prompts are held-out eval prompts (e.g. "
                                                    f"{heldout[0]['prompt']!r})")):
        load_job(REPO / "configs/shapes_diffusion_dpo_offline.yaml", [f"learner.diffusion_dpo.pairs={path}"])
    load_job(REPO / "configs/shapes_diffusion_dpo_offline.yaml")  # the shipped pairs use training prompts only
