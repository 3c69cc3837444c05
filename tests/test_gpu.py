"""GPU paths: the same RL step with rollout and learner on CUDA (NCCL for the learner group)."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffrl.models.tiny_t2i import TinyT2I
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
    final = load_file(summary["weights"])
    base = TinyT2I.from_pretrained("builtin:shapes_base").denoiser.state_dict()
    assert any(not torch.equal(final[k], base[k]) for k in final), "training on the GPU must change the weights"
