"""The scenes world end to end, as a user runs it: a short `kind: pretrain` on it writes a 40x40 base model, a short
preference pretraining writes a dual encoder the scenes_preference reward loads, and configs/scenes_awm.yaml
post-trains the shipped base against the setting's default reward (rules + learned, mixed) (fast; always on)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from diffrl.kinds import load_job, run_job
from diffrl.models.tiny_t2i import TinyT2I

REPO = Path(__file__).resolve().parents[1]


def test_pretrain_then_rl_on_the_scenes_world(tmp_path):
    pretrain = load_job(REPO / "configs/pretrain_scenes.yaml", [
        f"output_dir={tmp_path}", "backend=local", "trainer.steps=3", "trainer.eval_every=0",
        "trainer.eval_seeds_per_prompt=1", "trainer.checkpoint_every=0", "learner.batch_size=16",
        "learner.micro_batch_size=16"])
    assert pretrain.trainer.eval_label == "GenEval-scenes strict"
    model_dir = Path(run_job(pretrain)["model"])
    model = TinyT2I.from_pretrained(model_dir)
    assert model.sample_shape == (3, 40, 40) and {"diamond", "cross", "yellow", "small"} <= set(model.vocab)


def test_rl_on_the_scenes_world_with_its_default_reward(tmp_path):
    said: list[str] = []
    rl = load_job(REPO / "configs/scenes_awm.yaml", [
        f"output_dir={tmp_path}", "backend=local", "trainer.steps=2",
        "rollout.prompts_per_step=2", "rollout.group_size=4", "trainer.eval_every=0", "trainer.eval_seeds_per_prompt=1"])
    run_job(rl, echo=said.append)
    assert any("held-out GenEval-scenes" in line for line in said), said
    records = [json.loads(line) for line in (tmp_path / "scenes_awm/metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "reward/mean" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert {"reward/geneval_scenes/strict", "reward/geneval_scenes/partial", "reward/scenes_preference",
            "train/loss"} <= set(steps[0])
    assert -1.0 <= steps[0]["reward/scenes_preference"] <= 1.0
    evals = [r for r in records if "eval/headline" in r]
    assert len(evals) == 2 and all(0.0 <= r["eval/headline"] <= 1.0 for r in evals)  # base and final


def test_a_model_of_another_world_is_refused_before_start(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "diffrl.cli", "run", str(REPO / "configs/scenes_awm.yaml"),
                           "model.path=builtin:shapes_base", "--check"], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 2
    assert "model.path: builtin:shapes_base draws 30x30 images; data.source=scenes needs 40x40" in proc.stderr


def test_preference_pretraining_writes_a_reward_model(tmp_path):
    from diffrl.rewards.base import build_reward
    from diffrl.envs import scenes

    job = load_job(REPO / "configs/pretrain_scenes_pref.yaml", [
        f"output_dir={tmp_path}", "backend=local", "trainer.steps=2", "trainer.eval_every=0",
        "trainer.checkpoint_every=0", "learner.batch_size=16", "learner.micro_batch_size=16",
        "data.pairs_per_prompt=2", "data.heldout_pairs_per_prompt=1"])
    assert job.trainer.eval_label == "pair ranking accuracy"
    said: list[str] = []
    result = run_job(job, echo=said.append)
    assert any("held-out pair ranking accuracy" in line for line in said), said
    record = json.loads((tmp_path / "pretrain_scenes_pref/pair_accuracy.json").read_text())
    assert record["pairs"] == 31 and 0.0 <= record["clean"]["accuracy"] <= 1.0  # 32 held out; one has no change
    reward = build_reward("scenes_preference", path=result["model"])
    image = scenes.render_prompt(scenes.all_prompts()[0], np.random.default_rng(0))[None]
    out = reward(image, ["a photo of a circle"], [{}])
    assert len(out.scores) == 1 and -1.0 <= out.scores[0] <= 1.0
