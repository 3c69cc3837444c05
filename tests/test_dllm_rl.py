"""RL for diffusion LLMs (`kind: dllm_rl`, issue 29): the one-step estimator, the first inner update's ratio, the
text rewards and a fast end-to-end job on the shipped tiny dLLM."""

from __future__ import annotations

import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from diffrl.kinds.dllm_rl.controller import completion_batch  # noqa: E402
from diffrl.models.dllm.adapter import MaskedDiffusionLM  # noqa: E402
from diffrl.workers.dllm_rl_objectives import DiffuGRPOObjective, WD1Objective, completion_logprobs  # noqa: E402


@pytest.fixture(scope="module")
def lm() -> MaskedDiffusionLM:
    return MaskedDiffusionLM.from_pretrained("builtin:sorting_dllm").eval()


def rows_of(lm: MaskedDiffusionLM, prompts: list[str], answers: list[str], rewards: list[float], groups: list[int]):
    tok = lm.tokenizer
    records = [{"prompt": p, "prompt_ids": tok.encode_prompt(p), "answer_ids": tok.encode_prompt(a)[1:],
                "pad_id": tok.pad_token_id, "eos_id": tok.eos_token_id, "group": g}
               for p, a, g in zip(prompts, answers, groups)]
    return completion_batch(records, rewards, list(range(len(records))), leave_one_out=False)


class Held:
    """The Models an objective sees, over a plain module (no DeepSpeed): enough for the loss's math."""

    def __init__(self, lm):
        self.lm = lm

    def trained(self):
        return self.lm


def test_one_masked_position_gives_the_exact_conditional(lm):
    """With one masked completion slot and nothing else masked, the estimator is log p(o_k | every other token),
    which a plain forward of the network with full attention gives directly."""
    batch = rows_of(lm, ["3141592653589793238462643383279="], ["01122233333444555666778888999999"], [1.0], [0])
    tokens, start = batch.tokens, batch.prompt_end
    k = start + 5
    masked = torch.zeros_like(tokens, dtype=torch.bool)
    masked[0, k] = True
    with torch.no_grad():
        estimate = completion_logprobs(lm, tokens, masked, batch.pad, start)[0, 5]
        noisy = tokens.clone()
        noisy[0, k] = lm.config.mask_token_id
        n = tokens.shape[1]
        logits = lm.model(noisy, torch.arange(n)[None], torch.ones(1, n, n, dtype=torch.bool))
        exact = torch.log_softmax(logits[0, k].float(), -1)[tokens[0, k]]
    assert float(estimate) == pytest.approx(float(exact), abs=1e-5)
    assert float(exact) > -1.0  # the shipped model knows this digit (a check that the slot is the right one)


@pytest.mark.parametrize("mask", ["prompt", "coupled"])
def test_first_inner_update_has_ratio_exactly_one(lm, mask):
    batch = rows_of(lm, ["1234512345123451234512345123451="] * 2,
                    ["01111222223333344444555556666666", "11111222223333344444555550000000"], [1.0, 0.0], [0, 0])
    objective = DiffuGRPOObjective({"mu": 3, "eps": 0.2, "beta": 0.0, "p_mask_prompt": 0.15, "mask": mask,
                                    "coupled_low": 0.2, "coupled_high": 0.8})
    rows = objective.rows(batch, step=7)
    objective.start_pass(0)
    loss, stats = objective.loss(Held(lm), rows)
    assert float(stats["ratio"]) == 1.0 and float(stats["clip_fraction"]) == 0.0
    # pass 0 filled the old log-probabilities of every pass under the pass's own masks: with no update between,
    # later passes also see ratio 1, and their masks differ from pass 0's
    objective.start_pass(2)
    _, later = objective.loss(Held(lm), rows)
    assert float(later["ratio"]) == pytest.approx(1.0, abs=1e-6)
    assert not torch.equal(rows["old"][:, 0], rows["old"][:, 2])
    # the better completion's advantage is positive: descent raises its log-likelihood
    assert batch.advantages.tolist() == [0.5, -0.5] and loss.requires_grad


def test_wd1_needs_no_old_policy(lm):
    batch = rows_of(lm, ["1234512345123451234512345123451="] * 2,
                    ["01111222223333344444555556666666", "11111222223333344444555550000000"], [1.0, 0.0], [0, 0])
    objective = WD1Objective({"mu": 2, "p_mask_prompt": 0.15})
    rows = objective.rows(batch, step=0)
    objective.start_pass(0)
    loss, stats = objective.loss(Held(lm), rows)
    assert loss.requires_grad and float(stats["sequence_logp"]) < 0
    assert not rows["old"].any()  # nothing computed for an old policy


def test_text_rewards_by_hand():
    from diffrl.rewards.base import build_reward

    exact, partial = build_reward("exact_match"), build_reward("char_accuracy")
    meta = [{"reference": "0123"}, {"reference": "0123"}, {"reference": "0123"}]
    completions = ["0123", "0124 ", "3210"]
    assert exact(completions, ["p"] * 3, meta).scores == [1.0, 0.0, 0.0]
    out = partial(completions, ["p"] * 3, meta)
    assert out.scores == [1.0, 0.75, 0.0] and out.details["exact"] == [1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="char_accuracy.*row 0 has no string 'reference'"):
        partial(["1"], ["p"], [{}])


def test_dllm_rl_job_end_to_end(tmp_path):
    """A user's job file with a plain-function custom reward: rollouts, rewards, two inner updates per step, weight
    sync, eval and the saved model."""
    from diffrl.kinds import load_job, run_job
    from diffrl.platform.reporting import MetricsLog

    (tmp_path / "reward.py").write_text(
        "def zeros(completions, prompts, metadata):\n"
        "    return [c.count('0') / max(len(c), 1) for c in completions]\n")
    (tmp_path / "job.yaml").write_text(
        "kind: dllm_rl\nname: e2e\nbackend: local\nmodel: {path: 'builtin:sorting_dllm'}\n"
        "data: {source: sorting, length: 32, heldout: 4}\n"
        "rollout: {prompts_per_step: 2, group_size: 4, batch_size: 8, decode: {temperature: 2.0}}\n"
        "learner: {micro_batch_size: 4, lr: 1.0e-3, diffu_grpo: {mu: 2, beta: 0.04}}\n"
        "reward: {rewards: [{name: char_accuracy, weight: 0.5}, {name: reward.py:zeros, weight: 0.5}]}\n"
        "trainer: {steps: 2, eval_every: 1}\n")
    cfg = load_job(tmp_path / "job.yaml", [f"output_dir={tmp_path / 'runs'}"])
    summary = run_job(cfg, echo=lambda *_: None)
    records = MetricsLog(tmp_path / "runs/e2e/metrics.jsonl").read()
    steps = [r for r in records if "train/loss" in r]
    assert [r["step"] for r in steps] == [1, 2] and [r["weight_version"] for r in steps] == [1, 2]
    assert all(r["reward/std"] > 0 and any(k.startswith("reward/") and k.endswith("reward.py:zeros") for k in r)
               for r in steps), sorted(steps[0])
    assert all(r["train/grad_norm"] > 0 for r in steps)  # the rewards differ inside a group: a real update
    assert [r["step"] for r in records if "eval/headline" in r] == [0, 1, 2]
    generations = (tmp_path / "runs/e2e/heldout_generations.jsonl").read_text().splitlines()
    assert len(generations) == 4 and set(json.loads(generations[0])) == {"prompt", "answer", "reference", "nfe"}
    assert MaskedDiffusionLM.from_pretrained(summary["model"]) is not None
