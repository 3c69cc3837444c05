"""The scenes world end to end, as a user runs it: a short `kind: pretrain` on it writes a 40x40 base model, and
configs/scenes_awm.yaml post-trains that model against geneval_scenes (fast; always on)."""

import json
import subprocess
import sys
from pathlib import Path

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

    said: list[str] = []
    rl = load_job(REPO / "configs/scenes_awm.yaml", [
        f"model.path={model_dir}", f"output_dir={tmp_path}", "backend=local", "trainer.steps=2",
        "rollout.prompts_per_step=2", "rollout.group_size=4", "trainer.eval_every=0", "trainer.eval_seeds_per_prompt=1"])
    run_job(rl, echo=said.append)
    assert any("held-out GenEval-scenes" in line for line in said), said
    records = [json.loads(line) for line in (tmp_path / "scenes_awm/metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "reward/mean" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert {"reward/geneval_scenes/strict", "reward/geneval_scenes/partial", "train/loss"} <= set(steps[0])
    evals = [r for r in records if "eval/headline" in r]
    assert len(evals) == 2 and all(0.0 <= r["eval/headline"] <= 1.0 for r in evals)  # base and final


def test_a_model_of_another_world_is_refused_before_start(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "diffrl.cli", "run", str(REPO / "configs/scenes_awm.yaml"),
                           "model.path=builtin:shapes_base", "--check"], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 2
    assert "model.path: builtin:shapes_base draws 30x30 images; data.source=scenes needs 40x40" in proc.stderr
