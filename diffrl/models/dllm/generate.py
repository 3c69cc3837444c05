"""Masked-diffusion decoding with per-sequence progress: LLaDA's semi-autoregressive low-confidence remasking and
the Fast-dLLM accelerations (arXiv 2505.22618; NVlabs/Fast-dLLM) — confidence-threshold and factor parallel
decoding, prefix cache and dual cache — and Fast-dLLM v2's block decoding (arXiv 2509.26328: a block-causal model,
exact cache of finished blocks, sub-blocks decoded in parallel against a cache of the rest of the block).

The answer (gen_length slots) is split into blocks; a block is split into units (sub-blocks, or the whole block);
each step commits tokens of the current unit only, by `rule`: "top_k" (LLaDA: an even share of the unit's masks
per step), "threshold" or "factor". Every row keeps its own block, unit and step, so a row that finishes a block
early moves on while the others continue, and a row's tokens do not depend on the rest of its batch. Rows at the
same phase and window width share one forward; a row's NFE counts the forwards it took part in.

Caches (`cache`): "none" — a full forward each step; "prefix" — at each block's first step one forward refreshes
the cache, later steps run [unit start, end) against the cached prefix; "dual" — later steps run only the unit
against the cached prefix and suffix, writing its K/V in place. For causal and block-causal models the refresh
recomputes only from the previous block's start (earlier K/V are final) and nothing after the current block is
attended, so their prefix cache is exact.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch import Tensor

from diffrl.algorithms.dllm_decoding import (block_candidates, commit_factor, commit_threshold, commit_top_k,
                                             greedy_predictions, transfer_schedule)
from diffrl.models.dllm.adapter import Layout, MaskedDiffusionLM

Rule = Literal["top_k", "threshold", "factor"]
Cache = Literal["none", "prefix", "dual"]


@dataclass(frozen=True)
class DecodeOptions:
    """- `steps`: total steps of the "top_k" rule over the answer (divisible into units); other rules ignore it;
    - `sub_block_length`: 0 decodes each block as one unit; else sub-blocks of this length (v2);
    - `temperature`: 0 is greedy; > 0 samples (Gumbel-max) from a generator seeded per sequence."""

    gen_length: int = 32
    block_length: int = 8
    steps: int = 32
    rule: Rule = "top_k"
    threshold: float = 0.9
    factor: float = 1.0
    cache: Cache = "none"
    sub_block_length: int = 0
    temperature: float = 0.0

    def __post_init__(self) -> None:
        if self.gen_length < 1 or self.block_length < 1 or self.gen_length % self.block_length:
            raise ValueError(f"gen_length={self.gen_length} must be a positive multiple of block_length="
                             f"{self.block_length}")
        if self.sub_block_length and self.block_length % self.sub_block_length:
            raise ValueError(f"sub_block_length={self.sub_block_length} must divide block_length={self.block_length}")
        if self.rule == "top_k" and (self.steps < 1 or self.steps % self.num_units):
            raise ValueError(f"steps={self.steps} must be a positive multiple of the number of units "
                             f"({self.num_units}: gen_length / {self.unit_length})")

    @property
    def unit_length(self) -> int:
        return self.sub_block_length or self.block_length

    @property
    def num_units(self) -> int:
        return self.gen_length // self.unit_length


@dataclass
class Generation:
    """One sequence's answer ids (gen_length), its NFEs (forwards it took part in) and its decoding time share."""

    answer: list[int]
    nfe: int
    seconds: float = 0.0
    text: str = ""


@dataclass
class _Rows:
    """Per-row decoding state (tensors over the batch)."""

    unit: Tensor  # current unit index over the whole answer
    step: Tensor  # step within the unit (the top_k schedule)
    fresh: Tensor  # bool: at a block's first step (a cache refresh is due)
    nfe: Tensor
    seconds: Tensor  # float64 on CPU: each row's share of the forwards it took part in
    schedule: Tensor | None = None  # top_k: tokens to commit at each step of a unit


@torch.no_grad()
def generate(lm: MaskedDiffusionLM, prompts: Sequence[Sequence[int]], options: DecodeOptions,
             seeds: Sequence[int] | None = None) -> list[Generation]:
    """Decode one answer per prompt (token ids); with temperature > 0, row i samples from generator seeds[i]
    (default: its index)."""
    check_model(lm, options)
    x, layout = lm.pack(prompts, options.gen_length)
    batch, device = len(prompts), x.device
    mask_id = lm.tokenizer.mask_token_id
    unit_len, units_per_block = options.unit_length, options.block_length // options.unit_length
    rows = _Rows(unit=torch.zeros(batch, dtype=torch.long, device=device),
                 step=torch.zeros(batch, dtype=torch.long, device=device),
                 fresh=torch.ones(batch, dtype=torch.bool, device=device),
                 nfe=torch.zeros(batch, dtype=torch.long, device=device),
                 seconds=torch.zeros(batch, dtype=torch.float64))
    if options.rule == "top_k":
        rows.schedule = transfer_schedule(torch.full((batch,), unit_len, device=device), options.steps // options.num_units)
    generators = None
    if options.temperature > 0:
        generators = [torch.Generator(device).manual_seed(int(s)) for s in (seeds or range(batch))]
    cache = lm.new_cache(batch, layout) if options.cache != "none" else None
    while True:
        active = rows.unit < options.num_units
        if not bool(active.any()):
            break
        for index, starts, width, use_cache in _groups(lm, layout, options, rows, active, units_per_block):
            tick = time.perf_counter()
            part = None
            if use_cache:  # the rows' cache (all of it, in place, when every row takes part)
                part = cache if len(index) == batch else cache.rows(index)
            logits = lm.window_logits(x, layout, index, starts, width, part)
            if part is not None and part is not cache:
                cache.put_rows(index, part)
            _commit(x, layout, options, rows, index, starts, logits, mask_id, generators)
            rows.nfe[index] += 1
            rows.seconds[index.cpu()] += (time.perf_counter() - tick) / len(index)
        _advance(x, layout, options, rows, active, mask_id, units_per_block)
    answers = x[:, layout.prompt_end:].tolist()
    return [Generation(answer, int(n), float(s), lm.tokenizer.decode_answer(answer))
            for answer, n, s in zip(answers, rows.nfe.tolist(), rows.seconds.tolist())]


def check_model(lm: MaskedDiffusionLM, options: DecodeOptions) -> None:
    """A block-causal model decodes in the blocks it was trained with."""
    size = lm.config.block_size
    if lm.config.attention == "block_causal" and options.block_length != size:
        raise ValueError(f"decode.block_length={options.block_length}: this block-causal model was trained with "
                         f"blocks of {size}")


def _groups(lm: MaskedDiffusionLM, layout: Layout, options: DecodeOptions, rows: _Rows, active: Tensor,
            units_per_block: int):
    """(rows, window starts, width, cached) of this step's forwards: rows with the same window width share one."""
    P, unit_len, block_len = layout.prompt_end, options.unit_length, options.block_length
    unit_start = P + rows.unit * unit_len
    block = rows.unit // units_per_block
    block_start, block_end = P + block * block_len, P + (block + 1) * block_len
    exact = lm.config.attention != "bidirectional"
    end = block_end if exact else torch.full_like(block_end, layout.total)
    if options.cache == "none":
        starts, widths, cached = torch.zeros_like(unit_start), end, torch.zeros_like(active)
    else:
        # a block's refresh: from the previous block's start (earlier K/V are final) or, bidirectional, everything
        refresh_from = torch.where(block == 0, 0, block_start - block_len) if exact else torch.zeros_like(block_start)
        step_width = torch.full_like(unit_start, unit_len) if options.cache == "dual" else end - unit_start
        starts = torch.where(rows.fresh, refresh_from, unit_start)
        widths = torch.where(rows.fresh, end - refresh_from, step_width)
        cached = torch.ones_like(active)
    keys = torch.stack([widths, cached.long()], 1)[active]
    for width, use in torch.unique(keys, dim=0).tolist():
        index = (active & (widths == width) & (cached.long() == use)).nonzero().squeeze(1)
        yield index, starts[index], int(width), bool(use)


def _commit(x: Tensor, layout: Layout, options: DecodeOptions, rows: _Rows, index: Tensor, starts: Tensor,
            logits: Tensor, mask_id: int, generators) -> None:
    """Commit tokens of each row's current unit from the logits of its window."""
    width = logits.shape[1]
    slots = starts[:, None] + torch.arange(width, device=x.device)
    window = torch.gather(x[index], 1, slots)
    unit_start = layout.prompt_end + rows.unit[index] * options.unit_length
    in_unit = block_candidates(window == mask_id, unit_start - starts, unit_start - starts + options.unit_length)
    gens = None if generators is None else [generators[i] for i in index.tolist()]
    logits[..., mask_id] = float("-inf")  # committing the mask token itself would never finish a unit
    tokens, confidence = greedy_predictions(logits, options.temperature, gens)
    if options.rule == "top_k":
        chosen = commit_top_k(confidence, in_unit, rows.schedule[index, rows.step[index]])
    elif options.rule == "threshold":
        chosen = commit_threshold(confidence, in_unit, options.threshold)
    else:
        chosen = commit_factor(confidence, in_unit, options.factor)
    window = torch.where(chosen, tokens, window)
    x[index] = x[index].scatter(1, slots, window)


def _advance(x: Tensor, layout: Layout, options: DecodeOptions, rows: _Rows, active: Tensor, mask_id: int,
             units_per_block: int) -> None:
    """Next step, or (unit fully decoded) the next unit; a new block makes a cache refresh due."""
    unit_slots = layout.prompt_end + rows.unit[:, None] * options.unit_length + torch.arange(options.unit_length,
                                                                                             device=x.device)
    unit_slots = unit_slots.clamp(max=layout.total - 1)
    complete = active & ~(torch.gather(x, 1, unit_slots) == mask_id).any(1)
    rows.fresh = torch.where(active, False, rows.fresh)
    rows.step = torch.where(active & ~complete, rows.step + 1, rows.step)
    next_unit = rows.unit + 1
    rows.unit = torch.where(complete, next_unit, rows.unit)
    rows.step = torch.where(complete, 0, rows.step)
    rows.fresh = torch.where(complete & (next_unit % units_per_block == 0), True, rows.fresh)
