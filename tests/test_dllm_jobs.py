"""dLLM jobs on a real local Ray cluster: `kind: dllm_decode` with the shipped tiny dLLM end to end (accuracy,
generations file, report; the Fast-dLLM path with fewer NFEs), a decode worker SIGKILLed mid-job (its prompts are
re-sent: the records equal a clean run's, each prompt once), the job file's checks, and `kind: pretrain` of a tiny
dLLM (the saved model decodes in dllm_decode; slow: N ranks = 1 rank)."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffrl.envs.sorting import heldout_problems, write_prompts_file
from diffrl.kinds import load_job, parse_job, run_job
from diffrl.kinds.dllm_decode.controller import run as decode_controller
from diffrl.kinds.dllm_decode.roles import dllm_decode_roles
from diffrl.platform.config import ConfigError
from test_fault_tolerance import run_with_a_decode_kill

SHIPPED = "builtin:sorting_dllm"


def decode_job(tmp_path, name: str, prompts: int = 32, **sections) -> dict:
    path = write_prompts_file(tmp_path / "prompts.jsonl", heldout_problems(prompts, 32, seed=0))
    job = {"kind": "dllm_decode", "name": name, "output_dir": str(tmp_path / "runs"),
           "model": {"path": SHIPPED}, "data": {"prompts": str(path)},
           "workers": {"num_workers": 2, "cpus_per_worker": 1, "batch_size": 8, "chunk_size": 4}}
    for key, value in sections.items():
        job[key] = {**job.get(key, {}), **value}
    return job


def records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "generations.jsonl").read_text().splitlines()]


FAST = {"rule": "threshold", "threshold": 0.9, "cache": "dual"}


@pytest.fixture(scope="module")
def fast_run(ray_cluster, tmp_path_factory):
    """The Fast-dLLM path (threshold + dual cache) over 32 held-out problems on 2 workers: summary and records."""
    tmp_path = tmp_path_factory.mktemp("fast")
    summary = run_job(parse_job(decode_job(tmp_path, "fast", decode=FAST)), echo=lambda _: None)
    return summary, records(tmp_path / "runs" / "fast"), tmp_path


def test_dllm_decode_end_to_end_baseline_and_fast_path(fast_run, tmp_path):
    baseline = run_job(parse_job(decode_job(tmp_path, "baseline")), echo=lambda _: None)
    run_dir = tmp_path / "runs" / "baseline"
    rows = records(run_dir)
    assert [r["id"] for r in rows] == list(range(32))
    assert all(r["nfe"] == 32 for r in rows)  # one token a step
    assert baseline["decode/accuracy"] >= 0.8
    assert baseline["decode/accuracy"] == sum(r["answer"] == r["reference"] for r in rows) / 32
    assert (run_dir / "report.html").exists() and (run_dir / "figures" / "decode.png").exists()

    fast, fast_rows, _ = fast_run
    assert [r["prompt"] for r in fast_rows] == [r["prompt"] for r in rows]
    assert fast["decode/nfe_per_answer"] < baseline["decode/nfe_per_answer"] / 2
    assert fast["decode/accuracy"] >= baseline["decode/accuracy"] - 0.1


def test_a_decode_worker_killed_mid_job_loses_and_duplicates_no_prompt(fast_run):
    _, clean, tmp_path = fast_run
    cfg = parse_job(decode_job(tmp_path, "faulty", decode=FAST))
    run_dir = cfg.run_dir
    _, restarts = run_with_a_decode_kill(cfg, dllm_decode_roles(cfg), decode_controller)
    assert restarts == 1
    faulty = records(run_dir)
    assert [r["id"] for r in faulty] == list(range(32))
    assert [(r["answer"], r["nfe"]) for r in faulty] == [(r["answer"], r["nfe"]) for r in clean]


def test_the_job_file_is_checked_before_any_worker_starts(tmp_path):
    job = decode_job(tmp_path, "bad")
    with pytest.raises(ConfigError, match="gen_length=30 must be a positive multiple of block_length=8"):
        parse_job({**job, "decode": {"gen_length": 30}})
    with pytest.raises(ConfigError, match="missing.jsonl not found"):
        parse_job({**job, "data": {"prompts": str(tmp_path / "missing.jsonl")}})
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "12="}\n{"reference": "12"}\n')
    with pytest.raises(ConfigError, match="broken.jsonl:2: each line must be an object with a string .prompt."):
        parse_job({**job, "data": {"prompts": str(broken)}})
    with pytest.raises(ConfigError, match="model.path: .*no_such_model is not a directory"):
        parse_job({**job, "model": {"path": "builtin:no_such_model"}})
    with pytest.raises(ConfigError, match="learner.algorithm=block_diffusion does not train model.name=tiny_dllm"):
        load_job("configs/pretrain_dllm.yaml", ["learner.algorithm=block_diffusion"])
    with pytest.raises(ConfigError, match="eval.decode.gen_length=16 must equal data.length"):
        load_job("configs/pretrain_dllm.yaml", ["eval.decode.gen_length=16"])


PRETRAIN = ["trainer.steps=3", "trainer.eval_every=0", "trainer.checkpoint_every=0", "data.heldout=4",
            "learner.batch_size=16", "learner.micro_batch_size=8", "learner.warmup_steps=2",
            "learner.cpus_per_worker=1", "eval.cpus_per_worker=1"]


def test_dllm_pretraining_of_the_block_causal_model_saves_a_model_that_decodes(ray_cluster, tmp_path):
    summary = run_job(load_job("configs/pretrain_dllm_v2.yaml", PRETRAIN + [f"output_dir={tmp_path}", "name=v2"]),
                      echo=lambda _: None)
    assert 0.0 <= summary["final"] <= 1.0
    losses = [json.loads(line) for line in (tmp_path / "v2" / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["train/loss"]) for r in losses if "train/loss" in r)
    decoded = run_job(parse_job({**decode_job(tmp_path, "decode_trained", prompts=4), "model": {"path": summary["model"]},
                                 "decode": {"rule": "threshold", "cache": "dual", "sub_block_length": 4}}),
                      echo=lambda _: None)
    assert decoded["decode/prompts"] == 4


@pytest.mark.slow
@pytest.mark.parametrize("config", ["configs/pretrain_dllm.yaml", "configs/pretrain_dllm_v2.yaml"])
def test_dllm_pretraining_on_two_ranks_equals_one(ray_cluster, tmp_path, config):
    runs = [run_job(load_job(config, PRETRAIN + [f"output_dir={tmp_path}", f"name=r{ranks}",
                                                 f"learner.num_workers={ranks}"]), echo=lambda _: None)
            for ranks in (1, 2)]
    weights = [load_file(str(Path(run["model"]) / "model.safetensors")) for run in runs]
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        torch.testing.assert_close(weights[1][key], weights[0][key], rtol=1e-5, atol=1e-6)
