"""The learned preference reward's held-out eval in `kind: pretrain` (data.source: scenes_pairs): the controller loads
the learner's EMA weights into a local copy of the dual encoder and ranks the verified held-out pairs (true render
above one-attribute-changed render, for the true prompt; GenEval's strict rules give them 1 and 0). The headline is
the share ranked as the rules rank them, on clean renders; `degraded` is the same pairs blurred (sigma 0.8) and
noised as samples are; `blank` is the share of pairs whose true render scores above an empty canvas. Per-kind accuracies and the score margin are logged; the last eval writes them to
pair_accuracy.json."""

from __future__ import annotations

import json

import numpy as np
import torch

from diffrl.kinds.pretrain.preference_data import degrade
from diffrl.models.preference import PreferenceModel
from diffrl.models.registry import load_trainable_state_dict
from diffrl.utils.atomic import atomic_write_text


def degraded_pairs(pairs: list[dict]) -> list[dict]:
    """The same pairs with both renders blurred (sigma up to 0.8) and noised, as samples are (fixed draws)."""
    rng = np.random.default_rng(0)
    pos, neg = (((degrade(np.stack([p[key] for p in pairs]), rng, 1.0, 0.8, 0.05) + 1) * 127.5).round()
                .clamp(0, 255).byte().permute(0, 2, 3, 1).numpy() for key in ("pos", "neg"))
    return [{**p, "pos": a, "neg": b} for p, a, b in zip(pairs, pos, neg)]


def pair_metrics(model: PreferenceModel, pairs: list[dict]) -> dict[str, float]:
    """Ranking accuracy (overall and per kind), the mean score margin of the true over the changed render and the
    share of true renders scored above an empty (black) canvas."""
    captions = [p["entry"]["prompt"] for p in pairs]
    pos, neg = np.stack([p["pos"] for p in pairs]), np.stack([p["neg"] for p in pairs])
    true = model.score(pos, captions)
    margin = true - model.score(neg, captions)
    kinds = np.array([p["kind"] for p in pairs])
    out = {"accuracy": float(np.mean(margin > 0)), "margin": float(np.mean(margin)),
           "blank": float(np.mean(true > model.score(np.zeros_like(pos), captions)))}
    out.update({f"accuracy/{kind}": float(np.mean(margin[kinds == kind] > 0)) for kind in sorted(set(kinds))})
    return out


def evaluate_pairs(learner, local: PreferenceModel, pairs: list[dict], degraded_copy: list[dict], step: int, log,
                   run_dir, last: bool) -> float:
    """`degraded_copy`: degraded_pairs(pairs), made once per run."""
    load_trainable_state_dict(local, learner.get([learner.call(0, "get_weights", ema=True)])[0].tensors())
    with torch.no_grad():
        clean, degraded = pair_metrics(local, pairs), pair_metrics(local, degraded_copy)
    log.write({"step": step, "eval/headline": clean["accuracy"], **{f"eval/{k}": v for k, v in clean.items()},
               **{f"eval/degraded/{k}": v for k, v in degraded.items()}})
    if last:
        atomic_write_text(run_dir / "pair_accuracy.json", json.dumps({"step": step, "pairs": len(pairs),
                                                                      "clean": clean, "degraded": degraded},
                                                                     indent=1))
    return clean["accuracy"]
