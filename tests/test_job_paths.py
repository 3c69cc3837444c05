"""Relative paths in a job file resolve against the job file's directory, for every kind and for `diffrl submit`;
relative paths given on the command line resolve against the current directory; output_dir stays relative to the
current directory. And a user's own reward drops into the demo job with a headline that follows it."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from diffrl.cluster.jobs import stage_job
from diffrl.kinds import load_job
from diffrl.platform.config import ConfigError

REPO = Path(__file__).resolve().parents[1]
REDNESS = (REPO / "examples/rewards/plain_function.py").read_text()


def job_dir(tmp_path: Path) -> Path:
    """A user's project: a job folder with its own prompts, reward file and schedule, and an unrelated cwd."""
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "data/train.txt").write_text("a red circle\na blue square\n")
    (project / "data/eval.txt").write_text("a green triangle\n")
    (project / "myreward.py").write_text(REDNESS)
    (project / "elsewhere").mkdir()
    return project


def test_relative_paths_in_a_job_file_follow_the_file_and_overrides_follow_the_cwd(tmp_path, monkeypatch):
    project = job_dir(tmp_path)
    (project / "job.yaml").write_text(
        "kind: rl\nname: mine\ndata: {source: files, train_file: data/train.txt, eval_file: data/eval.txt}\n"
        "reward:\n  rewards: [{name: 'myreward.py:redness'}]\n"
        "model: {path: builtin:shapes_base}\n")
    monkeypatch.chdir(project / "elsewhere")
    cfg = load_job("../job.yaml")
    assert Path(cfg.data.train_file).resolve() == project / "data/train.txt"
    assert Path(cfg.data.eval_file).resolve() == project / "data/eval.txt"
    assert cfg.reward.rewards[0].name == f"{project / 'myreward.py'}:redness"
    assert cfg.model.path == "builtin:shapes_base" and cfg.output_dir == "runs"  # output_dir: relative to the cwd
    # The same names on the command line are relative to the current directory (and must exist there).
    (project / "elsewhere/other.txt").write_text("a red square\n")
    cfg = load_job("../job.yaml", ["data.eval_file=other.txt"])
    assert cfg.data.eval_file == "other.txt"
    with pytest.raises(ConfigError, match=r"data.eval_file: file not found: data/eval.txt \(from override"):
        load_job("../job.yaml", ["data.eval_file=data/eval.txt"])
    # A model path that is not next to the job file is taken as given (a hub id such as org/name).
    assert load_job("../job.yaml", ["model.name=sd3", "model.path=org/model"], local=False).model.path == "org/model"


def test_submit_stages_the_files_a_job_names_relative_to_itself(tmp_path, monkeypatch):
    project = job_dir(tmp_path)
    (project / "job.yaml").write_text(
        "kind: rl\nname: mine\ndata: {source: files, train_file: data/train.txt, eval_file: data/eval.txt}\n"
        "reward:\n  rewards: [{name: 'myreward.py:redness'}]\n")
    monkeypatch.chdir(project / "elsewhere")
    staging = tmp_path / "staging"
    staging.mkdir()
    cfg = load_job("../job.yaml", local=False)
    staged = stage_job(cfg, staging)
    assert (staging / "data/train.txt").read_text() == "a red circle\na blue square\n"
    assert (staging / "rewards/myreward.py").read_text() == REDNESS
    # On the cluster the staged job is run from its own directory, whatever the cwd there.
    monkeypatch.chdir(tmp_path)
    again = load_job(staged)
    assert Path(again.data.train_file).resolve() == staging / "data/train.txt"
    assert again.reward.rewards[0].name.endswith("staging/rewards/myreward.py:redness")


@pytest.mark.parametrize("config, key", [
    ("configs/dllm_decode_sorting.yaml", "data.prompts"),
    ("configs/templates/flux_ocr_awm.yaml", "data.train_file"),
    ("configs/templates/sana_pickscore_nft.yaml", "data.eval_file"),
    ("configs/templates/sd35m_geneval_flow_grpo.yaml", "data.train_file"),
])
def test_shipped_job_files_load_from_any_directory(tmp_path, monkeypatch, config, key):
    monkeypatch.chdir(tmp_path)
    cfg = load_job(REPO / config, local=False)
    section, _, name = key.partition(".")
    assert Path(getattr(getattr(cfg, section), name)).resolve().is_file()


def test_the_shipped_dllm_job_runs_from_another_directory(tmp_path):
    """The defect as it was found: `diffrl run /abs/path/configs/dllm_decode_sorting.yaml` from elsewhere."""
    proc = subprocess.run([sys.executable, "-m", "diffrl.cli", "run", str(REPO / "configs/dllm_decode_sorting.yaml"),
                           "data.limit=8", "workers.num_workers=1", "ray.num_cpus=2"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "runs/dllm_decode_sorting/generations.jsonl").open()]
    assert len(rows) == 8 and all("correct" in row for row in rows)


def test_a_users_reward_replaces_the_demos_with_a_headline_that_follows_it(tmp_path):
    """README's custom-reward route on the demo job: the held-out headline is the job's reward unless set, the end
    line names it, and a set metric the rewards cannot produce is refused by --check, naming the key."""
    shutil.copy(REPO / "examples/rewards/plain_function.py", tmp_path / "myreward.py")
    run = [sys.executable, "-m", "diffrl.cli", "run", str(REPO / "configs/shapes_awm.yaml"),
           "reward.rewards=[{name: myreward.py:redness}]"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    refused = subprocess.run([*run, "trainer.eval_metric=geneval_shapes/strict", "--check"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=120, env=env)
    assert refused.returncode == 2 and "trainer.eval_metric: 'geneval_shapes/strict' is not produced" in refused.stderr
    proc = subprocess.run([*run, "trainer.steps=1", "rollout.prompts_per_step=2", "rollout.group_size=4",
                           "trainer.eval_seeds_per_prompt=1", "backend=local"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "held-out reward (myreward.py:redness): base " in proc.stdout
    records = [json.loads(line) for line in (tmp_path / "runs/shapes_awm/metrics.jsonl").open()]
    evals = [r for r in records if "eval/headline" in r]
    assert len(evals) == 2 and all(r["eval/headline"] == r["eval/reward"] for r in evals)
    assert all("eval/myreward.py:redness/red" in r for r in evals)  # the reward's own details are kept
