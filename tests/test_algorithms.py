"""Hand-computed checks of diffrl.algorithms: expected values come from plain-Python formulas, not the code."""

from __future__ import annotations

import math

import pytest
import torch

from diffrl.algorithms.advantages import group_advantages
from diffrl.algorithms.awm import awm_log_prob, awm_loss, ema_decay, ema_update_, velocity_kl
from diffrl.algorithms.flow_grpo import flow_grpo_kl, flow_grpo_loss
from diffrl.algorithms.flow_matching import (
    cps_step,
    ode_step,
    sde_step,
    sde_window,
    stratified_timesteps,
    timestep_grid,
)
from diffrl.algorithms.nft import nft_loss

X = torch.tensor([[1.0, 2.0]])
V = torch.tensor([[0.5, -1.0]])
NOISE = torch.tensor([[0.3, -0.2]])


def _close(actual: torch.Tensor, expected: list[float], tol: float = 1e-6) -> None:
    assert actual.flatten().tolist() == pytest.approx(expected, abs=tol)


# --- advantages -------------------------------------------------------------------------------------------------


def test_group_advantages_per_group_population_std() -> None:
    rewards = torch.tensor([1.0, 3.0, 2.0, 6.0])
    groups = torch.tensor([0, 0, 1, 1])
    # group 0: mean 2, population std 1; group 1: mean 4, std 2
    expected = [-1 / 1.0001, 1 / 1.0001, -2 / 2.0001, 2 / 2.0001]
    _close(group_advantages(rewards, groups), expected)


def test_group_advantages_global_std_and_singleton_group() -> None:
    rewards = torch.tensor([1.0, 3.0, 2.0, 6.0])
    groups = torch.tensor([0, 0, 1, 1])
    std = math.sqrt(((1 - 3) ** 2 + 0 + (2 - 3) ** 2 + (6 - 3) ** 2) / 4)  # whole batch, ddof 0
    expected = [-1 / (std + 1e-4), 1 / (std + 1e-4), -2 / (std + 1e-4), 2 / (std + 1e-4)]
    _close(group_advantages(rewards, groups, global_std=True), expected)

    singleton = group_advantages(torch.tensor([5.0, 1.0, 2.0]), torch.tensor([7, 3, 3]))
    _close(singleton, [0.0, -0.5 / 0.5001, 0.5 / 0.5001])


def test_group_advantages_clip_then_scale() -> None:
    rewards = torch.tensor([0.0] * 30 + [1.0])
    groups = torch.zeros(31, dtype=torch.long)
    std = math.sqrt(30) / 31  # Bernoulli population std with p = 1/31
    awm = group_advantages(rewards, groups, clip=5.0, scale=5.0)
    assert awm[-1].item() == pytest.approx(1.0)  # (30/31) / std = 5.48, clipped to 5, divided by 5
    assert awm[0].item() == pytest.approx(-(1 / 31) / (std + 1e-4) / 5)

    small = group_advantages(torch.tensor([0.0, 0.0, 0.0, 1.0]), torch.zeros(4, dtype=torch.long), clip=1.0, scale=2.0)
    std = math.sqrt(3) / 4  # 0.75 / std = 1.73 is clipped to 1
    _close(small, [-0.25 / (std + 1e-4) / 2] * 3 + [0.5])
    with pytest.raises(ValueError):
        group_advantages(torch.tensor([1.0, 2.0]), torch.tensor([0]))


# --- flow matching ----------------------------------------------------------------------------------------------


def test_timestep_grid_shift() -> None:
    _close(timestep_grid(2), [1.0, 0.5, 0.0])
    _close(timestep_grid(2, shift=3.0), [1.0, 3 * 0.5 / (1 + 2 * 0.5), 0.0])
    _close(timestep_grid(4, shift=3.0)[[0, -1]], [1.0, 0.0])


def test_ode_step_euler() -> None:
    _close(ode_step(X, V, 0.75, 0.5), [1.0 - 0.25 * 0.5, 2.0 + 0.25])


def test_sde_step_hand_computed() -> None:
    a, sigma, sigma_next = 0.7, 0.5, 0.25
    dt = sigma_next - sigma
    std = a * math.sqrt(sigma / (1 - sigma))
    out = sde_step(X, V, sigma, sigma_next, a, noise=NOISE)
    means = [
        x * (1 + std**2 / (2 * sigma) * dt) + v * (1 + std**2 * (1 - sigma) / (2 * sigma)) * dt
        for x, v in zip([1.0, 2.0], [0.5, -1.0])
    ]
    step_std = std * math.sqrt(-dt)
    _close(out.mean, means)
    _close(out.sample, [m + step_std * n for m, n in zip(means, [0.3, -0.2])])
    _close(out.std, [std])
    log_density = [-(n**2) / 2 - math.log(step_std) - 0.5 * math.log(2 * math.pi) for n in [0.3, -0.2]]
    _close(out.log_prob, [sum(log_density) / 2], tol=1e-5)


def test_sde_step_at_sigma_one_uses_next_sigma() -> None:
    out = sde_step(X, V, 1.0, 0.8, 0.7, noise=NOISE)
    _close(out.std, [0.7 * math.sqrt(1.0 / (1 - 0.8))], tol=1e-5)


def test_sde_log_prob_matches_normal_per_sample_sigmas() -> None:
    gen = torch.Generator().manual_seed(0)
    x, v, noise = (torch.randn(3, 4, 5, 5, generator=gen) for _ in range(3))
    sigma = torch.tensor([1.0, 0.6, 0.3])
    sigma_next = torch.tensor([0.9, 0.4, 0.0])
    out = sde_step(x, v, sigma, sigma_next, 0.7, noise=noise)
    scale = out.std * torch.sqrt(sigma - sigma_next).view(-1, 1, 1, 1)
    expected = torch.distributions.Normal(out.mean, scale).log_prob(out.sample).mean(dim=(1, 2, 3))
    torch.testing.assert_close(out.log_prob, expected, rtol=1e-5, atol=1e-5)


def test_noise_level_zero_is_the_ode_step() -> None:
    gen = torch.Generator().manual_seed(1)
    x, v, noise = (torch.randn(2, 3, 4, generator=gen) for _ in range(3))
    out = sde_step(x, v, 0.7, 0.55, 0.0, noise=noise)
    assert torch.equal(out.sample, ode_step(x, v, 0.7, 0.55))
    assert torch.equal(out.log_prob, torch.zeros(2))
    cps = cps_step(x, v, 0.7, 0.55, 0.0, noise=noise)
    torch.testing.assert_close(cps.sample, ode_step(x, v, 0.7, 0.55))


def test_cps_step_hand_computed() -> None:
    a, sigma, sigma_next = 0.5, 0.5, 0.25
    std = sigma_next * math.sin(a * math.pi / 2)
    out = cps_step(X, V, sigma, sigma_next, a, noise=NOISE)
    means = [
        (x - sigma * v) * (1 - sigma_next) + (x + (1 - sigma) * v) * math.sqrt(sigma_next**2 - std**2)
        for x, v in zip([1.0, 2.0], [0.5, -1.0])
    ]
    _close(out.mean, means)
    _close(out.sample, [m + std * n for m, n in zip(means, [0.3, -0.2])])
    _close(out.log_prob, [-((std * 0.3) ** 2 + (std * 0.2) ** 2) / 2])


@pytest.mark.parametrize("step", [sde_step, cps_step])
def test_recomputed_log_prob_gives_ratio_exactly_one(step) -> None:
    gen = torch.Generator().manual_seed(2)
    x, v, noise = (torch.randn(4, 2, 3, 3, generator=gen) for _ in range(3))
    sigma, sigma_next = torch.full((4,), 0.8), torch.full((4,), 0.6)
    rollout = step(x, v, sigma, sigma_next, 0.7, noise=noise)
    v_train = v.clone().requires_grad_(True)
    recomputed = step(x, v_train, sigma, sigma_next, 0.7, prev_sample=rollout.sample)
    assert torch.equal(recomputed.log_prob.detach(), rollout.log_prob)
    loss, stats = flow_grpo_loss(recomputed.log_prob, rollout.log_prob, torch.tensor([1.0, -1.0, 0.5, 0.0]))
    assert stats["ratio_mean"].item() == 1.0 and stats["clipfrac"].item() == 0.0
    assert stats["approx_kl"].item() == 0.0
    loss.backward()
    assert v_train.grad is not None


def test_step_needs_exactly_one_of_noise_and_prev_sample() -> None:
    with pytest.raises(ValueError):
        sde_step(X, V, 0.5, 0.25, 0.7)
    with pytest.raises(ValueError):
        cps_step(X, V, 0.5, 0.25, 0.7, noise=NOISE, prev_sample=X)


def test_sde_window_stays_in_first_half() -> None:
    starts = {sde_window(10, 3, torch.Generator().manual_seed(seed)) for seed in range(200)}
    assert starts == {0, 1, 2}  # random.randint(0, 10 // 2 - 3) upstream
    assert sde_window(10, 2, torch.Generator().manual_seed(0), max_start=0) == 0
    with pytest.raises(ValueError):
        sde_window(4, 3, torch.Generator())


def test_stratified_timesteps_one_per_stratum_on_grid() -> None:
    grid = timestep_grid(14, shift=3.0)
    edges = [1, 2, 4, 6, 8, 10, 12]  # int(linspace(1, int(14 * 0.9), 7)) as in AWM's "discrete_wo_init"
    seen = set()
    for seed in range(50):
        picked = stratified_timesteps(grid, 6, torch.Generator().manual_seed(seed))
        assert picked.shape == (6,)
        indices = [int((grid == value).nonzero().item()) for value in picked]
        for k, index in enumerate(indices):
            assert edges[k] <= index < edges[k + 1]
        seen.update(indices)
    assert seen == set(range(1, 12))
    first = stratified_timesteps(grid, 6, torch.Generator().manual_seed(0), include_first=True)
    assert first[0].item() in (grid[0].item(), grid[1].item())
    with pytest.raises(ValueError):
        stratified_timesteps(grid, 12, torch.Generator())


# --- AWM --------------------------------------------------------------------------------------------------------


def test_awm_log_prob_generalized_huber() -> None:
    v, x0, eps = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 1.0]])
    mse = (0.0**2 + 1.0**2) / 2
    logp = awm_log_prob(v, x0, eps, torch.tensor([0.6], dtype=torch.float64))
    assert logp.dtype == torch.float64
    expected = -((mse + 1e-10) ** 0.25 - 1e-10**0.25) * 0.6 / 0.25
    assert logp.item() == pytest.approx(expected, rel=1e-12)
    assert awm_log_prob(v, x0, eps, 0.6, huber_p=1.0).item() == pytest.approx(-mse * 0.6, rel=1e-9)


@pytest.mark.parametrize("advantage", [1.0, -1.0])
def test_awm_gradient_step_follows_advantage_sign(advantage: float) -> None:
    gen = torch.Generator().manual_seed(3)
    x0, eps, v0 = (torch.randn(2, 8, generator=gen) for _ in range(3))
    t = torch.tensor([0.3, 0.7])
    v = v0.clone().requires_grad_(True)
    loss = awm_loss(awm_log_prob(v, x0, eps, t), torch.full((2,), advantage))
    assert loss.item() == pytest.approx(-advantage)  # the ratio is exactly 1
    loss.backward()
    with torch.no_grad():
        stepped = v - 0.01 * v.grad
    mse_before = ((v0 - (eps - x0)) ** 2).mean(1)
    mse_after = ((stepped - (eps - x0)) ** 2).mean(1)
    assert bool(((mse_after - mse_before) * advantage < 0).all())


def test_velocity_kl_and_ema() -> None:
    _close(velocity_kl(torch.tensor([[1.0, 2.0]]), torch.zeros(1, 2)), [2.5])
    _close(velocity_kl(X, X), [0.0])
    assert ema_decay(0) == 0.0 and ema_decay(100) == pytest.approx(0.1) and ema_decay(1000) == 0.3
    assert ema_decay(2000, max_decay=0.5) == 0.5
    ema, live = [torch.tensor([1.0])], [torch.tensor([3.0], requires_grad=True)]
    ema_update_(ema, live, 0.25)
    _close(ema[0], [0.25 * 1.0 + 0.75 * 3.0])


# --- Flow-GRPO --------------------------------------------------------------------------------------------------


def test_flow_grpo_loss_clipping_by_hand() -> None:
    log_prob, old = torch.tensor([0.1, -0.2]), torch.zeros(2)
    advantages = torch.tensor([1.0, -1.0])
    r1, r2 = math.exp(0.1), math.exp(-0.2)
    loss, stats = flow_grpo_loss(log_prob, old, advantages, clip_range=0.05)
    assert loss.item() == pytest.approx((max(-r1, -1.05) + max(r2, 0.95)) / 2, rel=1e-6)
    assert stats["clipfrac"].item() == 1.0
    assert stats["approx_kl"].item() == pytest.approx(0.5 * (0.01 + 0.04) / 2, rel=1e-6)
    assert stats["ratio_mean"].item() == pytest.approx((r1 + r2) / 2, rel=1e-6)

    loss, stats = flow_grpo_loss(log_prob, old, advantages, clip_range=0.05, clip_range_high=0.2)
    assert loss.item() == pytest.approx((max(-r1, -min(r1, 1.2)) + max(r2, 0.95)) / 2, rel=1e-6)
    assert stats["clipfrac"].item() == 0.5


def test_flow_grpo_kl() -> None:
    _close(flow_grpo_kl(torch.tensor([[1.0, 2.0]]), torch.zeros(1, 2), 0.5), [2.5 / (2 * 0.25)])
    sigma, sigma_next = torch.tensor([0.5, 0.4]), torch.tensor([0.25, 0.2])
    step = sde_step(X.repeat(2, 1), V.repeat(2, 1), sigma, sigma_next, 0.7, noise=NOISE.repeat(2, 1))
    _close(flow_grpo_kl(step.mean, step.mean.clone(), step.std), [0.0, 0.0])


# --- DiffusionNFT -----------------------------------------------------------------------------------------------


def _nft_expected(v_theta, v_old, v_ref, x_t, x0, t, advantage, beta, clip=5.0, kl_weight=1e-4) -> float:
    r = min(max(max(-clip, min(clip, advantage)) / clip / 2 + 0.5, 0.0), 1.0)

    def normalized(v):
        err = [xt - t * vi - x for xt, vi, x in zip(x_t, v, x0)]
        return (sum(e * e for e in err) / len(err)) / max(sum(abs(e) for e in err) / len(err), 1e-5)

    v_pos = [beta * a + (1 - beta) * b for a, b in zip(v_theta, v_old)]
    v_neg = [(1 + beta) * b - beta * a for a, b in zip(v_theta, v_old)]
    policy = (r * normalized(v_pos) / beta + (1 - r) * normalized(v_neg) / beta) * clip
    kl = sum((a - b) ** 2 for a, b in zip(v_theta, v_ref)) / len(v_theta)
    return policy + kl_weight * kl


@pytest.mark.parametrize(("v_theta", "advantage", "beta"), [([1.0, 3.0], 2.5, 1.0), ([2.0, 1.0], -1.0, 0.5)])
def test_nft_loss_by_hand(v_theta: list[float], advantage: float, beta: float) -> None:
    v_old, v_ref, x_t, x0, t = [1.0, 3.0], [0.0, 0.0], [1.0, 1.0], [0.0, 0.0], 0.5
    loss, stats = nft_loss(
        torch.tensor([v_theta]), torch.tensor([v_old]), torch.tensor([v_ref]), torch.tensor([x_t]),
        torch.tensor([x0]), torch.tensor([t]), torch.tensor([advantage]), beta=beta,
    )
    assert loss.item() == pytest.approx(_nft_expected(v_theta, v_old, v_ref, x_t, x0, t, advantage, beta), rel=1e-6)
    assert stats["kl"].item() == pytest.approx(sum(a * a for a in v_theta) / 2)


def test_nft_positive_advantage_moves_toward_data() -> None:
    gen = torch.Generator().manual_seed(4)
    x0, eps, v_old = (torch.randn(1, 16, generator=gen) for _ in range(3))
    t = torch.tensor([0.6])
    x_t = (1 - t) * x0 + t * eps
    v = v_old.clone().requires_grad_(True)
    loss, _ = nft_loss(v, v_old, v_old, x_t, x0, t, torch.tensor([5.0]))
    loss.backward()
    with torch.no_grad():
        stepped = v - 1e-3 * v.grad
    assert ((x_t - t * stepped - x0) ** 2).mean() < ((x_t - t * v_old - x0) ** 2).mean()
