"""Tiny random SD3, FLUX and SANA pipelines, built offline and saved as diffusers directories, run a full RL step."""

import json
from pathlib import Path

import pytest
import torch

from diffrl.models.diffusers_t2i import DiffusersT2I
from diffrl.models.registry import build_model
from diffrl.models.tiny_pipelines import build_tiny_pipeline
from diffrl.kinds import parse_job
from diffrl.kinds import run_job


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipelines")
    return {family: build_tiny_pipeline(family, root / family) for family in ("sd3", "flux", "sana")}


def job(family: str, path: Path, out: Path, algorithm: str, sampler: str, lora: bool) -> dict:
    return {
        "name": f"{family}_{algorithm}", "backend": "local", "output_dir": str(out),
        "model": {"name": family, "path": str(path), "resolution": 32, "max_sequence_length": 16,
                  "lora": {"enabled": lora, "rank": 4, "alpha": 8}},
        "rollout": {"prompts_per_step": 2, "group_size": 2, "num_steps": 4, "sampler": sampler, "batch_size": 4,
                    "guidance_scale": 2.0 if algorithm in ("flow_grpo", "grpo_guard") else 1.0,
                    "sde_window": 1 if algorithm == "mixgrpo" else 0,
                    "window_tail_compress": 0.5 if algorithm == "mixgrpo" else None},  # MixGRPO-Flash
        "learner": {"algorithm": algorithm, "lr": 1e-3, "micro_batch_size": 4, "awm": {"num_timesteps": 2},
                    "nft": {"num_timesteps": 2}, "dgpo": {"num_timesteps": 1}, "diffusion_dpo": {"num_timesteps": 1}},
        "reward": {"rewards": [{"name": "jpeg_compressibility"}]},
        "trainer": {"steps": 1, "eval_seeds_per_prompt": 1, "eval_metric": "jpeg_compressibility/kb",
                    "eval_label": "JPEG kB", "sample_grid_prompts": 2},
    }


@pytest.mark.parametrize("family,algorithm,sampler,lora", [
    ("sd3", "flow_grpo", "sde", True),
    ("flux", "awm", "ode", True),
    ("sana", "nft", "sa_solver", False),  # SA-Solver rollouts on a diffusers model
    # the peer objectives (issue 30), one pipeline each
    ("sd3", "grpo_guard", "cps", False),
    ("flux", "mixgrpo", "sde", True),  # with MixGRPO-Flash's tail
    ("sana", "dgpo", "ode", False),
    ("sd3", "diffusion_dpo", "ode", True),
])
def test_tiny_pipeline_runs_an_rl_step(pipelines, tmp_path, family, algorithm, sampler, lora):
    cfg = parse_job(job(family, pipelines[family], tmp_path, algorithm, sampler, lora))
    summary = run_job(cfg, echo=lambda _: None)
    records = [json.loads(line) for line in (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    step = next(r for r in records if "train/loss" in r)
    assert all(torch.isfinite(torch.tensor(v)) for k, v in step.items() if k.startswith("train/"))
    assert step["train/grad_norm"] > 0 and step["weight_version"] == 1
    # model calls per sample: the 4 steps, or for MixGRPO-Flash the window (step 0) and one DPM-Solver++ step for
    # the 3 after it (int(3 * 0.5) = 1)
    assert step["rollout/nfe"] == (2 if algorithm == "mixgrpo" else 4)
    if algorithm in ("flow_grpo", "mixgrpo"):
        assert step["train/ratio_mean"] == 1.0  # on-policy, with CFG in both rollout and learner
    if algorithm == "grpo_guard":  # the rebuilt rollout means equal the learner's, to float rounding
        assert step["train/ratio_mean"] == pytest.approx(1.0, abs=1e-5)
    weights = Path(summary["weights"])
    assert weights.is_file()
    from safetensors.torch import load_file

    saved = load_file(str(weights))
    assert saved and all(("lora_" in k) == lora for k in saved)


@pytest.mark.parametrize("family", ["sd3", "flux", "sana"])
def test_adapter_shapes_and_lora_targets(pipelines, family):
    model = build_model(family, str(pipelines[family]), resolution=32, max_sequence_length=16)
    assert isinstance(model, DiffusersT2I) and model.sample_shape == (4, 16, 16)
    cond = model.encode_prompts(["a photo of a cat", "a red circle"])
    x, t = torch.randn(2, *model.sample_shape), torch.tensor([0.8, 0.3])
    with torch.no_grad():
        v = model.velocity(x, t, cond)
        guided = model.velocity(x, t, cond, guidance_scale=3.0, null_cond=model.encode_prompts(["", ""]))
    assert v.shape == x.shape and not torch.equal(v, guided)
    images = model.decode(x)
    assert images.shape == (2, 32, 32, 3) and images.dtype.name == "uint8"
    names = [n for n, _ in model.denoiser.named_modules()]
    for target in model.lora_target_modules():
        assert any(n.endswith(target) for n in names), f"{family}: LoRA target {target} matches no module"


def test_missing_model_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.path.*never downloads"):
        build_model("sd3", str(tmp_path / "nope"), resolution=32)
    with pytest.raises(ValueError, match="model.resolution=30 must be a multiple"):
        DiffusersT2I.from_pretrained("sd3", str(build_tiny_pipeline("sd3", tmp_path / "sd3")), 30, 16)


def _denoise(model, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, *model.sample_shape, generator=generator)
    t = torch.tensor([0.3, 0.8])
    with torch.no_grad():
        return model.denoiser(x, t, model.encode_prompts(["a red circle", "two squares"]))


@pytest.mark.parametrize("family,lora", [("sd3", True), ("flux", True), ("sana", False)])
def test_exported_models_compute_what_the_trained_one_does(pipelines, tmp_path, family, lora):
    """`diffrl export` of a real (one-step) run: the diffusers folder (LoRA merged) and the LoRA file loaded by
    `pipe.load_lora_weights` give the trained denoiser's outputs; the trained one is rebuilt the way the run's
    workers build it (base pipeline, adapters, final.safetensors)."""
    from safetensors.torch import load_file

    from diffrl.cli import main
    from diffrl.models.diffusers_t2i import DiffusersT2I, load_pipeline
    from diffrl.models.registry import apply_lora, load_trainable_state_dict

    cfg = parse_job(job(family, pipelines[family], tmp_path, "awm", "ode", lora))
    run_dir = Path(run_job(cfg, echo=lambda _: None)["run_dir"])
    trained = build_model(family, str(pipelines[family]), resolution=32, max_sequence_length=16)
    base = _denoise(trained)
    if lora:
        apply_lora(trained, 4, 8.0, None)
    load_trainable_state_dict(trained.denoiser, load_file(str(run_dir / "final.safetensors")))
    expected = _denoise(trained)
    # The run changed the model by far more than the tolerance below (measured 3e-4 to 3e-3), so a wrong LoRA scale
    # or a missed layer shows.
    assert float((expected - base).abs().max()) > 2e-4

    assert main(["export", str(run_dir), str(tmp_path / "pipe"), "--format", "diffusers"]) == 0
    exported = build_model(family, str(tmp_path / "pipe"), resolution=32, max_sequence_length=16)
    torch.testing.assert_close(_denoise(exported), expected, rtol=1e-4, atol=1e-5)
    if lora:
        assert main(["export", str(run_dir), str(tmp_path / "lora"), "--format", "lora"]) == 0
        pipeline = load_pipeline(family, str(pipelines[family]))
        pipeline.load_lora_weights(str(tmp_path / "lora"))
        loaded = DiffusersT2I(family, pipeline, 32, 16)
        torch.testing.assert_close(_denoise(loaded), expected, rtol=1e-4, atol=1e-5)
    else:
        assert main(["export", str(run_dir), str(tmp_path / "lora"), "--format", "lora"]) == 2  # not a LoRA run
    assert main(["export", str(run_dir), str(tmp_path / "pipe")]) == 2  # exists: nothing overwritten


def test_offline_dpo_pairs_train_a_diffusers_pipeline(pipelines, tmp_path):
    """Offline Diffusion-DPO on the tiny SD3 pipeline: the pairs' 32x32 images are VAE-encoded into its 16x16
    latents (which decode back to images of the pairs' size) and one step trains."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    lines = []
    for i in range(2):
        for key in ("chosen", "rejected"):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / f"img/{i}{key}.png")
        lines.append(json.dumps({"prompt": f"prompt {i}", "chosen": f"img/{i}chosen.png",
                                 "rejected": f"img/{i}rejected.png"}))
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines))
    model = build_model("sd3", str(pipelines["sd3"]), resolution=32, max_sequence_length=16)
    images = np.stack([np.asarray(Image.open(tmp_path / "img/0chosen.png"))])
    latents = model.encode_images(images)
    assert latents.shape == (1, *model.sample_shape) and model.decode(latents).shape == images.shape
    with pytest.raises(ValueError, match="it draws 32x32"):
        model.encode_images(images[:, :16, :16])
    spec = job("sd3", pipelines["sd3"], tmp_path, "diffusion_dpo", "ode", False)
    spec["learner"]["diffusion_dpo"]["pairs"] = str(tmp_path / "pairs.jsonl")
    summary = run_job(parse_job(spec), echo=lambda _: None)
    records = [json.loads(line) for line in (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    step = next(r for r in records if "train/loss" in r)
    assert step["train/grad_norm"] > 0 and step["rollout/nfe"] == 0 and step["reward/mean"] == 0.5
