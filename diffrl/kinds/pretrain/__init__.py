"""`kind: pretrain`: supervised pretraining of the built-in model on N data-parallel DeepSpeed learner ranks (the
shapes world's renders; the data source is pluggable), with the runtime's run directory, report, checkpoints and
exact resume. `diffrl pretrain-shapes` runs the same job as configs/pretrain_shapes.yaml."""

from __future__ import annotations

from diffrl.kinds.pretrain.config import PretrainJobConfig
from diffrl.kinds.pretrain.roles import pretrain_roles
from diffrl.kinds.checks import model_check
from diffrl.platform.kind import JobKind


def _run(ctx):
    from diffrl.kinds.pretrain.controller import run

    return run(ctx)


KIND = JobKind("pretrain", PretrainJobConfig, pretrain_roles, _run, check=model_check)
