"""Job files: validation before any work, clear messages naming the key path, exit code 2, nothing written."""

import subprocess
import sys
from pathlib import Path

import pytest

from diffrl.kinds import load_job, parse_job
from diffrl.kinds.rl.config import RLJobConfig
from diffrl.platform.config import ConfigError, apply_overrides

REPO = Path(__file__).resolve().parents[1]
DEFAULT_JOB = REPO / "configs" / "shapes_awm.yaml"


def test_default_job_validates_and_overrides_apply():
    cfg = load_job(DEFAULT_JOB, ["trainer.steps=20", "rollout.group_size=4", "learner.awm.kl_beta=0.01"])
    assert isinstance(cfg, RLJobConfig)
    assert (cfg.trainer.steps, cfg.rollout.group_size, cfg.learner.awm.kl_beta) == (20, 4, 0.01)


def test_override_parsing_keeps_original_and_types_values():
    data = {"trainer": {"steps": 5}}
    out = apply_overrides(data, ["trainer.steps=7", "name=abc", "reward.rewards=[{name: x}]"])
    assert data == {"trainer": {"steps": 5}}
    assert out["trainer"]["steps"] == 7 and out["name"] == "abc" and out["reward"]["rewards"] == [{"name": "x"}]
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_overrides(data, ["trainer.steps"])


@pytest.mark.parametrize(
    "override, expected",
    [
        ("trainer.stpes=3", r"trainer\.stpes: unknown key"),
        ("rollout.group_size=1", r"rollout\.group_size: Input should be greater than or equal to 2"),
        ("rollout.sampler=euler", r"rollout\.sampler: got 'euler'"),
        ("learner.lr=fast", r"learner\.lr: Input should be a valid number"),
        ("learner.num_workers=3", r"learner\.num_workers=3 must divide"),
        ("learner.awm.num_timesteps=10", r"learner\.awm\.num_timesteps=10 exceeds the 9 training timesteps"),
        ("kind=painting", r"kind: got 'painting'; allowed: \['adversarial', 'dllm_decode', 'dllm_rl', 'pretrain', 'rl', 'solver_tune'\]"),
    ],
)
def test_bad_values_name_the_key_path(override, expected):
    with pytest.raises(ConfigError, match=expected):
        load_job(DEFAULT_JOB, [override])


def test_cli_exits_2_and_writes_nothing(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(DEFAULT_JOB.read_text() + "\nbogus_section: {a: 1}\n")
    out_dir = tmp_path / "runs"
    proc = subprocess.run(
        [sys.executable, "-m", "diffrl.cli", "run", str(job), f"output_dir={out_dir}",
         "rollout.group_size=0"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert proc.returncode == 2
    assert "bogus_section: unknown key" in proc.stderr
    assert "rollout.group_size" in proc.stderr
    assert not out_dir.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.yaml"]


def test_missing_job_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="job file not found: .*nope.yaml"):
        load_job(tmp_path / "nope.yaml")


@pytest.mark.parametrize("path", sorted(Path(__file__).resolve().parents[1].glob("configs/**/*.yaml")))
def test_every_shipped_job_file_validates(path, tmp_path):
    import yaml

    # GPU templates name weights on the cluster's storage, and a job may start from a model another shipped job
    # writes under runs/ (the scenes jobs, until their base ships): only those weights may be missing here.
    model_path = str((yaml.safe_load(path.read_text()).get("model") or {}).get("path"))
    not_built = "runs/" in model_path and not (path.parent / model_path / "config.json").is_file()
    local = path.parent.name != "templates" and not not_built
    if not local:
        with pytest.raises(ConfigError) as missing:
            load_job(path)
        keys = [line.split(":")[0].strip() for line in str(missing.value).splitlines()[1:]]
        assert keys[0] == "model.path" and all(".kwargs." in key for key in keys[1:]), keys
    cfg = load_job(path, local=local)
    kind = next((k for k in ("pretrain", "solver_tune", "dllm_decode", "dllm_rl", "adversarial") if path.name.startswith(k)),
                "dllm_rl" if path.name.startswith("llada") else "rl")
    assert cfg.kind == kind


def test_prompt_files_and_their_errors(tmp_path):
    from diffrl.kinds.rl.data import read_prompt_file

    good = tmp_path / "p.jsonl"
    good.write_text('{"tag": "counting", "include": [{"class": "apple", "count": 3}], "prompt": "three apples"}\n\n')
    assert read_prompt_file(str(good)) == [{"tag": "counting", "include": [{"class": "apple", "count": 3}],
                                            "prompt": "three apples"}]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"no_prompt": 1}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: .*'prompt'"):
        read_prompt_file(str(bad))
    with pytest.raises(ConfigError, match="data.eval_file: file not found"):
        parse_job({"data": {"source": "files", "train_file": str(good), "eval_file": str(tmp_path / "missing.txt")}})


def test_sol_and_sync_options_are_validated_before_any_work():
    base = {"rollout": {"strategy": "sol", "group_size": 4, "sol": {"pool_size": 8}}}
    with pytest.raises(ConfigError, match="num_timesteps=6 exceeds the 5 training timesteps that "
                                          r"rollout\.sol\.explore_steps=6"):
        parse_job({**base, "rollout": {**base["rollout"], "sol": {"pool_size": 8, "regenerate": False}},
                   "learner": {"awm": {"num_timesteps": 6, "timestep_fraction": 1.0}}})
    with pytest.raises(ConfigError, match=r"pool_size=2 must be at least rollout\.group_size=4"):
        parse_job({"rollout": {"strategy": "sol", "group_size": 4, "sol": {"pool_size": 2}}})
    with pytest.raises(ConfigError, match="sync_backend=broadcast needs backend: ray"):
        parse_job({"backend": "local", "learner": {"sync_backend": "broadcast"}})
    with pytest.raises(ConfigError, match="flow_grpo needs stochastic rollouts"):
        parse_job({"learner": {"algorithm": "flow_grpo"}})


def test_local_backend_refuses_collective_roles_of_several_ranks():
    for job in (DEFAULT_JOB, Path(__file__).resolve().parents[1] / "configs/pretrain_shapes.yaml"):
        with pytest.raises(ConfigError, match=r"backend: local runs one learner rank; set learner.num_workers=1"):
            load_job(job, ["backend=local", "learner.num_workers=2"])
        assert load_job(job, ["backend=local"]).learner.num_workers == 1
