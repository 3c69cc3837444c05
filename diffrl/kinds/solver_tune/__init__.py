"""`kind: solver_tune`: for a model and a list of NFE budgets, find the sampler and time grid that sample best
(SA-Solver, DM-NonUniform's optimized steps, a data-driven grid search), scored on rollout and reward workers; writes
one schedule file per NFE for `rollout.schedule`."""

from __future__ import annotations

from diffrl.kinds.solver_tune.config import SolverTuneJobConfig
from diffrl.kinds.solver_tune.roles import solver_tune_roles
from diffrl.kinds.checks import rl_problems
from diffrl.platform.kind import JobKind


def _run(ctx):
    from diffrl.kinds.solver_tune.controller import run

    return run(ctx)


def _files(cfg: SolverTuneJobConfig) -> dict[str, str]:
    return {f"data.{key}": value for key in ("train_file", "eval_file")
            if (value := getattr(cfg.data, key)) is not None}


KIND = JobKind("solver_tune", SolverTuneJobConfig, solver_tune_roles, _run, _files, rl_problems)
