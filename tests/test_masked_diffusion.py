"""Masked-diffusion training math (diffrl.algorithms.masked_diffusion) and the digit-sorting world it trains on."""

import math

import torch

from diffrl.algorithms.masked_diffusion import (MIN_MASK_PROBABILITY, BlockDiffusionLayout, mask_answers,
                                                masked_diffusion_loss)
from diffrl.envs.sorting import heldout_problems, training_problems


def generators(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_masks_fall_on_the_answer_only_and_a_row_does_not_depend_on_its_batch():
    tokens = torch.arange(40).reshape(2, 20)
    masked, p = mask_answers(tokens, 8, generators([1, 2]))
    assert not masked[:, :8].any() and masked[:, 8:].any()
    alone = mask_answers(tokens[1:], 8, generators([2]))
    assert torch.equal(alone[0][0], masked[1]) and torch.equal(alone[1][0], p[1])
    # one probability per row; per block with block_length
    assert len(set(p[0, 8:].tolist())) == 1 and (p[:, :8] == 0).all()
    _, per_block = mask_answers(tokens, 8, generators([1, 2]), block_length=4)
    assert len(set(per_block[0, 8:].tolist())) == 3
    assert ((per_block[:, 8:] >= MIN_MASK_PROBABILITY) & (per_block[:, 8:] <= 1)).all()


def test_the_loss_is_the_inverse_probability_weighted_cross_entropy_per_answer_token():
    targets = torch.tensor([[1, 2, 0]])
    logits = torch.zeros(1, 3, 4)  # uniform over 4 tokens: CE = log 4 at every position
    masked = torch.tensor([[True, False, True]])
    probability = torch.full((1, 3), 0.5, dtype=torch.float64)
    loss = masked_diffusion_loss(logits, targets, masked, probability, answer_length=3)
    assert math.isclose(float(loss), 2 * math.log(4) / 0.5 / 3, rel_tol=1e-6)


def test_block_diffusion_layout_is_what_a_block_causal_decoder_sees():
    # prompt of 2 slots, answer of 4 in blocks of 2: slots 0-1 prompt, 2-5 noisy answer, 6-9 clean answer
    layout = BlockDiffusionLayout.build(prompt_length=2, answer_length=4, block_length=2, shift=True)
    assert layout.positions.tolist() == [0, 1, 2, 3, 4, 5, 2, 3, 4, 5]
    sees = {q: [k for k in range(10) if layout.attend[q, k]] for q in range(10)}
    assert sees[0] == sees[1] == [0, 1]  # the prompt sees itself only
    assert sees[2] == sees[3] == [0, 1, 2, 3]  # noisy block 0: prompt + itself
    assert sees[4] == sees[5] == [0, 1, 4, 5, 6, 7]  # noisy block 1: prompt + itself + clean block 0
    assert sees[6] == sees[7] == [0, 1, 6, 7]  # clean block 0: prompt + itself
    assert sees[8] == sees[9] == [0, 1, 6, 7, 8, 9]  # clean block 1: prompt + clean blocks 0, 1
    # token shift: a block's first token from the last clean token before it, the others from the previous slot
    assert layout.predict_from.tolist() == [1, 2, 7, 4]
    assert BlockDiffusionLayout.build(2, 4, 2, shift=False).predict_from.tolist() == [2, 3, 4, 5]


def test_sorting_problems_are_sorted_digits_and_training_never_sees_a_held_out_prompt():
    heldout = heldout_problems(50, 32, seed=0)
    assert len({p["prompt"] for p in heldout}) == 50
    for problem in heldout[:5]:
        digits = problem["prompt"].removesuffix("=")
        assert len(digits) == 32 and problem["reference"] == "".join(sorted(digits))
    first = training_problems(0, 1, 32, 0, set())[0]["prompt"]
    excluded = {p["prompt"] for p in heldout} | {first}
    assert not excluded & {p["prompt"] for p in training_problems(0, 8, 32, seed=0, exclude=excluded)}
    assert training_problems(3, 4, 32, 0, set()) == training_problems(3, 4, 32, 0, set())
