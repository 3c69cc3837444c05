"""One command that checks every GPU path when a GPU is lent (issue 30): the GPU-marked tests (bf16 RL steps of the
tiny model and of the tiny SD3 / FLUX / SANA pipelines, NCCL broadcast weight sync, transformer-engine NVFP4 / FP8
where the compute capability allows and the emulation's agreement with it, dLLM bf16 decoding and RL, the vLLM judge
where vllm is installed), then a short benchmark (rollout samples/s of the tiny model in fp32 and bf16, the
low-precision agreement numbers). Writes one summary, SUMMARY (default benchmarks/results/gpu_check/summary.md,
with a .json beside it).

Without CUDA it is a dry run: it lists every check with the reason it would be skipped, runs the CPU half of the
benchmark (the NVFP4 emulation's error) and still writes the summary. Budget: at most 8 minutes on one H100/H200.
Usage: .venv/bin/python benchmarks/gpu_check.py [--out DIR] [--timeout 420]   (or `make gpu-check`)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
GPU_TESTS = ["tests/test_gpu.py", "tests/test_gpu_paths.py"]


def environment() -> dict:
    import torch

    info = {"torch": torch.__version__, "cuda": torch.cuda.is_available(), "python": sys.version.split()[0]}
    if info["cuda"]:
        info["gpu"] = torch.cuda.get_device_name(0)
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
    for module in ("transformer_engine", "vllm", "deepspeed"):
        info[module] = importlib.util.find_spec(module) is not None
    return info


def run_tests(out: Path, timeout: int) -> list[dict]:
    """Every GPU-marked test, one pytest process; each test's outcome with its skip/failure reason."""
    xml = out / "gpu_tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-rs", "-p", "no:cacheprovider", f"--junitxml={xml}",
           f"--timeout={timeout}", *GPU_TESTS]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout + 60)
    (out / "gpu_tests.log").write_text(proc.stdout + proc.stderr)
    if not xml.is_file():
        return [{"test": "pytest", "outcome": "error", "detail": (proc.stdout + proc.stderr)[-2000:],
                 "seconds": time.perf_counter() - started}]
    results = []
    for case in ET.parse(xml).getroot().iter("testcase"):
        outcome, detail = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "failed"}.get(tag, tag)
                detail = (node.get("message") or node.text or "").strip().splitlines()[0][:300]
        results.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                        "detail": detail, "seconds": float(case.get("time", 0))})
    return results


def rollout_throughput(device: str) -> dict[str, float]:
    """Samples per second of the tiny model's ODE rollouts (10 steps, 32 samples) in fp32 and bf16 autocast."""
    import torch

    from diffrl.models.tiny_t2i import TinyT2I
    from diffrl.workers.sampling import sample

    model = TinyT2I.from_pretrained("builtin:shapes_base").to(device)
    cond = model.encode_prompts(["a photo of a red circle"] * 32)
    out = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        sample(model, cond, list(range(32)), num_steps=10, autocast_dtype=dtype)  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        sample(model, cond, list(range(32)), num_steps=10, autocast_dtype=dtype)
        if device == "cuda":
            torch.cuda.synchronize()
        out[f"rollout_samples_per_s_{name}"] = 32 / (time.perf_counter() - start)
    return out


def benchmark(cuda: bool) -> dict:
    sys.path.insert(0, str(REPO / "tests"))
    from test_gpu_paths import low_precision_agreement

    device = "cuda" if cuda else "cpu"
    return {"device": device, **rollout_throughput(device), **low_precision_agreement(device)}


# What a GPU test needs beyond CUDA, by a word of its name.
EXTRA_NEEDS = {"transformer_engine": "transformer_engine", "low_precision_paths": "transformer_engine",
               "vllm": "vllm"}


def dry_run_list(env: dict) -> list[dict]:
    """The GPU-marked tests pytest collects, each skipped with its reasons (no CUDA, and any missing extra)."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "--collect-only", "-p",
                           "no:cacheprovider", *GPU_TESTS], cwd=REPO, capture_output=True, text=True)
    tests = [line.strip() for line in proc.stdout.splitlines() if "::" in line]
    if not tests:
        raise SystemExit(f"no GPU-marked tests collected from {GPU_TESTS}:\n{proc.stdout}{proc.stderr}")
    out = []
    for test in tests:
        needs = ["a CUDA GPU"] + [f"{m} (not installed)" for word, m in EXTRA_NEEDS.items()
                                  if word in test and not env[m]]
        out.append({"test": test, "outcome": "skipped", "detail": "dry run: needs " + ", ".join(needs),
                    "seconds": 0.0})
    return out


def write_summary(out: Path, env: dict, tests: list[dict], bench: dict, seconds: float) -> Path:
    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "error", "skipped")}
    lines = [f"# GPU check ({'dry run, no CUDA' if not env['cuda'] else env.get('gpu')})", "",
             f"- environment: {json.dumps(env)}", f"- wall time: {seconds:.0f} s (budget 480 s)",
             f"- tests: {counts}", "", "| test | outcome | s | detail |", "| --- | --- | --- | --- |"]
    lines += [f"| {t['test']} | {t['outcome']} | {t['seconds']:.1f} | {t['detail']} |" for t in tests]
    lines += ["", "| benchmark | value |", "| --- | --- |"]
    lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in bench.items()]
    path = out / "summary.md"
    path.write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(json.dumps({"environment": env, "tests": tests, "benchmark": bench,
                                                  "seconds": seconds}, indent=1))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/gpu_check")
    parser.add_argument("--timeout", type=int, default=420, help="seconds for the GPU tests (the rest fits in 60)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    env = environment()
    tests = run_tests(args.out, args.timeout) if env["cuda"] else dry_run_list(env)
    try:
        bench = benchmark(env["cuda"])
    except Exception as err:  # a broken benchmark is reported in the summary, not hidden
        bench = {"error": f"{type(err).__name__}: {err}"}
    path = write_summary(args.out, env, tests, bench, time.perf_counter() - started)
    print(path.read_text())
    failed = any(t["outcome"] in ("failed", "error") for t in tests) or "error" in bench
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
