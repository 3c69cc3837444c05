"""Sol-RL: selection rules, ranking statistics, the NVFP4 exploration copy, and regeneration of the chosen seeds."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from diffrl.algorithms.nvfp4 import fake_quantize
from diffrl.algorithms.sol import kendall_tau, select_seeds, spearman_rho, top_k_agreement
from diffrl.models.low_precision import is_quantized, quantize_linears
from diffrl.models.registry import apply_lora, build_model
from diffrl.kinds import parse_job
from diffrl.kinds.rl.config import RLJobConfig
from diffrl.kinds.rl.controller import compute_advantages
from diffrl.kinds.rl.sol import sol_batch
from diffrl.kinds.rl.roles import start_rl_roles as start_roles
from diffrl.kinds import run_job
from diffrl.utils.weight_sync import pack
from diffrl.workers.batch import SampleRequest
from diffrl.workers.rollout import RolloutWorker


def test_best_worst_picks_exactly_the_top_and_bottom_halves():
    g = torch.Generator().manual_seed(0)
    rewards = torch.rand(5, 12, generator=g)
    rewards[0, :6] = 0.5  # ties
    chosen = select_seeds(rewards, 6, "best_worst")
    for row, picked in zip(rewards, chosen):
        order = sorted(range(12), key=lambda i: (-float(row[i]), i))
        assert set(picked.tolist()) == set(order[:3]) | set(order[-3:])
        assert picked.tolist() == sorted(picked.tolist())
    with pytest.raises(ValueError, match="must be even"):
        select_seeds(rewards, 5, "best_worst")


def test_mean_deviation_and_random_rules():
    rewards = torch.tensor([[0.0, 0.5, 0.5, 1.0, 0.45, 0.55]])
    assert select_seeds(rewards, 2, "mean_deviation").tolist() == [[0, 3]]
    picked = select_seeds(torch.rand(3, 10), 4, "random", torch.Generator().manual_seed(1))
    assert picked.shape == (3, 4) and all(len(set(r.tolist())) == 4 for r in picked)
    with pytest.raises(ValueError, match="unknown rule"):
        select_seeds(rewards, 2, "best")


def test_rank_statistics_by_hand():
    a, b = torch.tensor([1.0, 2, 3, 4]), torch.tensor([1.0, 3, 2, 4])  # one discordant pair of six
    assert kendall_tau(a, b) == pytest.approx((5 - 1) / 6)
    assert spearman_rho(a, b) == pytest.approx(1 - 6 * 2 / (4 * (16 - 1)))  # sum of squared rank gaps = 2
    assert kendall_tau(a, -a) == pytest.approx(-1.0) and spearman_rho(a, a * 10) == pytest.approx(1.0)
    ties, other = torch.tensor([1.0, 1, 2]), torch.tensor([1.0, 2, 3])
    # tau-b: concordant 2, discordant 0, pairs untied in ties 2 and in other 3 -> 2 / sqrt(2 * 3)
    assert kendall_tau(ties, other) == pytest.approx(2 / 6**0.5)
    # average ranks (1.5, 1.5, 3) against (1, 2, 3): Pearson correlation of the ranks
    assert spearman_rho(ties, other) == pytest.approx(1.5 / (1.5**0.5 * 2**0.5))
    assert np.isnan(kendall_tau(torch.ones(4), a)) and np.isnan(spearman_rho(a, torch.ones(4)))
    assert top_k_agreement(torch.tensor([4.0, 3, 2, 1]), torch.tensor([4.0, 1, 3, 2]), 2) == 0.5


def test_nvfp4_copy_report_skip_rules_and_lora_merge():
    model = build_model("tiny_t2i", None)
    apply_lora(model, 4, 8.0, None)
    for name, param in model.denoiser.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)  # nonzero adapters, so the merge matters
    report = quantize_linears(model.denoiser, min_features=16)
    by_name = {r.name.split("base_model.model.")[-1]: r for r in report}
    assert not by_name["transformer.context_embedder"].quantized and by_name["transformer.context_embedder"].reason == "skip rule"
    assert not by_name["transformer.proj_out"].quantized
    attn = by_name["transformer.transformer_blocks.0.attn.to_q"]
    assert attn.quantized and attn.reason == "nvfp4"
    layer = model.denoiser.get_submodule("base_model.model.transformer.transformer_blocks.0.attn.to_q")
    assert is_quantized(layer)
    x = torch.randn(3, 128)
    merged = layer.base_layer.weight + layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    expected = F.linear(fake_quantize(x), fake_quantize(merged), layer.base_layer.bias)
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-6)


def workers(**sol):
    cfg = RLJobConfig(model={"path": "builtin:shapes_base"}, rollout={"strategy": "sol", "group_size": 4,
                                                                        "prompts_per_step": 2, "sol": sol})
    explore_cfg = {**cfg.rollout.model_dump(), "precision": "nvfp4", "num_steps": 6}
    explore = RolloutWorker(cfg.model.model_dump(), explore_cfg)
    regen = RolloutWorker(cfg.model.model_dump(), cfg.rollout.model_dump())
    explore.setup()
    regen.setup()
    return explore, regen


def test_regenerating_chosen_seeds_reproduces_full_precision_images_and_sync_reaches_the_copy():
    explore, regen = workers()
    requests = [SampleRequest("a photo of two squares", {}, 0, 100 + i) for i in range(8)]
    pool = explore.generate(requests)
    direct = regen.generate(requests)
    assert explore.quantization_report() and any(r["quantized"] for r in explore.quantization_report())
    assert (pool.samples - direct.samples).abs().max() > 1e-2  # the NVFP4 copy really differs
    chosen = [requests[i] for i in (6, 1, 3)]
    again = regen.generate(chosen)
    # A seed fixes the full-precision image, whatever else was in the batch (float rounding of CPU kernels differs
    # by batch size at the 1e-6 level, as in test_rollout).
    torch.testing.assert_close(again.samples, direct.samples[[6, 1, 3]], rtol=0, atol=1e-5)
    assert (again.images == direct.images[[6, 1, 3]]).mean() > 0.999
    # A weight sync reaches the quantized copy (its cached weights are refreshed).
    weights = {k: v + 0.01 for k, v in explore.model.denoiser.state_dict().items()}
    explore.load_weights(pack(weights, version=5))
    assert not torch.equal(explore.generate(requests[:2]).samples, pool.samples[:2])


def test_sol_step_advantages_use_regenerated_rewards_only(tmp_path):
    cfg = parse_job({"backend": "local", "output_dir": str(tmp_path),
                     "rollout": {"strategy": "sol", "prompts_per_step": 2, "group_size": 4,
                                 "sol": {"pool_size": 8, "explore_steps": 4, "audit_prompts": 1}},
                     "learner": {"awm": {"num_timesteps": 2}}})
    roles = start_roles(cfg)
    try:
        from diffrl.kinds.rl.data import prompt_splits

        times: dict = {}
        batch, metrics = sol_batch(cfg, roles.rollout, roles.explore, roles.rewards, prompt_splits(cfg)[0], step=0, times=times)
    finally:
        roles.shutdown()
    assert len(batch) == 8 and set(times) == {"time/explore", "time/regenerate", "time/audit", "time/reward"}
    assert {"sol/kendall_tau", "sol/spearman_rho", "sol/top_k_agreement", "sol/explore_reward"} <= set(metrics)
    assert 0.0 <= metrics["sol/top_k_agreement"] <= 1.0
    adv = compute_advantages(batch, cfg)
    batch_copy = batch.select(list(range(len(batch))))
    batch_copy.rewards = batch.rewards + torch.arange(8.0)  # any other reward changes the advantages
    assert not torch.equal(compute_advantages(batch_copy, cfg), adv)
    # and the batch's rewards are the regenerated images' own scores
    from diffrl.rewards.builtin import geneval_shapes

    rescored = geneval_shapes()(batch.images, batch.prompts, batch.metadata).scores
    assert batch.rewards.tolist() == pytest.approx(rescored)


@pytest.mark.parametrize("algorithm,sampler", [("awm", "ode"), ("flow_grpo", "sde"), ("nft", "ode")])
def test_sol_job_runs_end_to_end(tmp_path, algorithm, sampler):
    cfg = parse_job({"name": "sol", "backend": "local", "output_dir": str(tmp_path),
                     "rollout": {"strategy": "sol", "prompts_per_step": 2, "group_size": 4, "num_steps": 4,
                                 "sampler": sampler, "sol": {"pool_size": 8, "explore_steps": 4}},
                     "learner": {"algorithm": algorithm, "awm": {"num_timesteps": 2}, "nft": {"num_timesteps": 2}},
                     "trainer": {"steps": 2, "eval_seeds_per_prompt": 1}})
    summary = run_job(cfg, echo=lambda _: None)
    run_dir = Path(summary["run_dir"])
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "train/loss" in r]
    assert len(steps) == 2 and all("sol/kendall_tau" in r and "time/explore" in r for r in steps)
    report = json.loads((run_dir / "quantization.json").read_text())
    assert list(report) == ["explore"] and any(layer["quantized"] for layer in report["explore"])


@pytest.mark.slow  # colocation itself stays in make test (test_placement)
def test_colocated_explore_workers_share_the_rollout_bundles(ray_cluster, tmp_path):
    import ray

    cfg = parse_job({"output_dir": str(tmp_path),
                     "rollout": {"strategy": "sol", "prompts_per_step": 2, "group_size": 4, "cpus_per_worker": 0.5,
                                 "sol": {"pool_size": 8, "explore_steps": 4, "colocate": True,
                                         "explore_cpus_per_worker": 0.5}},
                     "learner": {"awm": {"num_timesteps": 2}}})
    roles = start_roles(cfg)
    try:
        assert sorted(pool.name for pool in roles.pools) == ["learner", "reward0", "rollout+explore"]

        def where(worker):
            return ray.util.get_current_placement_group().id.hex()

        rollout_pg = ray.get(roles.rollout.handles[0].__ray_call__.remote(where))
        explore_pg = ray.get(roles.explore.handles[0].__ray_call__.remote(where))
        assert rollout_pg == explore_pg
        batch, metrics = sol_batch(cfg, roles.rollout, roles.explore, roles.rewards, [{"prompt": "a photo of a red circle", "tag": "colors",
                                                 "include": [{"class": "circle", "count": 1, "color": "red"}]}] * 2,
                                   step=0, times={})
        assert len(batch) == 8 and "sol/kendall_tau" in metrics
    finally:
        roles.shutdown()


@pytest.mark.slow
def test_sol_rl_raises_held_out_reward(tmp_path):
    """configs/shapes_sol.yaml for 30 steps (about 7 minutes on 2 cores): NVFP4 exploration, regeneration, AWM."""
    from diffrl.kinds import load_job

    cfg = load_job(Path(__file__).resolve().parents[1] / "configs/shapes_sol.yaml",
                   ["trainer.steps=30", "trainer.eval_every=0", f"output_dir={tmp_path}"])
    summary = run_job(cfg, echo=lambda _: None)
    assert summary["final"] - summary["base"] >= 0.05
