"""`kind: adversarial`: fine-tune a diffusion/flow model with free adversarial training of the denoiser's input
(ICLR 2025, kugwzk/AT_Diff) on N data-parallel DeepSpeed learner ranks — the shapes world's renders or a folder of
images — with periodic few-step sample-quality and robustness evals, exact resume and a report."""

from __future__ import annotations

from diffrl.kinds.adversarial.config import AdversarialJobConfig
from diffrl.kinds.adversarial.roles import adversarial_roles
from diffrl.kinds.checks import model_check
from diffrl.platform.kind import JobKind


def _run(ctx):
    from diffrl.kinds.adversarial.controller import run

    return run(ctx)


def _files(cfg: AdversarialJobConfig) -> dict[str, str]:
    return {"data.captions": cfg.data.captions} if cfg.data.source == "image_folder" and cfg.data.captions else {}


KIND = JobKind("adversarial", AdversarialJobConfig, adversarial_roles, _run, _files, model_check)
