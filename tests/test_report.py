"""runs/NAME/report.html: contents on a synthetic finished and partial run, rendering in headless Chromium, the CLI."""

import argparse
import base64
import html
import io
import json
import math
import re
import subprocess
from pathlib import Path

from PIL import Image, ImageDraw

from diffrl.platform.report_html import add_report_command, write_report
from diffrl.platform.report_plots import moving_average, task_tags

CHROMIUM = Path("/usr/bin/chromium")
TAGS = ["single_object", "two_object", "counting", "colors", "position", "color_attr"]
PLOT_SECTIONS = ["reward", "reward-details", "tasks", "sol-fidelity", "timing", "losses"]
CONFIG = """kind: rl
name: synthetic
learner:
  algorithm: awm
rollout:
  strategy: sol
trainer:
  eval_metric: geneval_shapes/strict
  eval_label: GenEval-shapes
"""


def reward_details(prefix: str, level: float, tags: bool) -> dict:
    """geneval_shapes with its strict/partial sub-details, and each of them per task tag when `tags`."""
    out = {}
    for detail, offset in (("geneval_shapes", 0.1), ("geneval_shapes/strict", 0.0), ("geneval_shapes/partial", 0.2)):
        out[f"{prefix}/{detail}"] = level + offset
        if tags:
            out.update({f"{prefix}/{detail}/{tag}": level + offset + 0.01 * i for i, tag in enumerate(TAGS)})
    return out


def step_record(step: int) -> dict:
    level = 0.4 + 0.3 * step / (step + 20)
    record = {"step": step, "reward/mean": level + 0.05 * math.sin(step), "reward/std": 0.2, "weight_version": step,
              "train/loss": 1.0 / step, "train/kl": 0.001 * step, "train/grad_norm": 0.5,
              "time/rollout": 0.5, "time/explore": 0.2, "time/regenerate": 0.3, "time/reward": 0.1,
              "time/learn": 0.8, "time/sync": 0.05, "sol/explore_reward": level, "sol/chosen_explore_reward": level,
              "sol/kendall_tau": float("nan") if step == 3 else 0.6, "sol/spearman_rho": 0.7,
              **reward_details("reward", level, tags=True)}
    record["time/step"] = sum(v for k, v in record.items() if k.startswith("time/"))
    if step % 5 == 0:
        record.update({"sol/top_k_agreement": 0.8, "sol/audit_kendall_tau": float("nan")})
    return record


def eval_record(step: int) -> dict:
    details = reward_details("eval", 0.45 + 0.2 * step / (step + 20), tags=True)
    return {"step": step, "eval/reward": 0.5, "eval/headline": details["eval/geneval_shapes/strict"], **details}


def write_grid(path: Path, prompts: list[str]) -> None:
    image = Image.new("RGB", (200, 40 * len(prompts)), "white")
    draw = ImageDraw.Draw(image)
    for row, prompt in enumerate(prompts):
        draw.text((4, 40 * row + 14), prompt, fill="black")
        draw.rectangle((120, 40 * row + 4, 150, 40 * row + 34), fill=(200, 40, 40))
    image.save(path)


def make_run(root: Path, steps: int = 30, eval_every: int = 10, finished: bool = True) -> Path:
    """A run directory as the RL loop writes it: steps and evals interleaved; summary and 'after' grid at the end."""
    run_dir = root / "synthetic"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(CONFIG)
    records = [eval_record(0)]
    for step in range(1, steps + 1):
        records.append(step_record(step))
        if step % eval_every == 0:
            records.append(eval_record(step))
    if finished:
        headlines = [r["eval/headline"] for r in records if "eval/headline" in r]
        records.append({"summary/base": headlines[0], "summary/final": headlines[-1], "step": steps})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    prompts = ["a red circle", "two blue squares", "a green triangle left of a square"]
    write_grid(run_dir / "samples_before.png", prompts)
    samples = {"before": {"title": "before RL: GenEval-shapes 0.450", "prompts": prompts, "step": 0}}
    if finished:
        write_grid(run_dir / "samples_after.png", prompts)
        samples["after"] = {"title": "after RL: GenEval-shapes 0.600", "prompts": prompts, "step": steps}
    (run_dir / "samples.json").write_text(json.dumps(samples))
    for name in ("step_000010", "step_000020", "step_000030", ".step_000040.partial"):
        (run_dir / "checkpoints" / name).mkdir(parents=True)
    for name in ("step_000010", "step_000020"):  # committed; step_000030 lacks its manifest (incomplete)
        (run_dir / "checkpoints" / name / "manifest.json").write_text("{}")
    return run_dir


def images(page: str) -> list[tuple[str, str]]:
    """(alt, data URI) of every <img> in the page."""
    return [(alt, src) for src, alt in re.findall(r'<img src="([^"]*)" alt="([^"]*)">', page)]


def section_ids(page: str) -> list[str]:
    return re.findall(r'<section id="([^"]+)"', page)


def test_finished_run_has_every_section_and_embedded_pngs(tmp_path):
    run_dir = make_run(tmp_path)
    path = write_report(run_dir)
    page = path.read_text()
    assert path == run_dir / "report.html"
    assert section_ids(page) == [*PLOT_SECTIONS, "samples"]
    assert 'id="summary"' in page and "synthetic" in page and "awm" in page and "sol" in page
    assert "finished" in page and "latest checkpoint</th><td>step 20" in page
    assert page.count("<img") == len(images(page)) == len(PLOT_SECTIONS) + 2
    for alt, src in images(page):
        assert alt and src.startswith("data:image/png;base64,")
        Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).verify()
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "two blue squares" in page and "Not yet available" not in page
    assert [p.name for p in run_dir.iterdir() if p.name.startswith(".report.")] == []


def test_partial_runs_show_notes_instead_of_failing(tmp_path):
    run_dir = make_run(tmp_path, steps=12, eval_every=50, finished=False)
    page = write_report(run_dir).read_text()
    assert section_ids(page) == [*PLOT_SECTIONS, "samples"]
    assert "in progress" in page and "no later eval yet" in page
    assert "after the last step" in page and len(images(page)) == len(PLOT_SECTIONS) + 1

    (run_dir / "metrics.jsonl").write_text(json.dumps(eval_record(0)) + '\n{"step": 1, "reward/me')
    page = write_report(run_dir).read_text()
    assert "last step</th><td>0" in page and "Not yet available: no training step logged yet" in page
    assert "id=\"sol-fidelity\"" not in page and len(images(page)) == 3  # reward/eval, per-task evals, before grid

    (run_dir / "metrics.jsonl").write_text("")
    (run_dir / "samples_before.png").write_bytes(b"\x89PNG\r\n\x1a\n half written")
    page = write_report(run_dir).read_text()
    assert section_ids(page) == [s for s in PLOT_SECTIONS if s != "sol-fidelity"] + ["samples"]
    assert images(page) == [] and "after the base eval" in page


def test_tag_series_are_told_from_sub_details(tmp_path):
    assert task_tags([eval_record(0)]) == task_tags([step_record(1)]) == set(TAGS)
    run_dir = make_run(tmp_path, steps=3)
    untagged = [{"step": 1, "reward/mean": 0.5, **reward_details("reward", 0.5, tags=False)}, eval_record(0)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in untagged))
    alts = [alt for alt, _ in images(write_report(run_dir).read_text())]
    details = "Training reward per detail against RL step, one panel each: "
    assert details + "reward/geneval_shapes, reward/geneval_shapes/partial, reward/geneval_shapes/strict" in alts


def test_moving_average_skips_nan():
    import numpy as np

    out = moving_average(np.array([1.0, float("nan"), 3.0, 5.0]), 2)
    assert out.tolist() == [1.0, 1.0, 3.0, 4.0]


def test_a_long_runs_report_has_every_panel(tmp_path):
    """A 1200-step run's page (the loop rewrites it after every eval) shows the panels a short run's does, each a
    real PNG; how long it takes is not a test's business (it was ~1 s on 2 busy cores)."""
    for name in ("long", "short"):
        (tmp_path / name).mkdir()
    long_page = write_report(make_run(tmp_path / "long", steps=1200, eval_every=200)).read_text()
    short_page = write_report(make_run(tmp_path / "short")).read_text()
    panels = images(long_page)
    assert panels[0][0].endswith("held-out GenEval-shapes at steps 0, 200, 400, 600, 800, 1000, 1200")

    def kinds(page_panels):
        return [re.sub(r" at steps? [0-9, ]+", "", alt) for alt, _ in page_panels]
    assert kinds(panels) == kinds(images(short_page)) and len(panels) >= 3
    for _, src in panels:
        assert src.startswith("data:image/png;base64,") and len(src) > 1000


def chromium(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--no-first-run", "--hide-scrollbars", f"--user-data-dir={cwd / 'profile'}", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=60)


# On load, count the images that decoded; the JSON lands in the DOM that --dump-dom prints.
RENDER_CHECK = """<script>
window.addEventListener("load", () => {
  const imgs = [...document.images];
  const out = document.createElement("pre");
  out.id = "render-check";
  out.textContent = JSON.stringify({total: imgs.length,
    rendered: imgs.filter(i => i.complete && i.naturalWidth > 0).map(i => i.alt)});
  document.body.appendChild(out);
});
</script>"""


def test_report_renders_in_headless_chromium(tmp_path):
    assert CHROMIUM.exists(), "/usr/bin/chromium is missing: `make test` installs it (apt-get install -y chromium)"
    page = write_report(make_run(tmp_path)).read_text()
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", RENDER_CHECK + "</body>"))
    result = chromium("--virtual-time-budget=5000", "--dump-dom", probe.as_uri(), cwd=tmp_path)
    found = re.search(r'<pre id="render-check">(.*?)</pre>', result.stdout, re.S)
    assert found, f"no render check in Chromium's DOM; stderr:\n{result.stderr[-2000:]}"
    check = json.loads(html.unescape(found.group(1)))
    alts = [html.unescape(alt) for alt, _ in images(page)]
    assert check["total"] == len(alts) and sorted(check["rendered"]) == sorted(alts)
    assert any(a.startswith("Training reward per RL step") for a in check["rendered"])
    assert sum(a.startswith("Sample grid") for a in check["rendered"]) == 2

    shot = tmp_path / "shot.png"
    chromium("--window-size=1200,2400", f"--screenshot={shot}", (tmp_path / "synthetic" / "report.html").as_uri(),
             cwd=tmp_path)
    with Image.open(shot) as image:
        gray = image.convert("L")
        assert gray.getextrema()[0] < 100 and sum(gray.histogram()[:200]) > 0.01 * gray.width * gray.height


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="diffrl")
    add_report_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_report_command(tmp_path, capsys):
    run_dir = make_run(tmp_path, steps=5, eval_every=5)
    assert run_cli(["report", str(run_dir)]) == 0
    assert capsys.readouterr().out.strip() == str(run_dir / "report.html")
    empty = tmp_path / "not_a_run"
    empty.mkdir()
    assert run_cli(["report", str(empty)]) == 2
    assert f"{empty}: not a run directory" in capsys.readouterr().err
    assert run_cli(["report", str(tmp_path / "missing")]) == 2
