"""Pretraining data: a source gives the training and held-out prompts and, for step s, the global batch of clean
images with their captions, drawn deterministically from (seed, step) — so a resumed run continues the exact data
stream and N learner ranks see the rows one rank would. Sources register in SOURCES: the shapes world's renders
(the tiny text-to-image model) and the digit-sorting world's problems as token rows (the tiny dLLMs)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from diffrl.envs.worlds import draw_by_tag, prompts_by_tag, world
from diffrl.envs.sorting import ALPHABET, heldout_problems, training_problems
from diffrl.models.dllm.tokenizer import CharTokenizer
from diffrl.workers.dllm_objectives import TokenBatch
from diffrl.kinds.pretrain.config import PretrainJobConfig
from diffrl.kinds.pretrain.preference_data import ScenesPairs
from diffrl.platform.worker import split_evenly


@dataclass
class TrainingBatch:
    """Row i: clean image x0[i] (model space), its caption (empty under prompt dropout) and its noise seed (each
    row's timestep and noise come from it, so rows never depend on how the batch is split)."""

    x0: torch.Tensor  # float32 [N, C, H, W] in [-1, 1]
    prompts: list[str]
    seeds: torch.Tensor  # long [N]

    def __len__(self) -> int:
        return len(self.prompts)

    def select(self, rows: list[int]) -> TrainingBatch:
        index = torch.as_tensor(rows, dtype=torch.long)
        return replace(self, x0=self.x0[index], prompts=[self.prompts[i] for i in rows], seeds=self.seeds[index])

    def split(self, num_shards: int) -> list[TrainingBatch]:
        return [self.select(rows) for rows in split_evenly(list(range(len(self))), num_shards)]


class ShapesRenders:
    """An embedded world's renders (the shapes world, or the scenes world with `name="scenes"`) of the training
    prompts (held-out prompts are never rendered for training), tags drawn uniformly so that tags with few prompts
    are not starved, `renders_per_prompt` distinct scenes per prompt (render r of prompt p is a function of
    (seed, p, r)), and `prompt_dropout` empty captions. `split` holds the world's prompt_splits arguments."""

    def __init__(self, seed: int, renders_per_prompt: int, prompt_dropout: float, split: dict,
                 name: str = "shapes") -> None:
        self.seed, self.renders, self.dropout = seed, renders_per_prompt, prompt_dropout
        self.world = world(name)
        self.train, self.heldout = self.world.prompt_splits(**split)
        self.by_tag = prompts_by_tag(self.train, self.world.TAGS)
        self._cache: dict[tuple[int, int], np.ndarray] = {}

    @classmethod
    def from_config(cls, cfg: PretrainJobConfig) -> ShapesRenders:
        data = cfg.data
        if data.source == "scenes":
            split = {"heldout_per_tag": data.heldout_per_tag, "seed": data.split_seed}
        else:
            split = {"heldout_fraction": data.heldout_fraction, "seed": data.split_seed}
        return cls(cfg.seed, data.renders_per_prompt, data.prompt_dropout, split, data.source)

    def render(self, prompt: int, index: int) -> np.ndarray:
        key = (prompt, index)
        if key not in self._cache:
            rng = np.random.default_rng([self.seed, prompt, index])
            self._cache[key] = self.world.render_prompt(self.train[prompt], rng)
        return self._cache[key]

    def batch(self, step: int, size: int) -> TrainingBatch:
        rng = np.random.default_rng([self.seed, step])
        prompts = draw_by_tag(rng, self.by_tag, size)
        renders = rng.integers(0, self.renders, size=size)
        dropped = rng.random(size) < self.dropout
        seeds = rng.integers(0, 2**62, size=size)
        images = np.stack([self.render(p, int(r)) for p, r in zip(prompts, renders)])
        x0 = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        captions = ["" if drop else self.train[p]["prompt"] for p, drop in zip(prompts, dropped)]
        return TrainingBatch(x0.contiguous(), captions, torch.from_numpy(seeds).long())


class SortingProblems:
    """The digit-sorting world: `heldout` problems are held out; step s trains on fresh problems drawn from
    (seed, s), each row [<bos> digits = | sorted digits] with its own seed."""

    def __init__(self, seed: int, length: int, heldout: int, split_seed: int) -> None:
        self.seed, self.length = seed, length
        self.tokenizer = CharTokenizer(ALPHABET)
        self.heldout = heldout_problems(heldout, length, split_seed)
        self._excluded = {p["prompt"] for p in self.heldout}

    @classmethod
    def from_config(cls, cfg: PretrainJobConfig) -> SortingProblems:
        return cls(cfg.seed, cfg.data.length, cfg.data.heldout, cfg.data.split_seed)

    def batch(self, step: int, size: int) -> TokenBatch:
        problems = training_problems(step, size, self.length, self.seed, self._excluded)
        rows = [self.tokenizer.encode_prompt(p["prompt"]) + self.tokenizer.encode(p["reference"]) for p in problems]
        seeds = np.random.default_rng([self.seed, step]).integers(0, 2**40, size=size)
        return TokenBatch(torch.tensor(rows, dtype=torch.long), 2 + self.length, torch.from_numpy(seeds).long())


SOURCES: dict[str, type] = {"shapes": ShapesRenders, "scenes": ShapesRenders, "sorting": SortingProblems,
                             "scenes_pairs": ScenesPairs}


def build_source(cfg: PretrainJobConfig) -> ShapesRenders | SortingProblems | ScenesPairs:
    """The job's data source, from `data.source` (each source reads its own section)."""
    return SOURCES[cfg.data.source].from_config(cfg)
