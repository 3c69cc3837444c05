"""benchmarks/gpu_check.py without CUDA: a dry run that lists every GPU-marked test with why it is skipped, runs the
CPU half of the benchmark and writes its summary."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run is the no-CUDA path")
def test_gpu_check_dry_run_lists_every_gpu_test_and_writes_a_summary(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks/gpu_check.py"), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    tests = {t["test"]: t for t in summary["tests"]}
    expected = {f"tests/{f}::{name}" for f in ("test_gpu.py", "test_gpu_paths.py")
                for name in _gpu_test_names(REPO / "tests" / f)}
    collected = {name.split("[")[0] for name in tests}
    assert expected == collected
    assert all(t["outcome"] == "skipped" and "needs a CUDA GPU" in t["detail"] for t in tests.values())
    vllm = next(t for name, t in tests.items() if "vllm" in name)
    assert ("vllm (not installed)" in vllm["detail"]) == (not summary["environment"]["vllm"])
    assert 0 < summary["benchmark"]["nvfp4_emulated_vs_fp32"] < 0.2
    assert summary["benchmark"]["rollout_samples_per_s_fp32"] > 0
    assert "# GPU check (dry run, no CUDA)" in (tmp_path / "summary.md").read_text()


def _gpu_test_names(path: Path) -> list[str]:
    """Test functions under @pytest.mark.gpu, read from the source (independent of pytest's collection)."""
    lines = path.read_text().splitlines()
    names = []
    for i, line in enumerate(lines):
        if line.startswith("def test_") and any(l.strip() == "@pytest.mark.gpu" for l in lines[max(0, i - 3):i]):
            names.append(line.split("(")[0][4:])
    return names
