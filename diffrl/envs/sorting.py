"""The digit-sorting world of the tiny dLLMs: a prompt is `length` random digits followed by "=", its answer the
same digits in ascending order. Answers are exact (accuracy is an exact match) and their tokens depend on each
other — every digit's count fixes where the runs of the others begin — and with the default length of 32 an
answer spans several decoding blocks.

Problems are functions of (seed, index); the held-out problems come from their own seed stream and the training
stream skips any of them, so a model is never trained on a problem it is scored on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

ALPHABET = "0123456789="
HELDOUT_STREAM, TRAINING_STREAM = 1, 2


def make_problem(rng: np.random.Generator, length: int) -> dict[str, str]:
    digits = rng.integers(0, 10, size=length)
    return {"prompt": "".join(map(str, digits)) + "=", "reference": "".join(map(str, np.sort(digits)))}


def heldout_problems(count: int, length: int, seed: int) -> list[dict[str, str]]:
    """The `count` held-out problems of `seed` (distinct prompts)."""
    rng = np.random.default_rng([seed, HELDOUT_STREAM])
    problems, seen = [], set()
    while len(problems) < count:
        problem = make_problem(rng, length)
        if problem["prompt"] not in seen:
            seen.add(problem["prompt"])
            problems.append(problem)
    return problems


def training_problems(step: int, size: int, length: int, seed: int, exclude: set[str]) -> list[dict[str, str]]:
    """The `size` training problems of `step` (a function of (seed, step)), none of them in `exclude`."""
    rng = np.random.default_rng([seed, TRAINING_STREAM, step])
    problems = []
    while len(problems) < size:
        problem = make_problem(rng, length)
        if problem["prompt"] not in exclude:
            problems.append(problem)
    return problems


def is_correct(answer: str, reference: str) -> bool:
    return answer == reference


def write_prompts_file(path: str | Path, problems: list[dict[str, str]]) -> Path:
    """A dllm_decode prompts file: one JSON object per line with "prompt" and "reference"."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(problem) + "\n" for problem in problems))
    return path
