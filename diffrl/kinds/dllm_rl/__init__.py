"""`kind: dllm_rl`: RL post-training of diffusion LLMs on the platform's learners: the dLLM decode workers roll out
G completions per prompt (Fast-dLLM decoding by default), the reward roles score them, the DeepSpeed learners train
diffu-GRPO (d1; coupled masks: DiffuCoder) or wd1, and the weights go back to the decode workers after each update."""

from __future__ import annotations

from diffrl.kinds.dllm_rl.config import DllmRLJobConfig
from diffrl.kinds.dllm_rl.roles import dllm_rl_roles
from diffrl.platform.kind import JobKind


def _run(ctx):
    from diffrl.kinds.dllm_rl.controller import run

    return run(ctx)


def _files(cfg: DllmRLJobConfig) -> dict[str, str]:
    return cfg.files()


def _check(cfg: DllmRLJobConfig, local: bool) -> list[str]:
    """The checkpoint is found (`local` only) and every reward resolves against the prompts."""
    from diffrl.kinds.checks import reward_problems
    from diffrl.kinds.dllm_rl.data import heldout
    from diffrl.models.dllm.adapter import resolve_checkpoint

    problems = []
    if local:
        try:
            resolve_checkpoint(cfg.model.path)
        except FileNotFoundError as err:
            problems.append(str(err) if str(err).startswith("model.path") else f"model.path: {err}")
    return problems + reward_problems(cfg.reward.rewards, heldout(cfg), local)


KIND = JobKind("dllm_rl", DllmRLJobConfig, dllm_rl_roles, _run, _files, _check)
