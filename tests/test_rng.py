"""Seed streams: every random draw is keyed by (stream, *keys) through SeedSequence hashing, so the collisions of an
affine seed mix cannot happen, and held-out eval seeds lie outside the training seeds' range."""

import torch

from diffrl.kinds.rl.config import RLJobConfig
from diffrl.kinds.rl.data import step_requests
from diffrl.kinds.rollouts import eval_requests
from diffrl.utils.rng import EVAL_SEED_BASE, TRAINING_SEEDS, Stream, stream_generator, stream_seed


def test_streams_and_keys_never_share_a_seed():
    # seed * 7919 + step made (seed 1, step 0) and (seed 0, step 7919) the same generator
    assert stream_seed(Stream.TRAINING_ROWS, 1, 0) != stream_seed(Stream.TRAINING_ROWS, 0, 7919)
    assert stream_seed(Stream.SDE_NOISE, 5, 3) != stream_seed(Stream.SDE_WINDOW, 5, 3)
    seeds = {stream_seed(stream, a, b) for stream in Stream for a in range(40) for b in range(40)}
    assert len(seeds) == len(Stream) * 40 * 40
    assert all(0 <= s < 2**63 for s in seeds)
    first = torch.randn(4, generator=stream_generator(Stream.SDE_NOISE, 7, 2))
    assert torch.equal(first, torch.randn(4, generator=stream_generator(Stream.SDE_NOISE, 7, 2)))


def test_eval_seeds_lie_outside_the_training_seeds():
    cfg = RLJobConfig(rollout={"prompts_per_step": 64, "group_size": 16})
    prompts = [{"prompt": f"p{i}"} for i in range(100)]
    training = {r.seed for step in range(20) for r in step_requests(prompts, cfg, step)}
    assert max(training) < TRAINING_SEEDS <= EVAL_SEED_BASE
    held_out = {r.seed for r in eval_requests(prompts, 32)}
    assert min(held_out) == EVAL_SEED_BASE and not training & held_out
