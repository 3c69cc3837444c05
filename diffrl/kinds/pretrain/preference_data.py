"""Training data and held-out pairs of the learned preference reward (`data.source: scenes_pairs`).

Row i of step s: a change kind drawn uniformly (`balance: kind`; then a task type and a training prompt it applies to)
or a task type drawn uniformly (`balance: tag`; then a prompt and one of its kinds), one of the prompt's renders, the
one-attribute change of the prompt (`diffrl.envs.scenes_pairs`) and a render of the changed prompt that GenEval's strict rules
reject for the original prompt (a changed relation can still hold by chance on a diagonal; such draws are redrawn).
Renders are then degraded as a sampler's are (a random Gaussian blur and pixel noise), so the reward reads model
samples and not only clean renders. Each row also carries a blank canvas, degraded the same way: a negative of every
caption (an empty image must never outscore a scene, or the reward is hacked by drawing nothing). With
`pairs_per_prompt` > 0 each (prompt, kind) has that many pairs, rendered once and cached; with 0 every row is a fresh
render. Everything is a function of (seed, step, row): a resumed run continues the exact stream and N ranks see the
rows one rank would.

The held-out pairs: for each held-out prompt, `pairs_per_prompt` (true render, changed render) pairs, one per
applicable kind in turn, each verified by the rules (1 for the true render, 0 for the changed one). A prompt that
names all five shapes has no one-attribute change and makes no pair.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from diffrl.envs import scenes
from diffrl.envs.scenes_pairs import KINDS, applicable, perturb
from diffrl.envs.worlds import draw_by_tag, prompts_by_tag
from diffrl.models.preference import DEFAULT_CONFIG, caption_vocabulary, token_ids, token_table
from diffrl.platform.worker import split_evenly


@dataclass
class PairBatch:
    """Rows: true image, its caption's ids, the changed prompt's image and ids, a degraded blank canvas (images
    float [N, 3, H, W] in [-1, 1], ids long [N, 1 + max_words])."""

    image: torch.Tensor
    ids: torch.Tensor
    neg_image: torch.Tensor
    neg_ids: torch.Tensor
    blank: torch.Tensor
    prompts: list[str]
    kinds: list[str]

    def __len__(self) -> int:
        return len(self.prompts)

    def select(self, rows: list[int]) -> PairBatch:
        index = torch.as_tensor(rows, dtype=torch.long)
        return replace(self, image=self.image[index], ids=self.ids[index], neg_image=self.neg_image[index],
                       neg_ids=self.neg_ids[index], blank=self.blank[index], prompts=[self.prompts[i] for i in rows],
                       kinds=[self.kinds[i] for i in rows])

    def split(self, num_shards: int) -> list[PairBatch]:
        return [self.select(rows) for rows in split_evenly(list(range(len(self))), num_shards)]


def rule_strict():
    from diffrl.rewards.builtin import geneval_scenes

    return geneval_scenes(score="strict")


def verified_pair(entry: dict, kind: str, rng: np.random.Generator, rules, tries: int = 20):
    """(true render, changed entry, changed render) whose rule scores against `entry` are 1 and 0."""
    for _ in range(tries):
        changed = perturb(entry, kind, rng)
        pos, neg = scenes.render_prompt(entry, rng), scenes.render_prompt(changed, rng)
        scores = rules(np.stack([pos, neg]), [entry["prompt"]] * 2, [entry, entry]).scores
        if scores == [1.0, 0.0]:
            return pos, changed, neg
    raise ValueError(f"no {kind} change of {entry['prompt']!r} the rules reject in {tries} draws")


def degrade(images: np.ndarray, rng: np.random.Generator, blur_prob: float, max_sigma: float,
            max_noise: float) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, H, W] in [-1, 1], each row blurred (probability blur_prob, sigma uniform
    in (0, max_sigma]) and given Gaussian pixel noise (std uniform in [0, max_noise])."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    out = []
    for row in x:
        if rng.random() < blur_prob:
            sigma = float(rng.uniform(0.05, max_sigma))
            radius = max(1, int(np.ceil(2.5 * sigma)))
            offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
            kernel = torch.exp(-offsets**2 / (2 * sigma**2))
            kernel = (kernel / kernel.sum()).view(1, 1, 1, -1).repeat(3, 1, 1, 1)
            row = F.conv2d(F.pad(row[None], (radius, radius, 0, 0), mode="replicate"), kernel, groups=3)
            row = F.conv2d(F.pad(row, (0, 0, radius, radius), mode="replicate"), kernel.transpose(2, 3), groups=3)[0]
        noise = torch.from_numpy(rng.standard_normal(row.shape).astype(np.float32)) * float(rng.uniform(0, max_noise))
        out.append((row + noise).clamp(-1, 1))
    return torch.stack(out)


class ScenesPairs:
    def __init__(self, seed: int, pairs_per_prompt: int, split: dict, blur_prob: float, max_blur_sigma: float,
                 max_noise: float, balance: str = "tag") -> None:
        if balance not in ("kind", "tag"):
            raise ValueError(f"data.balance must be 'kind' or 'tag', got {balance!r}")
        self.seed, self.pairs_per_prompt, self.balance = seed, pairs_per_prompt, balance
        self.augment = (blur_prob, max_blur_sigma, max_noise)
        self.train, self.heldout = scenes.prompt_splits(**split)
        # A prompt naming all five shapes has no one-attribute change: it makes no pair.
        self.by_tag = prompts_by_tag(self.train, scenes.TAGS, keep=applicable)
        self.by_kind = {kind: prompts_by_tag(self.train, scenes.TAGS, keep=lambda e, k=kind: k in applicable(e))
                        for kind in KINDS}
        self.table = token_table(caption_vocabulary([p["prompt"] for p in scenes.all_prompts()]))
        self.rules = rule_strict()
        self._cache: dict[tuple[int, str | None, int], tuple[np.ndarray, dict, np.ndarray, str]] = {}

    @classmethod
    def from_config(cls, cfg) -> ScenesPairs:
        data = cfg.data
        return cls(cfg.seed, data.pairs_per_prompt, {"heldout_per_tag": data.heldout_per_tag, "seed": data.split_seed},
                   data.blur_prob, data.max_blur_sigma, data.max_noise, data.balance)

    def pair(self, prompt: int, index: int, kind: str | None = None) -> tuple[np.ndarray, dict, np.ndarray, str]:
        """Pair `index` of training prompt `prompt` changed in `kind` (None: a kind drawn from the prompt's); a
        function of (seed, prompt, kind, index), cached while pairs_per_prompt > 0."""
        key = (prompt, kind, index)
        if key in self._cache:
            return self._cache[key]
        entry = self.train[prompt]
        # stream 1: the kind drawn here (the shipped recipe's stream); 2 + k: kind k asked for
        rng = np.random.default_rng([self.seed, prompt, index, 1 if kind is None else 2 + KINDS.index(kind)])
        if kind is None:
            kinds = applicable(entry)
            kind = kinds[int(rng.integers(len(kinds)))]
        out = (*verified_pair(entry, kind, rng, self.rules), kind)
        if self.pairs_per_prompt:
            self._cache[key] = out
        return out

    def batch(self, step: int, size: int) -> PairBatch:
        rng = np.random.default_rng([self.seed, step])
        if self.balance == "kind":
            kinds = [KINDS[int(k)] for k in rng.integers(0, len(KINDS), size=size)]
            prompts = [draw_by_tag(rng, self.by_kind[k], 1)[0] for k in kinds]
        else:
            kinds, prompts = [None] * size, draw_by_tag(rng, self.by_tag, size)
        # Fresh renders (pairs_per_prompt 0) take their index from the step and row: never repeated.
        indices = (rng.integers(0, self.pairs_per_prompt, size=size) if self.pairs_per_prompt
                   else [step * size + row for row in range(size)])
        pairs = [self.pair(p, int(i), k) for p, i, k in zip(prompts, indices, kinds)]
        limit = DEFAULT_CONFIG["max_words"]
        captions = [self.train[p]["prompt"] for p in prompts]
        return PairBatch(image=degrade(np.stack([q[0] for q in pairs]), rng, *self.augment),
                         ids=token_ids(captions, self.table, limit),
                         neg_image=degrade(np.stack([q[2] for q in pairs]), rng, *self.augment),
                         neg_ids=token_ids([q[1]["prompt"] for q in pairs], self.table, limit),
                         blank=degrade(np.zeros_like(pairs[0][0])[None].repeat(size, 0), rng, *self.augment),
                         prompts=captions, kinds=[q[3] for q in pairs])


def heldout_pairs(heldout: list[dict], pairs_per_prompt: int, seed: int = 0) -> list[dict]:
    """Verified (true, changed) render pairs of the held-out prompts: kinds taken in turn per prompt."""
    rules = rule_strict()
    out = []
    for n, entry in enumerate(heldout):
        kinds = applicable(entry)
        if not kinds:
            continue
        for i in range(pairs_per_prompt):
            rng = np.random.default_rng([seed, n, i, 2])
            pos, changed, neg = verified_pair(entry, kinds[i % len(kinds)], rng, rules)
            out.append({"entry": entry, "kind": kinds[i % len(kinds)], "changed": changed["prompt"], "pos": pos,
                        "neg": neg})
    return out
