"""`diffrl pretrain-shapes`: pretrain the built-in tiny model on the shapes world (reproduces the shipped base).

Supervised flow matching with x0-prediction on renders of the training prompts only (held-out prompts stay unseen),
the text encoder trained jointly, 10% empty prompts so classifier-free guidance is available, and an EMA of the
weights that is what gets saved. Held-out GenEval-shapes accuracy is measured along the way.
"""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from diffrl.algorithms.awm import ema_update_
from diffrl.models.registry import shapes_vocabulary
from diffrl.envs.shapes import TAGS, prompt_splits, render_prompt
from diffrl.models.tiny_t2i import TinyT2I
from diffrl.rewards.builtin import geneval_shapes
from diffrl.workers.sampling import sample

RECIPE = {
    "steps": 5000,
    "batch_size": 128,
    "lr": 1e-3,
    "min_lr": 5e-5,
    "warmup": 300,
    "weight_decay": 0.0,
    "ema_decay": 0.999,
    "prompt_dropout": 0.1,
    "renders_per_prompt": 256,
    "eval_every": 1000,
    "eval_seeds": 8,
    "sample_steps": 10,
}


def render_bank(prompts: list[dict], per_prompt: int, seed: int) -> np.ndarray:
    """Pre-rendered training images [P, per_prompt, 3, H, W] in [-1, 1]: rendering once keeps each step cheap."""
    rng = np.random.default_rng(seed)
    bank = np.stack([np.stack([render_prompt(p, rng) for _ in range(per_prompt)]) for p in prompts])
    return torch.from_numpy(bank).permute(0, 1, 4, 2, 3).float().div(127.5).sub(1.0).numpy()


def heldout_accuracy(model: TinyT2I, prompts: list[dict], seeds: int, num_steps: int) -> dict[str, float]:
    """Strict GenEval-shapes accuracy per tag and averaged over tags, ODE sampling from fixed seeds."""
    reward = geneval_shapes()
    entries = [p for p in prompts for _ in range(seeds)]
    with torch.no_grad():
        cond = model.encode_prompts([e["prompt"] for e in entries])
        result = sample(model, cond, [1_000_000_000 + j for _ in prompts for j in range(seeds)], num_steps)
    out = reward(model.decode(result.samples), [e["prompt"] for e in entries], entries)
    strict = np.asarray(out.details["strict"], dtype=float)
    tags = np.asarray([e["tag"] for e in entries])
    per_tag = {tag: float(strict[tags == tag].mean()) for tag in TAGS if (tags == tag).any()}
    return {"strict": float(np.mean(list(per_tag.values()))), **per_tag}


def pretrain_shapes(
    out_dir: str | Path, minutes: float | None = None, steps: int | None = None, seed: int = 0
) -> dict[str, float]:
    recipe = dict(RECIPE, steps=steps or RECIPE["steps"])
    torch.manual_seed(seed)
    train, heldout = prompt_splits()
    model = TinyT2I(shapes_vocabulary())
    ema = copy.deepcopy(model).requires_grad_(False)
    params = list(model.denoiser.parameters()) + list(model.text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=recipe["lr"], weight_decay=recipe["weight_decay"])
    print(f"pretrain-shapes: {sum(p.numel() for p in params) / 1e6:.2f}M parameters, "
          f"{len(train)} train / {len(heldout)} held-out prompts; rendering the training bank ...")
    bank = torch.from_numpy(render_bank(train, recipe["renders_per_prompt"], seed))
    by_tag = [[i for i, p in enumerate(train) if p["tag"] == tag] for tag in TAGS]
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    start, history = time.perf_counter(), []
    bar = tqdm(range(recipe["steps"]), desc="pretrain", unit="step", dynamic_ncols=True)
    for step in bar:
        lr = _cosine_lr(step, recipe)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # Tags are drawn uniformly so that tags with few prompts (single_object) are not starved.
        tag_index = rng.integers(0, len(TAGS), size=recipe["batch_size"])
        prompt_index = np.array([rng.choice(by_tag[k]) for k in tag_index])
        render_index = rng.integers(0, recipe["renders_per_prompt"], size=recipe["batch_size"])
        x0 = bank[prompt_index, render_index]
        captions = [train[i]["prompt"] if rng.random() >= recipe["prompt_dropout"] else "" for i in prompt_index]
        t = torch.rand(len(x0), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        t_b = t.view(-1, 1, 1, 1)
        x_t = (1 - t_b) * x0 + t_b * eps
        cond = model.encode_prompts(captions)
        loss = ((model.denoiser.predict_x0(x_t, t, cond) - x0) ** 2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        ema_update_(list(ema.parameters()), list(model.parameters()), recipe["ema_decay"] if step > 200 else 0.0)
        bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.1e}")
        elapsed = (time.perf_counter() - start) / 60
        done = step + 1 == recipe["steps"] or (minutes is not None and elapsed >= minutes)
        if done or (step + 1) % recipe["eval_every"] == 0:
            acc = heldout_accuracy(ema, heldout, recipe["eval_seeds"], recipe["sample_steps"])
            history.append({"step": step + 1, "minutes": round(elapsed, 2), **acc})
            bar.write(json.dumps(history[-1]))
        if done:
            break
    bar.close()
    ema.save(out_dir)
    (Path(out_dir) / "pretrain_log.json").write_text(json.dumps({"recipe": recipe, "seed": seed,
                                                                 "history": history}, indent=1))
    print(f"pretrain-shapes: saved {out_dir}; held-out strict {history[-1]['strict']:.3f}")
    return history[-1]


def _cosine_lr(step: int, recipe: dict) -> float:
    if step < recipe["warmup"]:
        return recipe["lr"] * (step + 1) / recipe["warmup"]
    progress = (step - recipe["warmup"]) / max(1, recipe["steps"] - recipe["warmup"])
    return recipe["min_lr"] + 0.5 * (recipe["lr"] - recipe["min_lr"]) * (1 + math.cos(math.pi * progress))
