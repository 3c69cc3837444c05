"""`kind: pretrain` as a user runs it: `diffrl run configs/pretrain_shapes.yaml` on Ray — two data-parallel learner
ranks train the weights one rank does, a SIGKILLed run resumes bitwise, the trained model loads as an RL job's
model.path — and the data source's determinism that both rest on."""

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_resume import assert_same_weights, diffrl, finish

from diffrl import cli
from diffrl.kinds import load_job
from diffrl.kinds.pretrain.data import build_source

REPO = Path(__file__).resolve().parents[1]
JOB = str(REPO / "configs/pretrain_shapes.yaml")
SIX_STEPS = ["trainer.steps=6", "trainer.checkpoint_every=2", "learner.batch_size=8", "learner.micro_batch_size=4",
             "learner.warmup_steps=2", "learner.cpus_per_worker=1", "eval.cpus_per_worker=1", "trainer.eval_every=0",
             "trainer.eval_seeds_per_prompt=1", "trainer.wandb.mode=disabled"]


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


@pytest.fixture(scope="module")
def one_rank(ray_cluster, tmp_path_factory) -> Path:
    """An uninterrupted one-rank run (in this process, on the module's Ray cluster)."""
    out = tmp_path_factory.mktemp("one_rank")
    assert cli.main(["run", JOB, f"output_dir={out}", *SIX_STEPS]) == 0
    return out / "pretrain_shapes"


def test_two_learner_ranks_train_the_weights_of_one(one_rank, tmp_path, capsys):
    assert cli.main(["run", JOB, f"output_dir={tmp_path}", "learner.num_workers=2", *SIX_STEPS]) == 0
    assert "held-out GenEval-shapes strict" in capsys.readouterr().out
    one = load_file(str(one_rank / "final.safetensors"))
    two = load_file(str(tmp_path / "pretrain_shapes" / "final.safetensors"))
    assert one.keys() == two.keys() and any(k.startswith("text_encoder.") for k in one)  # both modules train
    for key in one:
        torch.testing.assert_close(one[key], two[key], rtol=1e-4, atol=1e-5, msg=key)
    records = [json.loads(line) for line in (one_rank / "metrics.jsonl").read_text().splitlines()]
    assert losses_logged(one_rank) == [1, 2, 3, 4, 5, 6] and any("eval/headline" in r for r in records)


@pytest.mark.slow  # make test keeps RL's SIGKILL resume (test_resume) on the same runtime; this runs in test-all
def test_sigkill_then_resume_is_bitwise(one_rank, tmp_path):
    args = ["run", JOB, f"output_dir={tmp_path}", *SIX_STEPS]
    run_dir = tmp_path / "pretrain_shapes"
    proc = diffrl(*args, cwd=tmp_path, start_new_session=True)
    wait_until(lambda: (run_dir / "checkpoints" / "step_000002").is_dir() and 3 in losses_logged(run_dir), proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "final.safetensors").exists()
    out = finish(diffrl(*args, "--resume", cwd=tmp_path))
    assert "resuming from step" in out
    assert_same_weights(run_dir / "final.safetensors", one_rank / "final.safetensors")
    assert losses_logged(run_dir) == [1, 2, 3, 4, 5, 6]  # the steps after the checkpoint were redone, once


def test_the_saved_model_is_an_rl_jobs_model_path(one_rank, tmp_path):
    """It validates and builds with exactly the trained weights."""
    model_dir = one_rank / "model"
    assert "valid rl job" in finish(diffrl("run", str(REPO / "configs/shapes_awm.yaml"), f"model.path={model_dir}",
                                           "--check", cwd=tmp_path))
    from diffrl.models.registry import build_model

    model = build_model("tiny_t2i", str(model_dir))
    trained = load_file(str(one_rank / "final.safetensors"))
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
