"""`kind: pretrain` as a user runs it: `diffrl run configs/pretrain_shapes.yaml` on Ray — two data-parallel learner
ranks train the weights one rank does, a SIGKILLed run resumes bitwise, the trained model loads as an RL job's
model.path — and the data source's determinism that both rest on."""

import json
import os
import signal
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from test_resume import assert_same_weights, diffrl, finish

from diffrl import cli
from diffrl.kinds import load_job
from diffrl.kinds.pretrain.data import build_source

REPO = Path(__file__).resolve().parents[1]
JOB = str(REPO / "configs/pretrain_shapes.yaml")
FAST = ["learner.batch_size=8", "learner.micro_batch_size=4", "learner.warmup_steps=2", "learner.cpus_per_worker=1",
        "eval.cpus_per_worker=1", "trainer.eval_every=0", "trainer.eval_seeds_per_prompt=1",
        "trainer.wandb.mode=disabled"]


def test_the_data_stream_is_a_function_of_seed_and_step():
    source = build_source(load_job(JOB))
    first, again = source.batch(7, 16), build_source(load_job(JOB)).batch(7, 16)
    assert torch.equal(first.x0, again.x0) and first.prompts == again.prompts
    assert torch.equal(first.seeds, again.seeds)
    assert not torch.equal(first.x0, source.batch(8, 16).x0)
    heldout = {p["prompt"] for p in source.heldout}
    assert not heldout & set(first.prompts)  # held-out prompts are never trained on
    assert first.x0.shape == (16, 3, 30, 30) and first.x0.min() >= -1 and first.x0.max() <= 1
    halves = first.split(2)
    assert [len(h) for h in halves] == [8, 8] and halves[1].prompts == first.prompts[8:]


def test_two_learner_ranks_train_the_weights_of_one(ray_cluster, tmp_path, capsys):
    finals = {}
    for ranks in (1, 2):
        out = tmp_path / f"ranks{ranks}"
        assert cli.main(["run", JOB, f"output_dir={out}", "trainer.steps=3", f"learner.num_workers={ranks}",
                         *FAST]) == 0
        finals[ranks] = load_file(str(out / "pretrain_shapes" / "final.safetensors"))
        records = [json.loads(line) for line in (out / "pretrain_shapes" / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records if "train/loss" in r] == [1, 2, 3]
        assert any("eval/headline" in r for r in records)
    assert "held-out GenEval-shapes strict" in capsys.readouterr().out
    one, two = finals[1], finals[2]
    assert one.keys() == two.keys() and any(k.startswith("text_encoder.") for k in one)  # both modules train
    for key in one:
        torch.testing.assert_close(one[key], two[key], rtol=1e-4, atol=1e-5, msg=key)


def test_sigkill_then_resume_is_bitwise_and_the_model_loads_in_rl(tmp_path):
    args = ["run", JOB, "trainer.steps=12", "trainer.checkpoint_every=4", *FAST]
    reference = tmp_path / "reference"
    finish(diffrl(*args, f"output_dir={reference}", cwd=tmp_path))
    run_dir = tmp_path / "killed" / "pretrain_shapes"
    proc = diffrl(*args, f"output_dir={tmp_path / 'killed'}", cwd=tmp_path, start_new_session=True)
    wait_until(lambda: (run_dir / "checkpoints" / "step_000004").is_dir() and 5 in losses_logged(run_dir), proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "final.safetensors").exists()
    out = finish(diffrl(*args, f"output_dir={tmp_path / 'killed'}", "--resume", cwd=tmp_path))
    assert "resuming from step" in out
    assert_same_weights(run_dir / "final.safetensors", reference / "pretrain_shapes" / "final.safetensors")
    assert losses_logged(run_dir) == list(range(1, 13))  # the steps after the checkpoint were redone, once

    # The saved model is an RL job's model.path: the rollout worker builds it and samples.
    model_dir = reference / "pretrain_shapes" / "model"
    check = diffrl("run", str(REPO / "configs/shapes_awm.yaml"), f"model.path={model_dir}", "--check", cwd=tmp_path)
    assert "valid rl job" in finish(check)
    from diffrl.models.registry import build_model

    model = build_model("tiny_t2i", str(model_dir))
    trained = load_file(str(reference / "pretrain_shapes" / "final.safetensors"))
    assert model.state_dict().keys() == trained.keys()
    assert all(torch.equal(model.state_dict()[k], trained[k]) for k in trained)


def losses_logged(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    records = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written
            continue
    return [r["step"] for r in records if "train/loss" in r]


def wait_until(condition, proc, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, proc.stdout.read()[-4000:]
        assert time.monotonic() < deadline, "the run did not get there in time"
        time.sleep(0.02)


def test_pretrain_shapes_is_an_alias_of_the_config_file():
    from diffrl.cli import PRETRAIN_SHAPES
    from diffrl.kinds import parse_job

    assert parse_job(dict(PRETRAIN_SHAPES)).model_dump() == load_job(JOB).model_dump()
