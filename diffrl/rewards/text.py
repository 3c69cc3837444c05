"""Verifiable rewards for text completions (dLLM RL): the reward routes pass the completions (strings) where image
rewards get images, with the prompts and each prompt's metadata; a task's metadata carries its `reference` answer.

- `exact_match`: 1 when the completion (stripped) equals the reference, else 0 (d1's correctness reward);
- `char_accuracy`: partial credit, the share of the reference's characters the completion has at the same position
  (a cell accuracy for fixed-format answers: sorted digits, sums written out); detail `exact` is logged too.
"""

from __future__ import annotations

from typing import Sequence

from diffrl.rewards.base import RewardOutput


def references(name: str, completions: Sequence, metadata: Sequence[dict]) -> list[str]:
    out = []
    for i, (completion, meta) in enumerate(zip(completions, metadata)):
        if not isinstance(completion, str):
            raise TypeError(f"reward '{name}' scores text completions; row {i} is {type(completion).__name__}")
        if not isinstance(meta, dict) or not isinstance(meta.get("reference"), str):
            raise ValueError(f"reward '{name}': row {i} has no string 'reference' in its metadata")
        out.append(meta["reference"].strip())
    return out


class ExactMatch:
    name = "exact_match"

    def __call__(self, completions, prompts, metadata) -> RewardOutput:
        refs = references(self.name, completions, metadata)
        return RewardOutput(scores=[float(c.strip() == r) for c, r in zip(completions, refs)])


class CharAccuracy:
    name = "char_accuracy"

    def __call__(self, completions, prompts, metadata) -> RewardOutput:
        refs = references(self.name, completions, metadata)
        scores = []
        for completion, ref in zip(completions, refs):
            text = completion.strip()
            scores.append(sum(a == b for a, b in zip(text, ref)) / len(ref) if ref else float(text == ref))
        return RewardOutput(scores=scores, details={"exact": [float(c.strip() == r)
                                                              for c, r in zip(completions, refs)]})
