"""Every command README shows is run here as a user would type it: parsed by the real `diffrl` parser (so every
flag and positional it shows exists), and every `diffrl run` / `diffrl submit` of a shipped job file validated
completely (`--check`'s path: the kind's config, its derived roles and deep checks) from a directory other than the
repository, with the files the command names made by the steps before it. A README line this file cannot classify
fails the test, so new commands get checked too."""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffrl.cli import parse
from diffrl.kinds import load_job
from diffrl.workers.schedule import Schedule, write_schedule

REPO = Path(__file__).resolve().parents[1]
# Placeholders README uses in usage lines, and what stands in for them here.
PLACEHOLDERS = {"JOB.yaml": "configs/shapes_awm.yaml", "JOB_ID": "diffrl-x", "runs/NAME": "runs/shapes_awm",
                "NAME_OR_PATH": "geneval_shapes", "HOST:PORT": "127.0.0.1:6379", "DIR": "out", "FILE": "f", "P": "1",
                "H": "127.0.0.1", "F": "token", "OUT": "out", "REGISTRY/diffrl:0.1.0": "img"}


def readme_commands() -> list[list[str]]:
    """The shell commands in README's bash blocks as words: continuations joined, comments and environment prefixes
    dropped, `a && b` split, alternatives such as `status|logs|stop` expanded, optional `[...]` parts removed."""
    text = (REPO / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r" \[[^\]]*\]", "", line)
            words = shlex.split(line, comments=True)
            while words:
                end = words.index("&&") if "&&" in words else len(words)
                part, words = words[:end], words[end + 1:]
                while part and re.fullmatch(r"[A-Z_]+=.*", part[0]):
                    part = part[1:]
                choice = next((i for i, w in enumerate(part) if re.fullmatch(r"[a-z-]+(\|[a-z-]+)+", w)), None)
                if choice is not None:  # a usage line's alternatives, e.g. status|logs|stop
                    commands += [[*part[:choice], alt, *part[choice + 1:]] for alt in part[choice].split("|")]
                elif part:
                    commands.append(part)
    return commands


@pytest.fixture()
def user_dir(tmp_path, monkeypatch):
    """A directory outside the repository holding the shipped configs and examples (as a user's checkout or copy
    has them) and what earlier README steps would have made: a tuned schedule, a pretrained model, a prompts file,
    an image folder with captions."""
    for name in ("configs", "examples"):
        (tmp_path / name).symlink_to(REPO / name)
    write_schedule(tmp_path / "runs/solver_tune_shapes/schedules/nfe4.json",
                   Schedule("sa_solver", {"predictor_order": 2, "corrector_order": 1, "tau": 1.0,
                                          "tau_window": [0.2, 0.8]}, (1.0, 0.8, 0.5, 0.2, 0.0), "builtin:shapes_base",
                            {"reward": 0.45}))
    (tmp_path / "runs/pretrain_shapes").mkdir(parents=True)
    (tmp_path / "runs/pretrain_shapes/model").symlink_to(REPO / "diffrl/models/assets/shapes_base")
    (tmp_path / "my_prompts.jsonl").write_text(json.dumps({"prompt": "sort 3 1 2", "reference": "1 2 3"}) + "\n")
    (tmp_path / "my_images").mkdir()
    captions = []
    for i in range(80):  # the job holds 64 out
        Image.fromarray(np.full((32, 32, 3), 3 * i, np.uint8)).save(tmp_path / f"my_images/{i}.png")
        captions.append(json.dumps({"file": f"{i}.png", "prompt": f"a gray square {i}"}))
    (tmp_path / "captions.jsonl").write_text("\n".join(captions) + "\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_readme_commands_parse_and_their_jobs_validate_from_another_directory(user_dir):
    commands = readme_commands()
    assert len(commands) > 40, commands
    validated = 0
    for words in commands:
        command = " ".join(words)
        if words[0] == "make":
            assert words[1] in ("demo", "test"), command  # both are run by CI / the e2e tests
            continue
        if words[0] == ".venv/bin/python":  # a benchmark: tens of minutes; here it must exist and parse its flags
            script = REPO / words[1]
            proc = subprocess.run([sys.executable, str(script), *words[2:], "--help"], capture_output=True, text=True,
                                  timeout=120)
            assert proc.returncode == 0 and "usage" in proc.stdout, (command, proc.stderr[-2000:])
            continue
        if words[0] in ("kubectl", "sbatch", "ray"):
            continue  # the cluster's own tools, fed by the files cluster-template wrote (tests/test_cluster_templates)
        assert words[0] == "diffrl", f"README shows a command this test does not know: {command}"
        args = parse([PLACEHOLDERS.get(w, w) for w in words[1:]])  # as `diffrl` reads it; unknown flags exit here
        if args.command in ("run", "submit", "cluster-template"):
            overrides = getattr(args, "overrides", [])
            # Weights under /models live on GPU machines or the cluster's storage: validated as `diffrl submit` does.
            local = args.command == "run" and not any("=/models/" in o for o in overrides)
            cfg = load_job(args.job, overrides, local=local)
            assert cfg.kind, command
            validated += 1
    assert validated >= 30, validated


def test_the_tuned_schedule_command_follows_the_schedule_and_says_so(user_dir, capsys):
    """README: `diffrl run configs/shapes_awm.yaml rollout.schedule=runs/solver_tune_shapes/schedules/nfe4.json`."""
    from diffrl.cli import main

    schedule = "rollout.schedule=runs/solver_tune_shapes/schedules/nfe4.json"
    assert ["diffrl", "run", "configs/shapes_awm.yaml", schedule] in readme_commands()
    assert main(["run", "configs/shapes_awm.yaml", schedule, "--check"]) == 0
    err = capsys.readouterr().err
    # nfe 4 with timestep_fraction 1.0 offers grid steps 1..3: the job file's 6 timesteps become 3, in one line
    assert err.strip() == ("note: learner.awm.num_timesteps=3 (was 6): the training timesteps follow the 4 steps of "
                           "rollout.schedule runs/solver_tune_shapes/schedules/nfe4.json")
    cfg = load_job("configs/shapes_awm.yaml", [schedule])
    assert cfg.rollout.num_steps == 4 and cfg.learner.awm.num_timesteps == 3 and cfg.rollout.sampler == "sa_solver"
    # Set by the user without a schedule, too many timesteps are still an error naming the key.
    assert main(["run", "configs/shapes_awm.yaml", "rollout.num_steps=4"]) == 2
    assert "learner.awm.num_timesteps=6 exceeds the 3 training timesteps" in capsys.readouterr().err
