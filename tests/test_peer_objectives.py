"""GRPO-Guard, MixGRPO, DGPO and Diffusion-DPO: one learner step each on a real DeepSpeed engine, fed by a real
rollout worker on the built-in tiny model; the config checks that tie them to the rollout."""

import pytest
import torch

from diffrl.algorithms.advantages import group_advantages
from diffrl.kinds import parse_job
from diffrl.kinds.rl.config import RLJobConfig
from diffrl.kinds.rl.data import step_requests
from diffrl.models.tiny_t2i import TinyT2I
from diffrl.workers.batch import SampleRequest
from diffrl.workers.objectives import objective_class
from diffrl.workers.rollout import RolloutWorker
from diffrl.workers.sampling import sample
from test_objectives import PROMPTS, REWARDS, learner_step, moved


def job(algorithm: str, learner: dict | None = None, **rollout) -> RLJobConfig:
    return RLJobConfig(
        model={"path": None},
        rollout={"num_steps": 6, "prompts_per_step": 2, "group_size": 4, "batch_size": 8, **rollout},
        learner={"algorithm": algorithm, "micro_batch_size": 8, "lr": 1e-3, **(learner or {})},
    )


def rollout_batch(cfg: RLJobConfig, window_start: int | None = None, rewards=REWARDS):
    worker = RolloutWorker(cfg.model.model_dump(), cfg.rollout.model_dump(),
                           store_trajectory=objective_class(cfg.learner.algorithm).trajectories)
    worker.setup()
    out = worker.generate([SampleRequest(PROMPTS[i // 4], {}, i // 4, 70 + i, window_start=window_start)
                           for i in range(8)])
    out.rewards = rewards.clone()
    out.advantages = group_advantages(out.rewards, out.group_ids, clip=5.0)
    return out


@pytest.mark.parametrize("sampler", ["sde", "cps"])
def test_grpo_guard_on_policy_normalized_ratio_is_one_and_the_step_trains(sampler, tmp_path):
    """The rollout policy's step means, rebuilt from the stored steps and their seeded noise, equal the learner's
    on-policy means: the normalized ratio is 1 (to float rounding) and its log has mean 0."""
    cfg = job("grpo_guard", sampler=sampler)
    batch = rollout_batch(cfg)
    metrics, before, after, version = learner_step(cfg, batch, tmp_path)
    assert metrics["ratio_mean"] == pytest.approx(1.0, abs=1e-5)
    assert abs(metrics["log_ratio_mean"]) < 1e-5 and metrics["clipfrac"] == 0.0
    assert moved(before, after) > 10 and version == 1


def test_grpo_guard_with_both_switches_off_is_flow_grpo_and_each_switch_changes_the_update(tmp_path):
    batch = rollout_batch(job("grpo_guard", sampler="sde"))
    _, _, flow, _ = learner_step(job("flow_grpo", sampler="sde"), batch, tmp_path / "flow")
    updates = {}
    for norm, reweight in ((False, False), (True, False), (False, True)):
        cfg = job("grpo_guard", {"grpo_guard": {"ratio_norm": norm, "reweight": reweight}}, sampler="sde")
        updates[norm, reweight] = learner_step(cfg, batch, tmp_path / f"{norm}{reweight}")[2]
    assert all(torch.equal(updates[False, False][k], flow[k]) for k in flow)  # bitwise Flow-GRPO's step
    for switched in ((True, False), (False, True)):
        assert any(not torch.equal(updates[switched][k], flow[k]) for k in flow), switched


def test_mixgrpo_trains_on_the_requested_window(tmp_path):
    cfg = job("mixgrpo", sampler="sde", sde_window=2)
    batch = rollout_batch(cfg, window_start=3)
    assert batch.step_index.tolist() == [[3, 4]] * 8  # the window the controller asked for, for every sample
    metrics, before, after, _ = learner_step(cfg, batch, tmp_path)
    assert metrics["ratio_mean"] == 1.0 and moved(before, after) > 10


def test_mixgrpo_requests_carry_the_sliding_window():
    cfg = parse_job({"rollout": {"sampler": "sde", "num_steps": 10, "sde_window": 4},
                     "learner": {"algorithm": "mixgrpo", "mixgrpo": {"shift_every": 2, "stride": 1}}})
    prompts = [{"prompt": p} for p in PROMPTS]
    starts = [{r.window_start for r in step_requests(prompts, cfg, step)} for step in (0, 1, 2, 5, 11, 12)]
    assert starts == [{0}, {0}, {1}, {2}, {5}, {0}]  # max start 10 - 1 - 4 = 5, then the window wraps


def test_mixgrpo_flash_tail_cuts_model_calls_and_stays_close():
    model = TinyT2I.from_pretrained("builtin:shapes_base")
    cond = model.encode_prompts(["a photo of a red circle"] * 2)
    common = {"num_steps": 10, "sampler": "sde", "noise_level": 0.0, "sde_window": 2, "window_starts": [1, 1]}
    full = sample(model, cond, [1, 2], **common)
    flash = sample(model, cond, [1, 2], **common, tail_compress=0.4)
    assert full.nfe == 10 and flash.nfe == 3 + 2  # window ends at step 3; 7 steps left cut to int(2.8) = 2
    error = (flash.samples - full.samples).abs().mean() / full.samples.abs().mean()
    assert 0 < error < 0.15, error
    with pytest.raises(ValueError, match="one window start"):
        sample(model, cond, [1, 2], **{**common, "window_starts": [1, 2]}, tail_compress=0.4)


def test_dgpo_step_trains_on_whole_groups(tmp_path):
    cfg = job("dgpo", {"dgpo": {"num_timesteps": 2, "timestep_fraction": 0.9}})
    batch = rollout_batch(cfg)
    metrics, before, after, _ = learner_step(cfg, batch, tmp_path)
    assert 0 < metrics["sigmoid_weight"] < 1 and metrics["kl"] == 0.0
    assert moved(before, after) > 10


def test_diffusion_dpo_step_trains_on_best_worst_pairs(tmp_path):
    cfg = job("diffusion_dpo", {"diffusion_dpo": {"num_timesteps": 2}, "micro_batch_size": 2})
    batch = rollout_batch(cfg)
    objective = objective_class("diffusion_dpo")(cfg.learner.diffusion_dpo.model_dump(), cfg.rollout.model_dump())
    rows = objective.rows(batch, 0)
    assert rows["index"].tolist() == [1, 1, 4, 4]  # the winners: rewards 0.9 and 1.0
    torch.testing.assert_close(rows["x0_l"][0], batch.samples[0])  # group 0's worst: reward 0.1
    metrics, before, after, _ = learner_step(cfg, batch, tmp_path)
    assert metrics["dpo_accuracy"] == 0.0  # policy == reference before the step: margins are exactly 0
    assert moved(before, after) > 10


def test_dgpo_micro_batches_follow_whole_groups_with_a_notice():
    cfg = parse_job({"learner": {"algorithm": "dgpo", "micro_batch_size": 100, "dgpo": {"num_timesteps": 4}},
                     "rollout": {"prompts_per_step": 6, "group_size": 4}})
    assert cfg.learner.micro_batch_size == 96  # 6 groups x 16 rows: the largest whole-group divisor under 100
    assert any("learner.micro_batch_size=96 (was 100)" in n for n in cfg._notices)


def test_dgpo_refuses_a_micro_batch_that_splits_a_group():
    objective = objective_class("dgpo")({"num_timesteps": 1, "timestep_fraction": 0.9, "beta_dpo": 1.0,
                                         "kl_beta": 0.0}, {"group_size": 4})
    rows = {"label": torch.tensor([0, 0, 0, 0, 1, 1])}  # group 1 has 2 of its 4 rows here
    with pytest.raises(ValueError, match="split a group"):
        objective.loss(None, rows, None)


def test_diffusion_dpo_counts_pair_rows_in_integers():
    objective = objective_class("diffusion_dpo")({"num_timesteps": 7}, {"group_size": 3})
    assert objective.rows_for(27, "diffusion_dpo") == 63  # 9 groups x 7 timesteps (27 * 7 / 3 is 63.00000000000001)
    with pytest.raises(ValueError, match="not whole groups of rollout.group_size=3"):
        objective.rows_for(28, "diffusion_dpo")


@pytest.mark.parametrize("learner,rollout,message", [
    ({"algorithm": "mixgrpo"}, {"sampler": "sde"}, "rollout.sde_window > 0"),
    ({"algorithm": "grpo_guard"}, {"sampler": "ode"}, "rollout.sampler"),
    ({"algorithm": "awm"}, {"window_tail_compress": 0.4}, "learner.algorithm=mixgrpo"),
    ({"algorithm": "grpo_guard"}, {"sampler": "sde", "noise_level": 0.0}, "rollout.noise_level > 0"),
    ({"algorithm": "diffusion_dpo", "num_workers": 2}, {"prompts_per_step": 3, "group_size": 4},
     "learner.num_workers=2 must divide rollout.prompts_per_step=3"),
])
def test_peer_objective_configs_name_the_keys_to_change(learner, rollout, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("(", r"\(")):
        parse_job({"learner": learner, "rollout": rollout})


def test_mixgrpo_refuses_an_eval_on_the_rollout_sampler():
    with pytest.raises(ValueError, match="trainer.eval_sampler=rollout is not supported"):
        parse_job({"learner": {"algorithm": "mixgrpo"}, "rollout": {"sampler": "sde", "sde_window": 2},
                   "trainer": {"eval_sampler": "rollout"}})
