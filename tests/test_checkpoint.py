"""Checkpoints: plain-data serialization (no pickle), atomic commit, verification, and exact learner resume on real
DeepSpeed engines (ZeRO 0 and 2, with the EMA / old-policy shadows)."""

import enum
import json
import math

import numpy as np
import pytest
import torch
import yaml

from diffrl.platform import checkpoint as ckpt
from diffrl.kinds.rl.config import RLJobConfig
from diffrl.platform.runtime import file_rendezvous as new_rendezvous
from diffrl.utils.rng import capture_rng, restore_rng
from diffrl.workers.learner import LearnerWorker
from test_objectives import rollout_batch


class Stage(enum.IntEnum):
    TWO = 2


def test_flatten_round_trips_nested_state_without_pickle(tmp_path):
    state = {"a": torch.arange(6.0).view(2, 3), "b": [1, 2.5, None, "x", (3, 4)], "c": {0: torch.ones(2), 7: "seven"},
             "d": np.arange(4, dtype=np.uint32), "e": Stage.TWO, "f": float("nan"), "g": (0.9, 0.999)}
    ckpt.write_state(state, tmp_path, "s")
    back = ckpt.read_state(tmp_path, "s")
    assert torch.equal(back["a"], state["a"]) and back["b"] == [1, 2.5, None, "x", (3, 4)]
    assert torch.equal(back["c"][0], torch.ones(2)) and back["c"][7] == "seven"
    assert back["d"].dtype == np.uint32 and back["d"].tolist() == [0, 1, 2, 3]
    assert back["e"] == 2 and math.isnan(back["f"]) and back["g"] == (0.9, 0.999)
    with pytest.raises(TypeError, match=r"checkpoint state at 'x.obj' is a object"):
        ckpt.flatten_state({"x": {"obj": object()}})
    with pytest.raises(ValueError, match=r"two tensors at 'a.b'"):
        ckpt.flatten_state({"a.b": torch.zeros(1), "a": {"b": torch.ones(1)}})


def test_rng_states_round_trip():
    import random

    saved = capture_rng()
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    restore_rng(saved)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected


def test_commit_is_atomic_and_corruption_is_named(tmp_path):
    tmp = ckpt.begin(tmp_path, 4)
    for name in ckpt.REQUIRED:
        (tmp / name).write_bytes(b"{}")
    (tmp / "model.safetensors").write_bytes(b"weights")
    assert ckpt.list_checkpoints(tmp_path) == [] and ckpt.latest_checkpoint(tmp_path) is None  # partial: unseen
    path = ckpt.commit(tmp, 4)
    assert path.name == "step_000004" and not tmp.exists()
    assert ckpt.latest_checkpoint(tmp_path).step == 4
    (path / "model.safetensors").write_bytes(b"weightz")
    with pytest.raises(ckpt.CheckpointError, match=r"step_000004 is corrupt: model.safetensors does not match"):
        ckpt.latest_checkpoint(tmp_path)
    (path / "model.safetensors").write_bytes(b"short")
    with pytest.raises(ckpt.CheckpointError, match=r"model.safetensors has 5 bytes, the manifest says 7"):
        ckpt.latest_checkpoint(tmp_path)
    manifest = json.loads((path / ckpt.MANIFEST).read_text())
    del manifest["files"]["trainer.json"]
    (path / "model.safetensors").write_bytes(b"weights")
    (path / ckpt.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ckpt.CheckpointError, match=r"incomplete: its manifest lists no trainer.json"):
        ckpt.latest_checkpoint(tmp_path)
    (path / ckpt.MANIFEST).write_text('{"format": 1, "step": 4, "files": {"x": {"bytes": "many"}}}')
    with pytest.raises(ckpt.CheckpointError, match=r"manifest.json is unreadable"):
        ckpt.latest_checkpoint(tmp_path)
    (path / ckpt.MANIFEST).unlink()
    with pytest.raises(ckpt.CheckpointError, match=r"incomplete: manifest.json is missing"):
        ckpt.latest_checkpoint(tmp_path)
    for step in (8, 12, 16):
        t = ckpt.begin(tmp_path, step)
        (t / "x").write_text(str(step))
        ckpt.commit(t, step, keep=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_000012", "step_000016"]
    assert json.loads((tmp_path / "checkpoints/step_000016/manifest.json").read_text())["step"] == 16


def _learner(cfg: RLJobConfig, batch, scratch) -> LearnerWorker:
    scratch.mkdir(parents=True, exist_ok=True)
    worker = LearnerWorker(0, 1, cfg.model.model_dump(), cfg.learner.model_dump(), len(batch), cfg.rollout.model_dump())
    worker.setup(rendezvous=new_rendezvous(scratch))
    return worker


@pytest.mark.parametrize("algorithm,zero_stage,lora", [("awm", 0, False), ("awm", 2, False), ("nft", 0, False),
                                                      ("awm", 1, True)])
def test_learner_resume_is_bitwise_exact(algorithm, zero_stage, lora, tmp_path):
    """Two updates, a checkpoint through files, a fresh learner restored from it: the third update gives bitwise
    the same weights (adapters under LoRA), optimizer state and shadows as the learner that never stopped."""
    cfg = RLJobConfig(
        model={"path": None, "lora": {"enabled": lora, "rank": 4}},
        rollout={"num_steps": 6, "prompts_per_step": 2, "group_size": 4, "batch_size": 8},
        learner={"algorithm": algorithm, "micro_batch_size": 4, "lr": 1e-3, "zero_stage": zero_stage,
                 "warmup_steps": 3, "eval_ema_decay": 0.5,
                 "awm": {"num_timesteps": 2, "ema_beta": 0.1, "ema_rate": 0.1}, "nft": {"num_timesteps": 2}},
    )
    _, batch = rollout_batch(cfg)
    first = _learner(cfg, batch, tmp_path / "a")
    for step in (0, 1):
        first.update(batch, step)
    directory = tmp_path / "ckpt"
    directory.mkdir()
    ckpt.write_state(first.state_dict(), directory, "learner")

    second = _learner(cfg, batch, tmp_path / "b")
    fresh, trained = second.get_weights().tensors(), first.get_weights().tensors()
    assert any(not torch.equal(fresh[k], trained[k]) for k in fresh)
    second.load_state_dict(ckpt.read_state(directory, "learner"))
    metrics = [first.update(batch, 2), second.update(batch, 2)]
    assert metrics[0] == metrics[1]
    a, b = first.state_dict(), second.state_dict()
    for key in a["weights"]:
        assert torch.equal(a["weights"][key], b["weights"][key]), key
    flat_a, tree_a = ckpt.flatten_state({k: v for k, v in a.items() if k not in ("weights", "rng")})
    flat_b, tree_b = ckpt.flatten_state({k: v for k, v in b.items() if k not in ("weights", "rng")})
    assert tree_a == tree_b and flat_a.keys() == flat_b.keys()
    for key in flat_a:
        assert torch.equal(flat_a[key], flat_b[key]), key
    assert a["scheduler"]["last_epoch"] == 3 and a["version"] == 3 and set(a["shadows"]) >= {"eval"}


def test_open_run_resume_rules(tmp_path):
    from diffrl.kinds import load_job
    from diffrl.platform.runs import open_run

    def job(*overrides):
        return load_job("configs/shapes_awm.yaml", [f"output_dir={tmp_path}", "trainer.checkpoint_every=2", *overrides])

    with pytest.raises(ckpt.CheckpointError, match="--resume: there is no run directory"):
        open_run(job(), must_resume=True)
    run_dir, found = open_run(job("resume=auto"))  # nothing to resume: a fresh run directory
    assert run_dir == tmp_path / "shapes_awm" and found is None
    with pytest.raises(ckpt.CheckpointError, match="has no complete checkpoint"):
        open_run(job(), must_resume=True)
    assert open_run(job())[0].name == "shapes_awm_2"  # resume: never -> a new directory, the old one untouched
    (tmp_path / "shapes_awm_2" / "final.safetensors").write_bytes(b"finished")
    finished = load_job("configs/shapes_awm.yaml", [f"output_dir={tmp_path}", "name=shapes_awm_2", "resume=auto"])
    assert open_run(finished)[0].name == "shapes_awm_2_2"  # a finished run without checkpoints is never reused

    records = [{"step": 0, "eval/headline": 0.5}, *[{"step": s, "reward/mean": s / 10} for s in (1, 2, 3)]]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 4, "rew')
    tmp = ckpt.begin(run_dir, 2)
    for name in ckpt.REQUIRED:
        (tmp / name).write_text("{}")
    ckpt.commit(tmp, 2)
    with pytest.raises(ckpt.CheckpointError, match=r"the job changes learner.lr, rollout.group_size"):
        open_run(job("learner.lr=1e-3", "rollout.group_size=4"), must_resume=True)
    resumed, found = open_run(job("trainer.steps=400", "trainer.eval_every=10"), must_resume=True)
    assert resumed == run_dir and found.step == 2
    kept = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert kept == [0, 1, 2]  # records after the checkpoint go; the cut-off last line too
    assert (run_dir / "metrics.attempt1.jsonl").read_text().endswith('"rew')  # the old file is kept whole

    from diffrl.platform.runs import RunFinished, config_changes

    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config_changes(saved, job("trainer.steps=400", "trainer.eval_every=10",
                                     "reward.rewards=[{name: geneval_shapes, num_workers: 2}]")) == []
    assert config_changes(saved, job("trainer.steps=400", "trainer.eval_every=10",
                                     "reward.rewards=[{name: geneval_shapes, weight: 2.0}]")) == ["reward.rewards.0.weight"]
    with pytest.raises(ckpt.CheckpointError, match=r"newest checkpoint is at step 2, past trainer.steps=1"):
        open_run(job("trainer.steps=1"), must_resume=True)
    (run_dir / "final.safetensors").write_bytes(b"done")
    with pytest.raises(RunFinished, match=r"already finished all 2 steps"):
        open_run(job("trainer.steps=2"), must_resume=True)


def test_a_resume_refuses_input_files_edited_since_the_run_started(tmp_path, monkeypatch):
    """A user's prompt files and file reward, named relative to their job file and run from another directory: the
    run records their digests; editing one (same path, so config_changes sees nothing) blocks the resume by name."""
    from diffrl.kinds import load_job
    from diffrl.platform.runs import INPUTS_FILE, open_run

    work = tmp_path / "project"
    work.mkdir()
    (work / "train.txt").write_text("a photo of a red circle\na photo of two squares\n")
    (work / "eval.txt").write_text("a photo of a blue circle\n")
    (work / "my_reward.py").write_text("def score(images, prompts, metadata):\n    return [0.5] * len(prompts)\n")
    (work / "job.yaml").write_text(
        "kind: rl\nname: mine\nresume: auto\n"
        "data: {source: files, train_file: train.txt, eval_file: eval.txt}\n"
        "reward: {rewards: [{name: my_reward.py:score}]}\ntrainer: {checkpoint_every: 2}\n")
    monkeypatch.chdir(tmp_path)

    def job():
        return load_job(work / "job.yaml", [f"output_dir={tmp_path / 'runs'}"])

    run_dir, _ = open_run(job())
    recorded = json.loads((run_dir / INPUTS_FILE).read_text())
    assert set(recorded) == {"data.train_file", "data.eval_file", "reward.rewards.0.name"}
    tmp = ckpt.begin(run_dir, 2)
    for name in ckpt.REQUIRED:
        (tmp / name).write_text("{}")
    ckpt.commit(tmp, 2)
    assert open_run(job())[1].step == 2  # unchanged inputs: resumes
    (work / "train.txt").write_text("a photo of a red circle\na photo of three squares\n")
    with pytest.raises(ckpt.CheckpointError, match=r"data.train_file \(.*train.txt\) changed since the run started"):
        open_run(job())
    (work / "train.txt").write_text("a photo of a red circle\na photo of two squares\n")
    (work / "my_reward.py").write_text("def score(images, prompts, metadata):\n    return [1.0] * len(prompts)\n")
    with pytest.raises(ckpt.CheckpointError, match=r"reward.rewards.0.name \(.*my_reward.py:score\) changed"):
        open_run(job())
