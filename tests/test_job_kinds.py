"""A job kind registered from this file runs through the same runtime as the built-in kinds: `diffrl run` on a real
local Ray cluster (run directory, metrics, resume rules), `--check`, the cluster templates and config validation."""

import json
import sys
from typing import ClassVar, Literal

import pytest
import ray.cloudpickle
import yaml
from pydantic import Field

from diffrl import cli
from diffrl.kinds import KINDS, load_job, register
from diffrl.platform.config import BASE_RESUMABLE, ConfigError, JobConfig, Section
from diffrl.platform.kind import JobKind
from diffrl.platform.roles import RoleSpec
from diffrl.platform.runtime import RunContext
from diffrl.platform.worker import WorkerBase

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class SquarerConfig(Section):
    num_workers: int = Field(2, ge=1)
    cpus_per_worker: float = 0.5


class ToyJobConfig(JobConfig):
    kind: Literal["toy"] = "toy"
    RESUMABLE: ClassVar[tuple[str, ...]] = BASE_RESUMABLE + ("numbers",)
    numbers: int = Field(10, ge=1)
    squarer: SquarerConfig = SquarerConfig()


class SquarerWorker(WorkerBase):
    def __init__(self, offset: int) -> None:
        super().__init__()
        self.offset = offset

    def build(self) -> None:
        import os

        self.pid = os.getpid()

    def square(self, shard: list[int]) -> list[tuple[int, int]]:
        self.require_ready()
        return [(x * x + self.offset, self.pid) for x in shard]


def toy_roles(cfg: ToyJobConfig) -> list[RoleSpec]:
    return [RoleSpec("squarer", SquarerWorker, ((cfg.seed,),) * cfg.squarer.num_workers, cfg.squarer.cpus_per_worker,
                     max_restarts=1)]


def toy_run(ctx: RunContext) -> dict:
    """The whole controller: map the numbers over the squarer workers, once per step."""
    squarer = ctx.roles["squarer"]
    for step in range(ctx.cfg.trainer.steps):
        shards = squarer.map("square", list(range(ctx.cfg.numbers)))
        values = [value for shard in shards for value, _ in shard]
        ctx.log.write({"step": step + 1, "toy/sum": sum(values), "toy/workers": len({p for s in shards for _, p in s})})
    return {"sum": sum(values)}


@pytest.fixture
def toy_kind():
    register(JobKind("toy", ToyJobConfig, toy_roles, toy_run))
    yield
    KINDS.pop("toy")


@pytest.fixture
def job_file(tmp_path):
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump({"kind": "toy", "name": "squares", "seed": 1, "numbers": 6,
                                    "output_dir": str(tmp_path / "runs"), "trainer": {"steps": 2,
                                                                                     "wandb": {"mode": "disabled"}}}))
    return path


def test_a_registered_kind_runs_through_diffrl_run_on_ray(toy_kind, job_file, tmp_path, ray_cluster, capsys):
    assert cli.main(["run", str(job_file), "--check"]) == 0
    assert "valid toy job" in capsys.readouterr().out
    assert cli.main(["run", str(job_file)]) == 0
    run_dir = tmp_path / "runs" / "squares"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    expected = sum(x * x + 1 for x in range(6))
    assert [(r["step"], r["toy/sum"], r["toy/workers"]) for r in records] == [(1, expected, 2), (2, expected, 2)]
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["kind"] == "toy"
    out = capsys.readouterr().out
    assert "2 squarer" in out
    # a second run never overwrites the first; --resume applies the kind's resume rules (no checkpoint here)
    assert cli.main(["run", str(job_file)]) == 0
    assert (tmp_path / "runs" / "squares_2" / "metrics.jsonl").exists()
    assert cli.main(["run", str(job_file), "--resume"]) == 2
    assert "has no complete checkpoint" in capsys.readouterr().err


def test_a_registered_kind_gets_validation_and_cluster_templates(toy_kind, job_file, capsys):
    with pytest.raises(ConfigError, match=r"numbers: Input should be greater than or equal to 1"):
        load_job(job_file, ["numbers=0"])
    with pytest.raises(ConfigError, match=r"unknown role\(s\) \['learner'\]; this job's roles are \['squarer'\]"):
        load_job(job_file, ["ray.colocate=[[squarer, learner]]"])
    assert cli.main(["run", str(job_file), "squarer.bogus=1"]) == 2
    assert "squarer.bogus: unknown key" in capsys.readouterr().err
    assert cli.main(["cluster-template", "slurm", str(job_file)]) == 0
    script = capsys.readouterr().out
    assert "squarer 2 x (0.5 CPU)" in script and "#SBATCH" in script


def test_unknown_kinds_are_refused_naming_the_allowed_ones(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("kind: nope\n")
    assert cli.main(["run", str(path), "--check"]) == 2
    err = capsys.readouterr().err
    assert "kind: got 'nope'; allowed: [" in err and "'rl'" in err and "'pretrain'" in err
