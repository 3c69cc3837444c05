"""`kind: dllm_decode`: decode a prompts file with a masked-diffusion LM (the shipped tiny dLLMs, or a local LLaDA /
Dream / Fast-dLLM v2 checkpoint) on N decode workers, with the LLaDA baseline or the Fast-dLLM accelerations
(threshold / factor parallel decoding, prefix / dual cache, v2 block decoding); writes generations.jsonl, metrics
and a report."""

from __future__ import annotations

from diffrl.kinds.dllm_decode.config import DllmDecodeJobConfig
from diffrl.kinds.dllm_decode.roles import dllm_decode_roles
from diffrl.platform.kind import JobKind


def _run(ctx):
    from diffrl.kinds.dllm_decode.controller import run

    return run(ctx)


def _files(cfg: DllmDecodeJobConfig) -> dict[str, str]:
    return {"data.prompts": cfg.data.prompts}


def _check(cfg: DllmDecodeJobConfig, local: bool) -> list[str]:
    """The checkpoint directory is found where the job runs (`local`; a cluster's weights are on its storage)."""
    from diffrl.models.dllm.adapter import resolve_checkpoint

    if not local:
        return []
    try:
        resolve_checkpoint(cfg.model.path)
    except FileNotFoundError as err:
        return [str(err) if str(err).startswith("model.path") else f"model.path: {err}"]
    return []


KIND = JobKind("dllm_decode", DllmDecodeJobConfig, dllm_decode_roles, _run, _files, _check)
