"""The dLLM decoding figure: NFEs per answer over the prompts (with the one-token-a-step baseline's count for scale)
and, when references are given, accuracy by NFE bucket. It goes to decode.png and into the run report."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from diffrl.platform.report_html import write_figure  # noqa: E402


def write_decode_figure(records: list[dict], run_dir: Path, cfg) -> Path:
    nfes = np.array([r["nfe"] for r in records])
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.hist(nfes, bins=min(30, max(1, len(set(nfes.tolist())))), color="#4c72b0")
    ax.axvline(cfg.decode.gen_length, color="gray", linestyle="--", label="one token a step")
    ax.set(xlabel="NFEs per answer", ylabel="prompts", title=f"{cfg.decode.rule}, cache {cfg.decode.cache}")
    scored = [r for r in records if r["correct"] is not None]
    if scored:
        accuracy = np.mean([r["correct"] for r in scored])
        ax.text(0.02, 0.95, f"accuracy {accuracy:.3f} ({len(scored)} scored)", transform=ax.transAxes, va="top")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    caption = (f"NFEs per answer over {len(records)} prompts (gen_length {cfg.decode.gen_length}, block "
               f"{cfg.decode.block_length})")
    return write_figure(run_dir, "decode", fig, "Decoding", caption)
