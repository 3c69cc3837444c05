"""`kind: dllm_rl` on a real local Ray cluster (issue 29): a decode worker SIGKILLed mid-rollout (its shard is re-sent:
the run's metrics and weights equal a clean run's), two learner ranks equal one, and a resumed run finishes with
the weights of an uninterrupted one."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from diffrl import cli
from diffrl.kinds import load_job, run_job
from diffrl.kinds.dllm_rl.controller import run as controller
from diffrl.kinds.dllm_rl.roles import dllm_rl_roles
from test_fault_tolerance import run_with_a_decode_kill

JOB = "configs/dllm_rl_diffu_grpo.yaml"
SMALL = ["model.path=builtin:sorting_dllm", "data.heldout=4", "rollout.prompts_per_step=2", "rollout.group_size=4",
         "rollout.batch_size=2", "rollout.num_workers=2", "learner.micro_batch_size=4", "learner.lr=1e-3",
         "learner.diffu_grpo.mu=2", "rollout.decode.temperature=2.0", "trainer.steps=2", "trainer.eval_every=0",
         "trainer.checkpoint_every=0"]


def metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def trained(record: dict) -> dict:
    return {k: v for k, v in record.items() if k.startswith(("reward/", "train/", "rollout/")) or k == "step"}


@pytest.fixture(scope="module")
def clean(ray_cluster, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("clean")
    summary = run_job(load_job(JOB, [*SMALL, f"output_dir={tmp}", "name=clean"]), echo=lambda _: None)
    return summary, metrics(tmp / "clean")


def test_a_decode_worker_killed_mid_rollout_loses_and_duplicates_no_completion(clean, tmp_path):
    cfg = load_job(JOB, [*SMALL, f"output_dir={tmp_path}", "name=faulty"])
    run_dir = cfg.run_dir
    summary, restarts = run_with_a_decode_kill(cfg, dllm_rl_roles(cfg), controller)
    assert restarts == 1
    clean_summary, clean_records = clean
    steps = [trained(r) for r in metrics(run_dir) if "train/loss" in r]
    assert steps == [trained(r) for r in clean_records if "train/loss" in r]  # same completions, rewards, losses
    ours, theirs = load_file(summary["weights"]), load_file(clean_summary["weights"])
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


@pytest.mark.slow
def test_two_learner_ranks_equal_one(clean, tmp_path):
    summary = run_job(load_job(JOB, [*SMALL, f"output_dir={tmp_path}", "name=two", "learner.num_workers=2",
                                     "learner.micro_batch_size=4"]), echo=lambda _: None)
    one, two = load_file(clean[0]["weights"]), load_file(summary["weights"])
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.slow
def test_a_resumed_run_finishes_with_the_uninterrupted_weights(clean, tmp_path):
    first = [*SMALL, f"output_dir={tmp_path}", "name=clean", "trainer.checkpoint_every=1"]
    assert cli.main(["run", JOB, *first, "trainer.steps=1"]) == 0
    assert cli.main(["run", "--resume", JOB, *first]) == 0
    resumed, uninterrupted = load_file(str(tmp_path / "clean/final.safetensors")), load_file(clean[0]["weights"])
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)
