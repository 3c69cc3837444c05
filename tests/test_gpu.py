"""GPU paths: the same RL step with rollout and learner on CUDA (NCCL for the learner group)."""

from pathlib import Path

import pytest
import torch

from diffrl.platform.config import load_job
from diffrl.platform.rl_loop import run_rl

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.gpu
def test_rl_steps_on_gpu(tmp_path):
    cfg = load_job(REPO / "configs/shapes_awm.yaml", [
        "trainer.steps=2", "rollout.prompts_per_step=2", "rollout.group_size=4", "trainer.eval_seeds_per_prompt=1",
        f"output_dir={tmp_path}", "rollout.gpus_per_worker=0.5", "learner.gpus_per_worker=0.5",
    ])
    summary = run_rl(cfg, echo=lambda _: None)
    assert torch.isfinite(torch.tensor([summary["base"], summary["final"]])).all()
