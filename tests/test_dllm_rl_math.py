"""diffrl.algorithms.dllm_rl against hand-worked values (issue 29)."""

from __future__ import annotations

import math

import pytest
import torch

from diffrl.algorithms.dllm_rl import (centered_advantages, coupled_logprobs, coupled_masks, diffu_grpo_loss, k3_kl,
                                       prompt_masks, token_logprobs, wd1_loss, wd1_weights)


def gens(n: int, seed: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def test_advantages_by_hand():
    rewards, groups = torch.tensor([1.0, 0.0, 0.0, 2.0, 2.0, 5.0]), torch.tensor([0, 0, 0, 1, 1, 2])
    assert centered_advantages(rewards, groups).tolist() == pytest.approx([2 / 3, -1 / 3, -1 / 3, 0, 0, 0])
    # leave-one-out: 1 - (0 + 0) / 2, 0 - (1 + 0) / 2, ...; a group of one gets 0
    assert centered_advantages(rewards, groups, leave_one_out=True).tolist() == pytest.approx(
        [1.0, -0.5, -0.5, 0, 0, 0])
    with pytest.raises(ValueError, match="1-D"):
        centered_advantages(rewards[None], groups)


def test_prompt_masks_mask_the_whole_completion_and_a_share_of_the_prompt():
    masks = prompt_masks(6, 10, 0.0, gens(3))
    assert masks[:, 6:].all() and not masks[:, :6].any()
    masks = prompt_masks(2000, 2010, 0.15, gens(2))
    assert masks[:, 2000:].all()
    assert 0.12 < float(masks[:, :2000].float().mean()) < 0.18
    assert torch.equal(prompt_masks(20, 30, 0.5, gens(2)), prompt_masks(20, 30, 0.5, gens(2)))  # seeded per row
    with pytest.raises(ValueError, match="p_mask_prompt"):
        prompt_masks(2, 4, 1.0, gens(1))


def test_coupled_masks_cover_every_completion_token_exactly_once():
    first, second, t = coupled_masks(5, 40, gens(8))
    completion = torch.zeros(40, dtype=torch.bool)
    completion[5:] = True
    assert torch.equal(first ^ second, completion.expand(8, -1)) and not (first & second).any()
    assert not first[:, :5].any() and not second[:, :5].any()
    assert ((t >= 0.2) & (t <= 0.8)).all() and len(set(t.tolist())) == 8  # one ratio per row
    # each row is a function of its own generator only
    alone, _, t_alone = coupled_masks(5, 40, gens(1, seed=3))
    assert torch.equal(alone[0], first[3]) and float(t_alone[0]) == float(t[3])


def test_token_and_coupled_logprobs_by_hand():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]]))
    assert token_logprobs(logits, torch.tensor([[0, 2]]))[0].tolist() == pytest.approx([math.log(0.5), math.log(0.8)])
    full, first, second = torch.tensor([[-1.0, -1.0]]), torch.tensor([[-0.5, -9.0]]), torch.tensor([[-9.0, -0.3]])
    out = coupled_logprobs(full, first, second, torch.tensor([[True, False]]), torch.tensor([0.25]))
    # token 0 from the first pass: (-1 + -0.5 / 0.25) / 2; token 1 from the second: (-1 + -0.3 / 0.75) / 2
    assert out[0].tolist() == pytest.approx([-1.5, -0.7])


def test_diffu_grpo_loss_by_hand():
    logp = torch.zeros(2, 3)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    advantages = torch.tensor([1.0, -1.0])
    # the first inner update: old == current, the ratio is exactly 1, the loss -mean over tokens of A
    loss, stats = diffu_grpo_loss(logp, logp.clone(), None, advantages, mask, eps=0.2, beta=0.0)
    assert float(loss) == pytest.approx(-(1 + 1 - 1) / 3) and float(stats["ratio"]) == 1.0
    assert float(stats["clip_fraction"]) == 0.0
    # ratio 2: the positive advantage is clipped at 1.2, the negative one is not (min keeps -2)
    old = torch.full((2, 3), -math.log(2.0))
    loss, stats = diffu_grpo_loss(logp, old, None, advantages, mask, eps=0.2, beta=0.0)
    assert float(loss) == pytest.approx((-1.2 - 1.2 + 2.0) / 3) and float(stats["clip_fraction"]) == 1.0
    # the k3 KL: ref = log 0.5 against logp = 0 gives 0.5 + log 2 - 1 per token, times beta
    ref = torch.full((2, 3), math.log(0.5))
    kl = 0.5 + math.log(2) - 1
    assert float(k3_kl(logp, ref)[0, 0]) == pytest.approx(kl)
    loss, stats = diffu_grpo_loss(logp, logp.clone(), ref, advantages, mask, eps=0.2, beta=0.04)
    assert float(loss) == pytest.approx(-1 / 3 + 0.04 * kl) and float(stats["kl"]) == pytest.approx(kl)
    with pytest.raises(ValueError, match="reference"):
        diffu_grpo_loss(logp, logp, None, advantages, mask, eps=0.2, beta=0.04)


def test_diffu_grpo_gradient_pushes_the_better_completion_up():
    logp = torch.zeros(2, 1, requires_grad=True)
    loss, _ = diffu_grpo_loss(logp, logp.detach(), None, torch.tensor([1.0, -1.0]), torch.ones(2, 1, dtype=torch.bool),
                              eps=0.2, beta=0.0)
    loss.backward()
    assert logp.grad[:, 0].tolist() == pytest.approx([-0.5, 0.5])  # descent raises row 0's log-prob


def test_wd1_by_hand():
    advantages, groups = torch.tensor([1.0, -1.0, 0.5, 0.5]), torch.tensor([0, 0, 1, 1])
    high = math.e / (math.e + 1 / math.e)
    assert wd1_weights(advantages, groups).tolist() == pytest.approx([1 - 2 * high, 2 * high - 1, 0.0, 0.0])
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -0.5], [-3.0, 0.0], [-1.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[1, 1], [1, 0], [1, 1], [1, 1]], dtype=torch.bool)
    loss, stats = wd1_loss(logp, advantages, groups, mask)
    # group 0: w0 * (-3) + w1 * (-0.5); group 1 has equal advantages (weights 0); mean over the 2 groups
    assert float(loss.detach()) == pytest.approx(((1 - 2 * high) * -3 + (2 * high - 1) * -0.5) / 2)
    assert float(stats["sequence_logp"]) == pytest.approx((-3 - 0.5 - 3 - 1) / 4)
    loss.backward()
    assert logp.grad[1, 1] == 0 and float(logp.grad[0, 0]) < 0 < float(logp.grad[1, 0])
