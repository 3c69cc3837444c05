"""`kind: solver_tune` end to end on a real local Ray cluster through `diffrl run`: candidates are scored on rollout
and reward workers, one schedule file per NFE is written, the report shows the figure, and an RL job rolls out with
a written schedule; bad tuning configs are refused naming the key."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from diffrl.kinds import load_job
from diffrl.platform.config import ConfigError
from diffrl.workers.schedule import read_schedule

REPO = Path(__file__).resolve().parents[1]
FAST = ["tune.nfes=[3,5]", "tune.seeds_per_prompt=1", "tune.reference_steps=20", "tune.data_driven.evaluations=6",
        "tune.data_driven.seeds=4", "data.heldout_fraction=0.1"]


def test_solver_tune_job_writes_a_schedule_per_nfe_that_an_rl_job_uses(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "diffrl.cli", "run", str(REPO / "configs/solver_tune_shapes.yaml"),
                           f"output_dir={tmp_path}", *FAST], capture_output=True, text=True, timeout=600, env=env,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "solver_tune_shapes"
    rows = json.loads((run_dir / "results.json").read_text())
    assert rows[0]["candidate"] == "reference" and rows[0]["nfe"] == 20
    names = ["euler", "sa_solver", "sa_solver_3", "sa_solver_optimized", "sa_solver_tuned"]
    assert [(r["nfe"], r["candidate"]) for r in rows[1:]] == [(n, c) for n in (3, 5) for c in names]
    for row in rows[1:]:
        assert 0 <= row["reward"] <= 1 and row["distance"] > 0
        assert len(row["grid"]) == row["nfe"] + 1 and row["grid"][0] == 1 and row["grid"][-1] == 0
    by = {(r["nfe"], r["candidate"]): r for r in rows[1:]}
    for nfe in (3, 5):
        # The search starts at the optimized grid and keeps the best it saw on the tuning seeds.
        tuned = by[(nfe, "sa_solver_tuned")]
        assert 1 < tuned["search_runs"] <= 6 and tuned["search_distance"] < tuned["search_start_distance"]
        schedule = read_schedule(run_dir / "schedules" / f"nfe{nfe}.json")
        best = max((by[(nfe, c)] for c in names), key=lambda r: (r["reward"], -r["distance"]))
        assert list(schedule.grid) == pytest.approx(best["grid"]) and schedule.solver == best["solver"]
        assert schedule.scores["reward"] == best["reward"] and schedule.nfe == nfe
    assert (run_dir / "figures" / "tune.png").stat().st_size > 0
    assert 'id="figure-tune"' in (run_dir / "report.html").read_text()
    assert "NFE 3:" in proc.stdout and "schedules/nfe3.json" in proc.stdout

    rl = load_job(REPO / "configs/shapes_awm.yaml", [f"rollout.schedule={run_dir / 'schedules' / 'nfe5.json'}",
                                                     "learner.awm.num_timesteps=2"])
    assert rl.rollout.num_steps == 5 and rl.rollout.grid == pytest.approx(by[(5, best['candidate'])]["grid"])


@pytest.mark.parametrize("override,message", [
    ("tune.candidates=[{name: a}, {name: a}]", "names must be unique, repeated: \\['a'\\]"),
    ("tune.lambda_range=[3.0, -3.0]", "tune.lambda_range: low 3.0 must be below high -3.0"),
    ("tune.nfes=[2, 4]", "grid optimized needs NFE >= 3"),
    ("tune.candidates=[{name: a, grid: spiral}]", "tune.candidates.0.grid"),
])
def test_bad_tuning_configs_are_refused_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_job(REPO / "configs/solver_tune_shapes.yaml", [override])
