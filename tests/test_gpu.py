"""GPU paths: the same RL step with rollout and learner on CUDA (NCCL for the learner group)."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffrl.models.tiny_t2i import TinyT2I
from diffrl.kinds import load_job
from diffrl.kinds import run_job

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.gpu
def test_rl_steps_on_gpu(tmp_path):
    cfg = load_job(REPO / "configs/shapes_awm.yaml", [
        "trainer.steps=2", "rollout.prompts_per_step=2", "rollout.group_size=4", "trainer.eval_seeds_per_prompt=1",
        f"output_dir={tmp_path}", "rollout.gpus_per_worker=0.5", "learner.gpus_per_worker=0.5",
    ])
    summary = run_job(cfg, echo=lambda _: None)
    assert torch.isfinite(torch.tensor([summary["base"], summary["final"]])).all()
    final = load_file(summary["weights"])
    base = TinyT2I.from_pretrained("builtin:shapes_base").denoiser.state_dict()
    assert any(not torch.equal(final[k], base[k]) for k in final), "training on the GPU must change the weights"


@pytest.mark.gpu
def test_low_precision_explore_copy_on_gpu():
    """nvfp4 with quant_backend auto: transformer-engine's NVFP4 block scaling on 10.x, emulated elsewhere; the copy
    runs and differs from full precision."""
    from diffrl.kinds.rl.config import RLJobConfig
    from diffrl.workers.batch import SampleRequest
    from diffrl.workers.rollout import RolloutWorker

    cfg = RLJobConfig()
    explore = RolloutWorker(cfg.model.model_dump(), {**cfg.rollout.model_dump(), "precision": "nvfp4"})
    full = RolloutWorker(cfg.model.model_dump(), cfg.rollout.model_dump())
    explore.setup()
    full.setup()
    requests = [SampleRequest("a photo of a red circle", {}, 0, i) for i in range(4)]
    a, b = explore.generate(requests), full.generate(requests)
    assert (a.samples - b.samples).abs().max() > 1e-3
    assert any(layer["quantized"] for layer in explore.quantization_report())


@pytest.mark.gpu
def test_transformer_engine_recipe_follows_compute_capability():
    pytest.importorskip("transformer_engine")
    from diffrl.models.low_precision import te_recipe

    major, _ = torch.cuda.get_device_capability()
    if major == 10:
        assert type(te_recipe("nvfp4")).__name__ == "NVFP4BlockScaling"
    else:
        with pytest.raises(RuntimeError, match="compute capability 10.x"):
            te_recipe("nvfp4")
    if major >= 9:
        assert type(te_recipe("fp8")).__name__ == "Float8CurrentScaling"


@pytest.mark.gpu
def test_dllm_decoding_on_gpu_in_bf16_matches_the_cpu_accuracy():
    from diffrl.envs.sorting import heldout_problems
    from diffrl.models.dllm.adapter import MaskedDiffusionLM
    from diffrl.models.dllm.generate import DecodeOptions, generate

    problems = heldout_problems(64, 32, seed=0)
    lm = MaskedDiffusionLM.from_pretrained("builtin:sorting_dllm").eval().to("cuda", torch.bfloat16)
    prompts = [lm.tokenizer.encode_prompt(p["prompt"]) for p in problems]
    for options in (DecodeOptions(), DecodeOptions(rule="threshold", cache="dual")):
        results = generate(lm, prompts, options)
        accuracy = sum(r.text == p["reference"] for r, p in zip(results, problems)) / len(problems)
        assert accuracy >= 0.85, (options, accuracy)


@pytest.mark.gpu
def test_dllm_rl_steps_on_gpu_in_bf16(tmp_path):
    """The dLLM RL job with bf16 decode workers and the learner on CUDA: two steps change the weights."""
    from diffrl.models.dllm.adapter import MaskedDiffusionLM

    cfg = load_job(REPO / "configs/dllm_rl_diffu_grpo.yaml", [
        "model.path=builtin:sorting_dllm", "model.dtype=bf16", "trainer.steps=2", "trainer.eval_every=0",
        "trainer.checkpoint_every=0", "data.heldout=8", "rollout.prompts_per_step=2", "rollout.group_size=4",
        "learner.micro_batch_size=4", "rollout.decode.temperature=2.0", "rollout.gpus_per_worker=0.5",
        "learner.gpus_per_worker=0.5", f"output_dir={tmp_path}"])
    summary = run_job(cfg, echo=lambda _: None)
    trained = MaskedDiffusionLM.from_pretrained(summary["model"]).model.state_dict()
    base = MaskedDiffusionLM.from_pretrained("builtin:sorting_dllm").model.state_dict()
    assert any(not torch.equal(trained[k].cpu(), base[k]) for k in base), "training on the GPU must change the weights"
