"""The peer objectives' math against hand-worked values: GRPO-Guard, MixGRPO's window and Flash tail, DGPO,
Diffusion-DPO."""

import math

import pytest
import torch

from diffrl.algorithms.dgpo import dgpo_loss, flow_matching_error
from diffrl.algorithms.diffusion_dpo import best_worst_pairs, dpo_loss
from diffrl.algorithms.flow_matching import cps_step, sde_step
from diffrl.algorithms.grpo_guard import guarded_loss, ratio_norm_log_ratio, step_weights
from diffrl.algorithms.mixgrpo import compressed_tail, dpmpp_2m_step, window_start


def one(value: float) -> torch.Tensor:
    return torch.tensor([[value]])


def gaussian_log_prob(x, mean, s):
    return float(-((x - mean) ** 2) / (2 * s**2) - math.log(s) - 0.5 * math.log(2 * math.pi))


def test_ratio_norm_by_hand():
    # x = mu_old + s eps with mu_old 0.1, s 0.5, eps 0.4 (x = 0.3); the policy's mean 0.3, so dmu = 0.2.
    x, mu, mu_old, s = 0.3, 0.3, 0.1, 0.5
    log_ratio = gaussian_log_prob(x, mu, s) - gaussian_log_prob(x, mu_old, s)
    assert log_ratio == pytest.approx(0.08)  # 0 - (-(0.2^2) / (2 * 0.25))
    # sde: s * (0.08 + 0.2^2 / (2 * 0.25)) = 0.5 * 0.16 = 0.08 = eps * dmu
    got = ratio_norm_log_ratio(torch.tensor([log_ratio]), one(mu), one(mu_old), one(s), "sde")
    assert float(got) == pytest.approx(0.08)
    # cps log-probs are -(x - mean)^2: log r = 0 + 0.04; (0.04 + 0.04) / (2 * 0.5) = 0.08 again
    got = ratio_norm_log_ratio(torch.tensor([0.04]), one(mu), one(mu_old), one(s), "cps")
    assert float(got) == pytest.approx(0.08)
    with pytest.raises(ValueError, match="sde or cps"):
        ratio_norm_log_ratio(torch.tensor([0.0]), one(mu), one(mu_old), one(s), "ode")


@pytest.mark.parametrize("step", [sde_step, cps_step])
def test_ratio_norm_removes_the_left_shift_at_every_step(step):
    """Over many draws from the old policy, Flow-GRPO's log-ratio has a negative mean whose size depends on the step;
    after RatioNorm its mean is 0 at both a noisy and a late step."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 1, 4, 4, generator=gen)
    v_old = torch.randn(x.shape, generator=gen)
    v_new = v_old + 0.3
    sampler = "sde" if step is sde_step else "cps"
    for sigma, sigma_next in ((0.9, 0.8), (0.3, 0.2)):
        old = step(x, v_old, sigma, sigma_next, 0.7, noise=torch.randn(x.shape, generator=gen))
        new = step(x, v_new, sigma, sigma_next, 0.7, prev_sample=old.sample)
        log_ratio = new.log_prob - old.log_prob
        s = old.std * (math.sqrt(sigma - sigma_next) if sampler == "sde" else 1.0)
        normalized = ratio_norm_log_ratio(log_ratio, new.mean, old.mean, s, sampler)
        assert log_ratio.mean() < -5 * log_ratio.std() / math.sqrt(len(x))  # the shift, many standard errors
        assert abs(normalized.mean()) < 4 * normalized.std() / math.sqrt(len(x))
        dmu = (new.mean - old.mean).flatten(1)
        eps = ((old.sample - old.mean) / s).flatten(1)
        torch.testing.assert_close(normalized, (eps * dmu).mean(1), rtol=1e-4, atol=1e-6)


def test_step_weights_and_guarded_loss_by_hand():
    assert step_weights(torch.tensor([0.8]), torch.tensor([0.6])).item() == pytest.approx(5.0)
    with pytest.raises(ValueError, match="sigma > sigma_next"):
        step_weights(torch.tensor([0.5]), torch.tensor([0.5]))
    # rows: r = 1 -> max(-1, -1) = -1, weight 1; r = 1.5 clipped at 1.2 -> max(-1.5, -1.2) = -1.2, weight 2
    loss, stats = guarded_loss(torch.tensor([0.0, math.log(1.5)]), torch.tensor([1.0, 1.0]),
                               torch.tensor([1.0, 2.0]), clip_range=0.2)
    assert float(loss) == pytest.approx((-1.0 - 2.4) / 2)
    assert float(stats["clipfrac"]) == 0.5


def test_dgpo_loss_by_hand_and_its_gradient_is_the_group_bradley_terry_one():
    dsm = torch.tensor([1.0, 2.0, 0.5], requires_grad=True)
    ref = torch.tensor([1.5, 1.0, 0.5])
    adv = torch.tensor([1.0, -1.0, 2.0])
    groups = torch.tensor([0, 0, 1])
    beta = 2.0
    loss, stats = dgpo_loss(dsm, ref, adv, groups, beta)
    # group 0: S = 2 * (1 * -0.5 + -1 * 1.0) / 2 = -1.5; group 1: S = 2 * (2 * 0) / 1 = 0
    s0, s1 = torch.sigmoid(torch.tensor(-1.5)), torch.sigmoid(torch.tensor(0.0))
    assert float(loss.detach()) == pytest.approx(float((s0 * 1.0 - s0 * 2.0 + s1 * 2 * 0.5) / 3))
    assert float(stats["group_s"]) == pytest.approx(-0.75)
    loss.backward()
    # -log sigmoid(-S) summed over groups, divided by beta, has gradient sigmoid(S) A_i / |g|; the loss's mean over
    # rows adds a factor |g| / B.
    bt = dsm.detach().clone().requires_grad_(True)
    total = 0.0
    for g in (0, 1):
        m = groups == g
        s = beta * (adv[m] * (bt[m] - ref[m])).sum() / m.sum()
        total = total - torch.nn.functional.logsigmoid(-s) * m.sum() / len(dsm) / beta
    total.backward()
    torch.testing.assert_close(dsm.grad, bt.grad)


def test_flow_matching_error_is_the_velocity_mse():
    v, x0, eps = torch.full((1, 2), 1.0), torch.tensor([[0.0, 1.0]]), torch.tensor([[2.0, 1.0]])
    assert float(flow_matching_error(v, x0, eps)) == pytest.approx(((1 - 2) ** 2 + (1 - 0) ** 2) / 2)


def test_dpo_loss_by_hand():
    # margin = (1.0 - 1.2) - (1.0 - 0.9) = -0.3; inside = -0.5 * 10 * -0.3 = 1.5; loss = log(1 + e^-1.5)
    loss, stats = dpo_loss(torch.tensor([1.0]), torch.tensor([1.0]), torch.tensor([1.2]), torch.tensor([0.9]), 10.0)
    assert float(loss) == pytest.approx(math.log1p(math.exp(-1.5)))
    assert float(stats["dpo_accuracy"]) == 1.0
    weighted, _ = dpo_loss(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 1.0]), torch.tensor([1.2, 1.2]),
                           torch.tensor([0.9, 0.9]), 10.0, weights=torch.tensor([1.0, 0.0]))
    assert float(weighted) == pytest.approx(math.log1p(math.exp(-1.5)) / 2)


def test_best_worst_pairs_pick_each_groups_extremes_and_drop_ties():
    rewards = torch.tensor([0.1, 0.5, 0.3, 0.2, 0.2, 0.2])
    winners, losers, keep = best_worst_pairs(rewards, torch.tensor([0, 0, 0, 1, 1, 1]))
    assert winners.tolist() == [1, 3] and losers.tolist() == [0, 3] and keep.tolist() == [True, False]


def test_mixgrpo_window_slides_wraps_or_stays():
    starts = [window_start(s, shift_every=25, stride=1, max_start=5) for s in (0, 24, 25, 50, 149, 150)]
    assert starts == [0, 0, 1, 2, 5, 0]
    assert window_start(150, 25, 1, 5, roll_back=False) == 5
    assert window_start(500, 20, 0, 5) == 0  # stride 0: the window stays at step 0 (MixGRPO-Flash*)
    with pytest.raises(ValueError, match="shift_every"):
        window_start(0, 0, 1, 5)


def test_compressed_tail_keeps_the_ends_and_cuts_the_steps():
    assert compressed_tail(4, 10, 0.4) == [4, 7, 10]  # 6 steps left, int(2.4) = 2
    assert compressed_tail(4, 10, 1.0) == list(range(4, 11))
    assert compressed_tail(9, 10, 0.4) == [9, 10]  # at least one step
    assert compressed_tail(10, 10, 0.4) == [10]


def test_dpm_solver_is_exact_on_a_straight_trajectory():
    """With an exact data prediction (x_t = (1 - s) x0 + s eps for a fixed x0, eps), first- and second-order steps
    land on the trajectory; to sigma 0 the step returns x0."""
    x0, eps = torch.tensor([0.5, -1.0]), torch.tensor([1.5, 0.25])
    at = lambda s: (1 - s) * x0 + s * eps  # noqa: E731
    torch.testing.assert_close(dpmpp_2m_step(at(0.8), x0, 0.8, 0.5), at(0.5))
    torch.testing.assert_close(dpmpp_2m_step(at(0.5), x0, 0.5, 0.3, prev_x0=x0, prev_sigma=0.8), at(0.3))
    torch.testing.assert_close(dpmpp_2m_step(at(0.3), x0, 0.3, 0.0, prev_x0=x0, prev_sigma=0.5), x0)
    # a changing data prediction: the second-order correction is 0.5 (1 - s') (e^-h - 1) (x0 - x0_prev) / r
    x0_prev = x0 + 0.1
    h = math.log(0.7 / 0.3) - math.log(0.5 / 0.5)
    r = (math.log(0.5 / 0.5) - math.log(0.2 / 0.8)) / h
    expected = at(0.3) - 0.5 * 0.7 * math.expm1(-h) * (x0 - x0_prev) / r
    torch.testing.assert_close(dpmpp_2m_step(at(0.5), x0, 0.5, 0.3, prev_x0=x0_prev, prev_sigma=0.8), expected)


def test_dpo_gradient_lowers_the_winners_error_and_raises_the_losers():
    mse_w, mse_l = torch.tensor([0.5], requires_grad=True), torch.tensor([0.5], requires_grad=True)
    loss, _ = dpo_loss(mse_w, mse_l, torch.tensor([0.5]), torch.tensor([0.5]), 100.0)
    loss.backward()
    assert float(mse_w.grad) > 0 > float(mse_l.grad)  # descent lowers mse_w, raises mse_l
    assert float(mse_w.grad) == pytest.approx(100.0 / 2 * 0.5)  # beta / 2 * sigmoid(0)


def test_dpm_solver_2m_is_second_order_on_a_curved_trajectory():
    """1-D Gaussian data N(0, c^2): the ideal data prediction is (1 - s) c^2 x / ((1 - s)^2 c^2 + s^2) and the
    probability-flow ODE maps x_1 to x_s = x_1 std(s) with std(s)^2 = (1 - s)^2 c^2 + s^2. Halving the step
    roughly quarters DPM-Solver++ (2M)'s error and only halves the first-order error."""
    c2, x_start, s_start, s_end = 0.25, torch.tensor([1.3]), 0.9, 0.1
    std = lambda s: math.sqrt((1 - s) ** 2 * c2 + s**2)  # noqa: E731
    exact = x_start * std(s_end) / std(s_start)

    def integrate(steps: int, second_order: bool) -> float:
        sigmas = torch.linspace(s_start, s_end, steps + 1).tolist()
        x, prev_x0, prev_sigma = x_start.clone(), None, None
        for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
            x0 = (1 - sigma) * c2 * x / ((1 - sigma) ** 2 * c2 + sigma**2)
            x = dpmpp_2m_step(x, x0, sigma, sigma_next, prev_x0 if second_order else None, prev_sigma)
            prev_x0, prev_sigma = x0, sigma
        return float((x - exact).abs())

    first = [integrate(n, False) for n in (16, 32)]
    second = [integrate(n, True) for n in (16, 32)]
    assert 1.6 < first[0] / first[1] < 2.5, first
    assert second[0] / second[1] > 3.0 and second[1] < first[1] / 5, second
