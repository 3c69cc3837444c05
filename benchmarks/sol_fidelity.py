"""Where Sol-RL's ranking fidelity is lost: Kendall tau-b between the exploration rewards of a candidate pool and the
rewards of the same seeds regenerated in full precision with the rollout's 10 steps, against explore steps, explore
precision (emulated NVFP4 vs full precision) and reward type (GenEval-shapes partial credit vs strict 0/1).

Pools: configs/shapes_sol.yaml's training prompts of steps 0-3 (4 prompts each), 96 seeds per prompt, base model.
Per prompt, tau-b (ties corrected; scipy) over the whole pool and over the 24 seeds Sol-RL would choose (12 best and
12 worst by the exploration reward), and top-12 agreement; averaged over prompts whose rewards are not constant on
either side. `ties` is the share of tied pairs in the reference ranking: strict rewards are mostly ties, which caps
what any ranking can agree on. Explore cost is relative to one full-precision 10-step rollout of the pool (NFEs;
the NVFP4 saving per NFE needs NVFP4 tensor cores and is not counted here).

`--world scenes` does the same on the scenes world (configs/scenes_sol.yaml, `builtin:scenes_base`) with its
trained reward (`mix`: 0.5 GenEval-scenes partial credit + 0.5 scenes_preference, what Sol-RL ranks by) and its
parts, which separates the two changes Sol-RL's exploration makes (fewer steps, NVFP4) for issue 28's tau-b.

Target (issues "Evidence and speed", 28): tau >= 0.8 at a setting that still saves rollout compute.
Writes the section "Sol-RL ranking fidelity" ("Sol-RL ranking fidelity: scenes world") of docs/benchmarks.md.
Usage: .venv/bin/python benchmarks/sol_fidelity.py [--world shapes] [--steps 2 4 6 10] [--prompt-steps 4]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from docs_table import publish  # noqa: E402

from diffrl.algorithms.sol import kendall_tau, select_seeds, top_k_agreement  # noqa: E402
from diffrl.kinds import load_job  # noqa: E402
from diffrl.kinds.rl.data import prompt_splits, step_requests  # noqa: E402
from diffrl.rewards.base import build_reward  # noqa: E402
from diffrl.workers.rollout import RolloutWorker  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
POOL, CHOSEN = 96, 24
WORLDS = {
    "shapes": {"job": "configs/shapes_sol.yaml", "rules": "geneval_shapes", "kinds": ("partial", "strict"),
               "section": "Sol-RL ranking fidelity", "what": "GenEval-shapes rewards"},
    "scenes": {"job": "configs/scenes_sol.yaml", "rules": "geneval_scenes",
               "kinds": ("mix", "partial", "strict", "preference"), "section": "Sol-RL ranking fidelity: scenes world",
               "what": "the scenes world's rewards (mix: the trained 0.5 GenEval-scenes partial credit + 0.5 "
                       "scenes_preference; the rules' partial and strict scores; the preference reward alone)"},
}


def rewards_of(worker: RolloutWorker, requests: list, steps: int, rules, preference=None,
               weights: tuple[float, float] = (0.5, 0.5)) -> dict[str, torch.Tensor]:
    """The rules' partial and strict scores; with `preference`, its score and the trained mix (the job's weights on
    the rules' partial credit and the preference score)."""
    batch = worker.generate(requests, num_steps=steps)
    out = rules(batch.images, batch.prompts, batch.metadata)
    scores = {"partial": torch.tensor(out.scores, dtype=torch.float64),
              "strict": torch.tensor(out.details["strict"], dtype=torch.float64)}
    if preference is not None:
        scores["preference"] = torch.tensor(preference(batch.images, batch.prompts, batch.metadata).scores,
                                            dtype=torch.float64)
        scores["mix"] = weights[0] * scores["partial"] + weights[1] * scores["preference"]
    return scores


def fidelity(explore: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    explore, reference = explore.view(-1, POOL), reference.view(-1, POOL)
    full, chosen, topk, ties = [], [], [], []
    gen = torch.Generator().manual_seed(0)
    picks = select_seeds(explore.float(), CHOSEN, "best_worst", gen)
    for i in range(len(explore)):
        full.append(kendall_tau(explore[i], reference[i]))
        chosen.append(kendall_tau(explore[i][picks[i]], reference[i][picks[i]]))
        topk.append(top_k_agreement(explore[i], reference[i], CHOSEN // 2))
        diff = reference[i][:, None] - reference[i][None, :]
        ties.append(float((diff == 0).sum() - POOL) / (POOL * (POOL - 1)))
    mean = lambda values: float(np.nanmean(values)) if not np.all(np.isnan(values)) else float("nan")  # noqa: E731
    return {"tau_full": mean(full), "tau_chosen": mean(chosen), "topk": float(np.mean(topk)), "ties": float(np.mean(ties)),
            "prompts": int(np.sum(~np.isnan(full)))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", choices=sorted(WORLDS), default="shapes")
    parser.add_argument("--steps", type=int, nargs="+", default=[2, 4, 6, 10])
    parser.add_argument("--prompt-steps", type=int, default=4, help="training steps whose prompts make the pools")
    args = parser.parse_args()
    world = WORLDS[args.world]
    cfg = load_job(REPO / world["job"])
    train = prompt_splits(cfg)[0]
    requests = [r for step in range(args.prompt_steps) for r in step_requests(train, cfg, step, group_size=POOL)]
    rewards = [build_reward(world["rules"])]
    if args.world == "scenes":  # the trained mix, weighted as the job weighs it
        weight = {r.name: r.weight for r in cfg.reward.rewards}
        rewards += [build_reward("scenes_preference"), (weight[world["rules"]], weight["scenes_preference"])]
    torch.set_num_threads(os.cpu_count() or 1)
    workers = {}
    for precision in ("fp32", "nvfp4"):
        worker = RolloutWorker(cfg.model.model_dump(), {**cfg.rollout.model_dump(), "precision": precision,
                                                        "batch_size": 96})
        worker.setup()
        workers[precision] = worker
    reference = rewards_of(workers["fp32"], requests, cfg.rollout.num_steps, *rewards)
    rows = ["| explore precision | explore steps | explore NFEs vs full | reward | tau-b, whole pool | tau-b, chosen 24 | "
            "top-12 agreement | tied pairs (reference) |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for precision, worker in workers.items():
        for steps in args.steps:
            explored = reference if (precision, steps) == ("fp32", cfg.rollout.num_steps) else \
                rewards_of(worker, requests, steps, *rewards)
            for kind in world["kinds"]:
                f = fidelity(explored[kind], reference[kind])
                rows.append(f"| {precision} | {steps} | {steps / cfg.rollout.num_steps:.1f} | {kind} | {f['tau_full']:.3f} | "
                            f"{f['tau_chosen']:.3f} | {f['topk']:.3f} | {f['ties']:.2f} |")
                print(rows[-1], flush=True)
    n_prompts = len(requests) // POOL
    publish(REPO / "docs/benchmarks.md", world["section"],
            f"Exploration rewards vs the same seeds regenerated in full precision with {cfg.rollout.num_steps} steps "
            f"(the reference), {n_prompts} training prompts x {POOL} seeds, base model, {world['what']}; "
            "tau-b per prompt (ties corrected), averaged over prompts. `benchmarks/sol_fidelity.py`; NVFP4 is emulated "
            "on CPU (fake quantization, the same numerics as the GPU path's weights and activations), so the cost "
            "column counts NFEs only." + (" `--world scenes`." if args.world == "scenes" else ""), rows)

if __name__ == "__main__":
    main()
