"""What a bigger explored pool changes in the batch the learner sees: the contrast between the samples AWM pushes
up and those it pushes down, the advantage scale after per-group normalisation, and how many groups carry no signal.

Pools: configs/shapes_sol.yaml's training prompts of steps 0-3 (4 prompts each), 96 seeds per prompt, base model,
full precision, the rollout's 10 steps (the same pools benchmarks/sol_fidelity.py uses as its reference). Per prompt,
the 24-of-24 arm trains on 24 seeds of the pool (seeds 0-23: any 24 seeds of a pool are the same distribution) and
the 24-of-96 arms on the 12 best and 12 worst of all 96 (best_worst) or on the 24 farthest from the pool's
mean (mean_deviation). Advantages as the AWM learner computes them
(diffrl.algorithms.advantages.group_advantages, clip 5, scale 5: A in [-1, 1]), on the reward the learner trains on
(GenEval-shapes partial credit). Reported per selection:
  zero-signal groups   share of prompts whose 24 trained rewards are all equal (advantage 0 everywhere)
  reward gap           mean reward of the A > 0 samples minus that of the A < 0 samples (what the update contrasts)
  mean |A|             the per-sample weight the learner's loss gets
  share with A > 0     how much of the trained batch the update pushes up
  top reward share     share of the positives that have the group's best possible reward (1.0): saturation
Writes the section "Sol-RL: what selection changes" of docs/benchmarks.md.
Usage: .venv/bin/python benchmarks/sol_contrast.py [--prompt-steps 4]
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
from sol_fidelity import CHOSEN, POOL, rewards_of  # noqa: E402

from diffrl.algorithms.advantages import group_advantages  # noqa: E402
from diffrl.algorithms.sol import select_seeds  # noqa: E402
from diffrl.kinds import load_job  # noqa: E402
from diffrl.kinds.rl.data import prompt_splits, step_requests  # noqa: E402
from diffrl.rewards.base import build_reward  # noqa: E402
from diffrl.workers.rollout import RolloutWorker  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def contrast(rewards: torch.Tensor, picks: torch.Tensor) -> dict[str, float]:
    """Statistics of the trained groups rewards[i, picks[i]] (rewards [P, 96], picks [P, 24])."""
    chosen = torch.gather(rewards, 1, picks)
    groups = torch.arange(len(chosen)).repeat_interleave(chosen.shape[1])
    adv = group_advantages(chosen.reshape(-1), groups, clip=5.0, scale=5.0).view_as(chosen)
    gaps, tops = [], []
    for r, a in zip(chosen, adv):
        if (a > 0).any() and (a < 0).any():
            gaps.append(float(r[a > 0].mean() - r[a < 0].mean()))
            tops.append(float((r[a > 0] >= 1.0).float().mean()))
    return {"zero": float((chosen.max(1).values == chosen.min(1).values).float().mean()),
            "gap": float(np.mean(gaps)) if gaps else float("nan"), "abs_adv": float(adv.abs().mean()),
            "top": float(np.mean(tops)) if tops else float("nan"), "mean": float(chosen.mean()),
            "pos": float((adv > 0).float().mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt-steps", type=int, default=4, help="training steps whose prompts make the pools")
    args = parser.parse_args()
    cfg = load_job(REPO / "configs/shapes_sol.yaml")
    train = prompt_splits(cfg)[0]
    requests = [r for step in range(args.prompt_steps) for r in step_requests(train, cfg, step, group_size=POOL)]
    torch.set_num_threads(os.cpu_count() or 1)
    worker = RolloutWorker(cfg.model.model_dump(), {**cfg.rollout.model_dump(), "precision": "fp32", "batch_size": 96})
    worker.setup()
    pools = rewards_of(worker, requests, cfg.rollout.num_steps, build_reward("geneval_shapes"))
    rows = ["| trained set | zero-signal groups | trained reward mean | reward gap (A>0 minus A<0) | mean abs(A) | "
            "share with A > 0 | positives at reward 1 |", "| --- | --- | --- | --- | --- | --- | --- |"]
    rewards = pools["partial"].view(-1, POOL)
    for label, picks in (("24 of 24 (seeds 0-23)", torch.arange(CHOSEN).expand(len(rewards), CHOSEN)),
                         ("best 12 + worst 12 of 96", select_seeds(rewards.float(), CHOSEN, "best_worst")),
                         ("24 farthest from the mean of 96", select_seeds(rewards.float(), CHOSEN, "mean_deviation"))):
        c = contrast(rewards, picks)
        rows.append(f"| {label} | {c['zero']:.2f} | {c['mean']:.3f} | {c['gap']:.3f} | {c['abs_adv']:.3f} | "
                    f"{c['pos']:.2f} | {c['top']:.2f} |")
        print(rows[-1], flush=True)
    publish(REPO / "docs/benchmarks.md", "Sol-RL: what selection changes",
            f"{len(requests) // POOL} training prompts x {POOL} seeds of the base model in full precision (10 steps), "
            "the trained 24 per prompt as each selection picks them, GenEval-shapes partial-credit rewards, AWM's "
            "advantages (per-group normalisation, A in [-1, 1]). `benchmarks/sol_contrast.py`.", rows)

if __name__ == "__main__":
    main()
