"""`kind: rl`: RL post-training of text-to-image diffusion/flow models (AWM, Flow-GRPO, DiffusionNFT; Sol-RL)."""

from __future__ import annotations

from diffrl.kinds.rl.config import RLJobConfig
from diffrl.kinds.rl.roles import rl_roles
from diffrl.kinds.checks import rl_problems
from diffrl.platform.kind import JobKind


def _run(ctx):
    from diffrl.kinds.rl.controller import run

    return run(ctx)


def _files(cfg: RLJobConfig) -> dict[str, str]:
    files = {f"data.{key}": value for key in ("train_file", "eval_file")
             if (value := getattr(cfg.data, key)) is not None}
    if cfg.rollout.schedule is not None:
        files["rollout.schedule"] = cfg.rollout.schedule
    return files


KIND = JobKind("rl", RLJobConfig, rl_roles, _run, _files, rl_problems)
