"""Masked-diffusion LM token-commit rules: LLaDA's step schedule and top-k, Fast-dLLM's threshold and factor rules,
block candidates and the predictions they rank, each against hand-worked values or a plain-Python reference."""

import math

import pytest
import torch

from diffrl.algorithms.dllm_decoding import (
    block_candidates,
    commit_factor,
    commit_threshold,
    commit_top_k,
    greedy_predictions,
    transfer_schedule,
)


def random_rows(seed: int, rows: int = 16, length: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 confidences (some rows with ties) and candidate masks (some rows empty, some full)."""
    g = torch.Generator().manual_seed(seed)
    confidence = torch.rand(rows, length, generator=g, dtype=torch.float64)
    confidence[::3] = torch.randint(0, 4, (len(confidence[::3]), length), generator=g).double() / 4  # ties
    candidates = torch.rand(rows, length, generator=g) < torch.rand(rows, 1, generator=g)
    candidates[0] = False
    candidates[1] = True
    return confidence, candidates


def ranked(confidence: list[float], candidates: list[bool]) -> list[int]:
    """Candidate positions, most confident first, equal confidences by lower position."""
    return sorted((i for i, c in enumerate(candidates) if c), key=lambda i: (-confidence[i], i))


def factor_reference(confidence: list[float], candidates: list[bool], factor: float) -> set[int]:
    """The factor rule by trying every n from the candidate count down, the first that meets it winning."""
    order = ranked(confidence, candidates)
    for n in range(len(order), 0, -1):
        if (n + 1) * (1 - confidence[order[n - 1]]) <= factor:
            return set(order[:n])
    return set(order[:1])


def committed(mask: torch.Tensor) -> set[int]:
    """The positions a row's [L] mask commits."""
    return set(torch.nonzero(mask).flatten().tolist())


def test_transfer_schedule_splits_the_masked_count_evenly():
    assert transfer_schedule(torch.tensor([10]), 4).tolist() == [[3, 3, 2, 2]]
    assert transfer_schedule(torch.tensor([2, 0, 8]), 4).tolist() == [[1, 1, 0, 0], [0, 0, 0, 0], [2, 2, 2, 2]]
    masked = torch.randint(0, 300, (50,), generator=torch.Generator().manual_seed(0))
    for steps in (1, 3, 7, 64):
        schedule = transfer_schedule(masked, steps)
        assert schedule.shape == (50, steps) and schedule.dtype == torch.long
        assert torch.equal(schedule.sum(dim=1), masked)
        assert (schedule.max(dim=1).values - schedule.min(dim=1).values <= 1).all()
        assert (schedule[:, :-1] >= schedule[:, 1:]).all()  # the extra tokens go to the first steps
    with pytest.raises(ValueError, match="steps"):
        transfer_schedule(masked, 0)


def test_block_candidates_are_the_masked_positions_of_the_current_block():
    masked = torch.tensor([[True, True, False, True, True, True], [True, True, True, True, True, False]])
    inside = block_candidates(masked, torch.tensor([2, 0]), torch.tensor([5, 2]))
    assert inside.tolist() == [[False, False, False, True, True, False], [True, True, False, False, False, False]]


def test_top_k_commits_the_most_confident_candidates_by_lower_position_on_ties():
    confidence = torch.tensor([[0.9, 0.5, 0.7, 0.7, 0.1], [0.2, 0.8, 0.8, 0.3, 0.6]], dtype=torch.float64)
    candidates = torch.tensor([[False, True, True, True, True], [True, True, True, False, True]])
    mask = commit_top_k(confidence, candidates, torch.tensor([2, 3]))
    assert mask.tolist() == [[False, False, True, True, False], [False, True, True, False, True]]
    assert commit_top_k(confidence, candidates, torch.tensor([1, 1])).tolist() == [
        [False, False, True, False, False],
        [False, True, False, False, False],
    ]
    assert torch.equal(commit_top_k(confidence, candidates, torch.tensor([9, 4])), candidates)


def test_top_k_with_one_is_the_candidate_argmax_and_more_than_the_count_commits_all():
    for seed in range(20):
        confidence, candidates = random_rows(seed)
        top1 = commit_top_k(confidence, candidates, torch.ones(16, dtype=torch.long))
        everything = commit_top_k(confidence, candidates, torch.full((16,), 13))
        assert torch.equal(everything, candidates)
        for row in range(16):
            expected = set(ranked(confidence[row].tolist(), candidates[row].tolist())[:1])
            assert committed(top1[row]) == expected


def test_threshold_hand_example():
    # Row 0: 0.5 meets tau = 0.5 exactly, 0.9 is not a candidate. Row 1: none meets it, so only the top one (the
    # lower position of the 0.25 tie). Row 2: no candidates, nothing.
    confidence = torch.tensor([[0.5, 0.9, 0.25, 0.75], [0.25, 0.125, 0.25, 0.0], [0.9, 0.9, 0.9, 0.9]])
    candidates = torch.tensor([[True, False, True, True], [True, True, True, True], [False] * 4])
    assert commit_threshold(confidence, candidates, 0.5).tolist() == [
        [True, False, False, True],
        [True, False, False, False],
        [False] * 4,
    ]


def test_threshold_commits_the_confident_candidates_and_always_the_top_one():
    for seed in range(30):
        confidence, candidates = random_rows(seed)
        tau = [0.3, 0.6, 0.9][seed % 3]
        mask = commit_threshold(confidence, candidates, tau)
        assert not (mask & ~candidates).any()
        for row in range(16):
            values, allowed = confidence[row].tolist(), candidates[row].tolist()
            top1 = set(ranked(values, allowed)[:1])
            above = {i for i in range(12) if allowed[i] and values[i] >= tau}
            assert committed(mask[row]) == above | top1


def test_threshold_one_commits_exactly_the_top_candidate():
    confidence, candidates = random_rows(3)
    confidence = confidence.clamp(max=0.99)
    mask = commit_threshold(confidence, candidates, 1.0)
    assert mask.sum(dim=1).tolist() == [int(row.any()) for row in candidates]
    for row in range(16):
        assert committed(mask[row]) == set(ranked(confidence[row].tolist(), candidates[row].tolist())[:1])
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="threshold"):
            commit_threshold(confidence, candidates, bad)


def test_factor_rule_hand_example():
    # Sorted 0.75, 0.75, 0.5, 0.25 at factor 1: n=1: 2*0.25=0.5, n=2: 3*0.25=0.75, n=3: 4*0.5=2 > 1, so n=2.
    confidence = torch.tensor([[0.5, 0.75, 0.25, 0.75, 0.99]], dtype=torch.float64)
    candidates = torch.tensor([[True, True, True, True, False]])
    assert committed(commit_factor(confidence, candidates, 1.0)[0]) == {1, 3}
    # Every n fails at a tiny factor; the top one is still committed (the lower position of the tie).
    assert committed(commit_factor(confidence, candidates, 1e-6)[0]) == {1}
    # (n + 1) * (1 - c) = 1 exactly meets the condition: n=3 gives 4 * 0.25 = 1 at confidences 0.75.
    confidence = torch.tensor([[0.75, 0.75, 0.75, 0.5]], dtype=torch.float64)
    assert committed(commit_factor(confidence, torch.ones(1, 4, dtype=torch.bool), 1.0)[0]) == {0, 1, 2}
    with pytest.raises(ValueError, match="factor"):
        commit_factor(confidence, torch.ones(1, 4, dtype=torch.bool), 0.0)


def test_factor_rule_matches_a_brute_force_over_n():
    for seed in range(40):
        confidence, candidates = random_rows(seed)
        factor = [0.1, 0.5, 1.0, 2.0, 4.0][seed % 5]
        mask = commit_factor(confidence, candidates, factor)
        for row in range(16):
            expected = factor_reference(confidence[row].tolist(), candidates[row].tolist(), factor)
            assert committed(mask[row]) == expected


# Each rule takes (confidence, candidates, rows): per-row arguments are derived from the rows' indices, so a row
# run alone gets the same arguments as in the batch.
ROW_RULES = {
    "top_k": lambda c, m, rows: commit_top_k(c, m, rows % 5),
    "threshold": lambda c, m, rows: commit_threshold(c, m, 0.7),
    "factor": lambda c, m, rows: commit_factor(c, m, 1.0),
    "block_candidates": lambda c, m, rows: block_candidates(m, rows % 4, rows % 4 + 6),
    "transfer_schedule": lambda c, m, rows: transfer_schedule(m.sum(dim=1), 5),
}


@pytest.mark.parametrize("rule", list(ROW_RULES))
def test_each_row_gets_the_result_it_gets_alone(rule):
    confidence, candidates = random_rows(7)
    rows = torch.arange(16)
    batch = ROW_RULES[rule](confidence, candidates, rows)
    for row in range(16):
        alone = ROW_RULES[rule](confidence[row : row + 1], candidates[row : row + 1], rows[row : row + 1])
        assert torch.equal(alone[0], batch[row])


def test_greedy_confidence_is_the_float64_softmax_max():
    # Logits log 1, log 2, log 5 give probabilities 1/8, 2/8, 5/8; a flat row gives 1/3 at the first token.
    logits = torch.tensor([[[0.0, math.log(2), math.log(5)], [1.0, 1.0, 1.0]]], dtype=torch.float64)
    tokens, confidence = greedy_predictions(logits)
    assert tokens.tolist() == [[2, 0]]
    assert confidence[0].tolist() == pytest.approx([5 / 8, 1 / 3], abs=1e-15)
    tokens, confidence = greedy_predictions(logits.bfloat16())
    assert tokens.tolist() == [[2, 0]] and confidence.dtype == torch.float64


def test_sampling_is_reproducible_and_draws_from_the_tempered_softmax():
    logits = torch.tensor([0.0, 1.0, 2.0]).expand(4, 5000, 3)
    first = greedy_predictions(logits, 2.0, torch.Generator().manual_seed(3))
    again = greedy_predictions(logits, 2.0, torch.Generator().manual_seed(3))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    other = greedy_predictions(logits, 2.0, torch.Generator().manual_seed(4))
    assert not torch.equal(first[0], other[0])
    tempered = [math.exp(x / 2) for x in (0.0, 1.0, 2.0)]
    frequencies = torch.bincount(first[0].flatten(), minlength=3) / first[0].numel()
    for frequency, weight in zip(frequencies.tolist(), tempered):
        assert frequency == pytest.approx(weight / sum(tempered), abs=0.01)
    untempered = [math.exp(x) / sum(math.exp(y) for y in (0.0, 1.0, 2.0)) for x in (0.0, 1.0, 2.0)]
    assert first[1].flatten().tolist() == pytest.approx([untempered[t] for t in first[0].flatten().tolist()])


def test_per_row_generators_make_each_row_sample_as_it_would_alone():
    logits = torch.randn(3, 7, 11, generator=torch.Generator().manual_seed(0))
    seeds = [5, 6, 7]
    tokens, confidence = greedy_predictions(logits, 1.0, [torch.Generator().manual_seed(s) for s in seeds])
    for row, seed in enumerate(seeds):
        alone = greedy_predictions(logits[row : row + 1], 1.0, [torch.Generator().manual_seed(seed)])
        assert torch.equal(alone[0][0], tokens[row]) and torch.equal(alone[1][0], confidence[row])
    with pytest.raises(ValueError, match="one generator per row"):
        greedy_predictions(logits, 1.0, [torch.Generator()])
