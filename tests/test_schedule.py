"""Schedule files: they round-trip, bad ones are refused with the file named, `rollout.schedule` fills the rollout
section (and disagreements are errors), and an RL job's rollouts and held-out eval sample on exactly its grid."""

import json
import os
from pathlib import Path

import pytest
import torch

from diffrl.kinds import load_job, run_job
from diffrl.kinds.rl.config import RLJobConfig
from diffrl.platform.config import ConfigError
from diffrl.workers.batch import SampleRequest
from diffrl.workers.rollout import RolloutWorker
from diffrl.workers.schedule import Schedule, read_schedule, write_schedule

REPO = Path(__file__).resolve().parents[1]
GRID = (1.0, 0.83, 0.52, 0.21, 0.0)
SA = {"predictor_order": 3, "corrector_order": 1, "tau": 0.5, "tau_window": [0.3, 0.9]}


def tuned(tmp_path, solver="sa_solver", options=SA, grid=GRID) -> Path:
    return write_schedule(tmp_path / "nfe4.json", Schedule(solver, dict(options), tuple(grid), "builtin:shapes_base",
                                                           {"reward": 0.41, "distance": 0.08}))


def test_schedule_round_trips(tmp_path):
    path = tuned(tmp_path)
    back = read_schedule(path)
    assert back == Schedule("sa_solver", SA, GRID, "builtin:shapes_base", {"reward": 0.41, "distance": 0.08})
    assert json.loads(path.read_text())["nfe"] == 4 and back.nfe == 4


@pytest.mark.parametrize("edit,message", [
    (lambda r: r.update(format="other"), "not a schedule file"),
    (lambda r: r.update(nfe=5), "nfe=5 but the grid has 4 steps"),
    (lambda r: r.update(grid=[1.0, 0.6, 0.7, 0.2, 0.0]), "grid: a time grid must be strictly decreasing"),
    (lambda r: r.update(solver="heun"), "unknown solver 'heun'"),
    (lambda r: r["options"].update(order=2), "solver 'sa_solver' takes options"),
    (lambda r: r.pop("grid"), "missing grid"),
])
def test_bad_schedule_files_are_refused_naming_the_file(tmp_path, edit, message):
    path = tuned(tmp_path)
    record = json.loads(path.read_text())
    edit(record)
    path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match=message) as err:
        read_schedule(path, "rollout.schedule")
    assert str(err.value).startswith(f"rollout.schedule: {path}")
    with pytest.raises(ValueError, match="file not found"):
        read_schedule(tmp_path / "missing.json")


def test_rollout_schedule_sets_sampler_options_grid_and_steps(tmp_path):
    path = tuned(tmp_path)
    cfg = RLJobConfig(rollout={"schedule": str(path)}, learner={"awm": {"num_timesteps": 1}})
    assert cfg.rollout.sampler == "sa_solver" and cfg.rollout.num_steps == 4 and tuple(cfg.rollout.grid) == GRID
    assert cfg.rollout.sa_solver.model_dump() == {**SA, "tau_window": (0.3, 0.9)}
    # The schedule wins over the job file's own sampler keys (adding it to a job means sampling with it).
    job = RLJobConfig(rollout={"schedule": str(path), "num_steps": 10, "sampler": "ode"},
                      learner={"awm": {"num_timesteps": 1}})
    assert job.rollout == cfg.rollout
    with pytest.raises(ValueError, match="rollout.grid has 2 steps but rollout.num_steps=10"):
        RLJobConfig(rollout={"grid": [1.0, 0.5, 0.0]})
    with pytest.raises(ValueError, match="flow_grpo needs stochastic rollouts with log-probs"):
        RLJobConfig(rollout={"schedule": str(path)}, learner={"algorithm": "flow_grpo"})


class SigmaRecorder:
    """Records the sigma of every denoiser call (a forward pre-hook on the real model)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.sigmas: list[float] = []
        module.register_forward_pre_hook(lambda _, args: self.sigmas.append(float(args[1][0])))


def test_rollouts_and_the_eval_sample_on_exactly_the_schedule_grid(tmp_path):
    cfg = load_job(REPO / "configs/shapes_awm.yaml", [f"rollout.schedule={tuned(tmp_path)}",
                                                      "learner.awm.num_timesteps=2"])
    worker = RolloutWorker(cfg.model.model_dump(), cfg.rollout.model_dump())
    worker.setup()
    calls = SigmaRecorder(worker.model.denoiser)
    request = [SampleRequest("a photo of a red circle", {}, 0, 11), SampleRequest("a photo of a cube", {}, 0, 12)]
    batch = worker.generate(request)
    assert batch.grid.tolist() == pytest.approx(GRID) and calls.sigmas == pytest.approx(GRID[:-1])
    calls.sigmas.clear()
    worker.generate(request, sampler="ode", num_steps=10)  # the default eval: even ODE grid of 10 steps
    assert calls.sigmas == pytest.approx([1 - i / 10 for i in range(10)])


def test_an_rl_job_trains_with_a_tuned_schedule_and_evals_with_it_when_asked(tmp_path):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cfg = load_job(REPO / "configs/shapes_awm.yaml", [
        f"rollout.schedule={tuned(tmp_path)}", "learner.awm.num_timesteps=2", "trainer.eval_sampler=rollout",
        "backend=local", "trainer.steps=1", "rollout.prompts_per_step=2", "rollout.group_size=4",
        "trainer.eval_seeds_per_prompt=1", f"output_dir={tmp_path}"])
    summary = run_job(cfg, echo=lambda _: None)
    run_dir = Path(summary["run_dir"])
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "reward/mean" in r] == [1]
    saved = load_job(run_dir / "config.yaml")
    assert tuple(saved.rollout.grid) == GRID and saved.rollout.sampler == "sa_solver"


def test_a_missing_schedule_file_is_a_config_error_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match="rollout.schedule: .*missing.json: file not found"):
        load_job(REPO / "configs/shapes_awm.yaml", [f"rollout.schedule={tmp_path / 'missing.json'}"])
