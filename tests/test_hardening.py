"""Bad input is refused up front (exit 2, one message naming the key, file and line, nothing written, no Ray);
rewards are accepted as users write them; checkpoint manifests cannot point outside their directory."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from diffrl.cli import main
from diffrl.kinds import load_job
from diffrl.platform import checkpoint as ckpt
from diffrl.platform.config import ConfigError
from diffrl.rewards.builtin import jpeg_compressibility
from diffrl.rewards.base import (RewardError, RewardOutput, RewardOutputError, build_reward, check_reward,
                                 is_reward_function, validate_reward_output)
from diffrl.workers.reward import RewardWorker

REPO = Path(__file__).resolve().parents[1]
JOB = REPO / "configs" / "shapes_awm.yaml"
IMAGES = np.random.default_rng(0).integers(0, 256, size=(3, 8, 8, 3), dtype=np.uint8)
PROMPTS, META = ["a", "b", "c"], [{}, {}, {}]


def check(capsys, tmp_path, *args):
    """`diffrl run --check` in this process: (exit code, stderr); nothing may appear under tmp_path/runs."""
    code = main(["run", "--check", *map(str, args), f"output_dir={tmp_path / 'runs'}"])
    assert not (tmp_path / "runs").exists()
    return code, capsys.readouterr().err


@pytest.mark.parametrize("text", ["[]", "0", "false", "", "- kind: rl"])
def test_a_job_file_that_is_not_a_mapping_is_refused(text, tmp_path, capsys):
    job = tmp_path / "job.yaml"
    job.write_text(text)
    code, err = check(capsys, tmp_path, job)
    assert code == 2 and str(job) in err and ("mapping" in err or "empty" in err), err


def test_errors_name_the_key_and_the_file_line_or_override(tmp_path, capsys):
    job = tmp_path / "job.yaml"
    job.write_text("kind: rl\nlearner:\n  lr: .nan\n  bogus: 1\nreward:\n  rewards:\n    - name: geneval_shapes\n"
                   "      weight: .inf\n")
    code, err = check(capsys, tmp_path, job)
    assert code == 2
    assert f"learner.lr: got a non-finite number; every number must be finite (at {job}:3)" in err
    assert f"learner.bogus: unknown key (at {job}:4)" in err
    assert f"reward.rewards.0.weight: got a non-finite number; every number must be finite (at {job}:8)" in err
    code, err = check(capsys, tmp_path, JOB, "learner.lr=fast")
    assert code == 2 and "learner.lr: Input should be a valid number" in err
    assert "(from override 'learner.lr=fast')" in err


def test_reward_kwargs_must_be_finite_too():
    with pytest.raises(ConfigError, match=r"reward\.rewards\.0\.kwargs\.target: got a non-finite"):
        load_job(JOB, ["reward.rewards=[{name: 'examples/rewards/brightness.py:brightness', kwargs: {target: .nan}}]"])


def test_overrides_that_do_not_parse_are_config_errors(tmp_path, capsys):
    code, err = check(capsys, tmp_path, JOB, "reward.rewards=[{name: x")
    assert code == 2 and "override 'reward.rewards=[{name: x': the value is not valid YAML" in err
    assert "Traceback" not in err


def test_list_items_can_be_overridden_by_index():
    cfg = load_job(JOB, ["reward.rewards.0.weight=0.5", "reward.rewards.0.kwargs.score=strict"])
    assert cfg.reward.rewards[0].weight == 0.5 and cfg.reward.rewards[0].kwargs == {"score": "strict"}
    with pytest.raises(ConfigError, match=r"'reward\.rewards\.3' is not an index of a list of 1"):
        load_job(JOB, ["reward.rewards.3.weight=1"])


@pytest.mark.parametrize("override, expected", [
    ("reward.rewards.0.name=nosuch", r"reward\.rewards\.0\.name: unknown reward 'nosuch'; registered rewards: \["),
    ("reward.rewards.0.kwargs.bogus=1", r"reward 'geneval_shapes': its kwargs do not fit the factory "
                                        r"geneval_shapes\(score.*unexpected keyword argument 'bogus'"),
    ("reward.rewards.0.name=missing/file.py:f", r"file not found: missing/file.py"),
    ("reward.rewards.0.name=examples/rewards/brightness.py:nothing", r"has no attribute 'nothing'"),
    ("reward.rewards.0.name=no_such_module:f", r"cannot import module 'no_such_module'"),
    ("reward.rewards.0.name=http://:99999", r"not a reward server URL"),
    ("reward.rewards.0.name=ocr", r"reward 'ocr': \d+ of \d+ prompts lack what it needs, first prompt 0 .*double "
                                  r"quotes"),
    ("model.path=/nonexistent/model", r"model\.path: model weights not found: /nonexistent/model/config\.json is "
                                      r"missing \(from override 'model\.path=/nonexistent/model'\)"),
])
def test_check_resolves_rewards_models_and_prompt_metadata_before_ray_starts(override, expected, tmp_path, capsys):
    import ray

    code, err = check(capsys, tmp_path, JOB, override)
    assert code == 2 and err.count("\n") <= 3 and "Traceback" not in err
    assert __import__("re").search(expected, err), err
    assert not ray.is_initialized()


def test_geneval_needs_its_metadata_in_prompt_files(tmp_path, capsys):
    (tmp_path / "train.txt").write_text("a photo of a cat\n")
    (tmp_path / "eval.jsonl").write_text(json.dumps({"prompt": "two cats", "tag": "counting",
                                                     "include": [{"class": "cat", "count": 0}]}) + "\n")
    code, err = check(capsys, tmp_path, JOB, "data.source=files", f"data.train_file={tmp_path / 'train.txt'}",
                      f"data.eval_file={tmp_path / 'eval.jsonl'}")
    assert code == 2 and "2 of 2 prompts lack what it needs" in err and "GenEval needs a string 'tag'" in err
    (tmp_path / "train.txt").write_text('a sign that says "open"\n')
    (tmp_path / "eval.jsonl").write_text(json.dumps({"prompt": 'a sign that says "closed"'}) + "\n")
    code, err = check(capsys, tmp_path, JOB, "data.source=files", f"data.train_file={tmp_path / 'train.txt'}",
                      f"data.eval_file={tmp_path / 'eval.jsonl'}", "reward.rewards=[{name: ocr}]")
    assert code == 0, err


# ------------------------------------------------------------------------------------ rewards as users write them
def test_plain_functions_and_factories_on_the_file_route():
    plain = "examples/rewards/plain_function.py:redness"
    reward = build_reward(plain)
    out = validate_reward_output(plain, reward(IMAGES, PROMPTS, META), 3)
    pixels = IMAGES.astype(np.float64) / 255.0
    assert out.scores == pytest.approx(pixels[..., 0].mean(axis=(1, 2)) - pixels[..., 1:].mean(axis=(1, 2, 3)))
    assert out.details["red"] == pytest.approx(pixels[..., 0].mean(axis=(1, 2)))
    with pytest.raises(RewardError, match="is a reward function .* takes no kwargs"):
        build_reward(plain, scale=2)
    factory = build_reward("examples/rewards/brightness.py:brightness", target=0.3)
    assert not is_reward_function(jpeg_compressibility)  # (quality=95, sign=1.0): defaults make it a factory
    assert len(factory(IMAGES, PROMPTS, META).scores) == 3


def test_signature_rule_tells_functions_from_factories():
    class Scorer:
        def __init__(self, scale=1.0):
            self.scale = scale

        def __call__(self, images, prompts, metadata):
            return [self.scale] * len(images)

    assert is_reward_function(lambda images, prompts, metadata: [0.0] * len(images))
    assert not is_reward_function(lambda scale=1.0, bias=0.0, clip=1.0: None)  # defaults: a factory
    assert not is_reward_function(Scorer)  # a class is a factory
    assert is_reward_function(Scorer(2.0))  # an instance is a reward
    check_reward("jpeg_compressibility", {"quality": 90})
    with pytest.raises(RewardError, match="kwargs do not fit"):
        check_reward("jpeg_compressibility", {"qualty": 90})


@pytest.mark.parametrize("form", ["list", "numpy", "tensor", "tuple", "output"])
def test_every_return_form_is_accepted(form):
    scores = [0.25, 0.5, 1.0]
    raw = {"list": scores, "numpy": np.array(scores), "tensor": torch.tensor(scores),
           "tuple": (np.array(scores), {"why": ["x", "y", "z"]}),
           "output": RewardOutput(scores=scores)}[form]
    out = validate_reward_output("r", raw, 3)
    assert out.scores == scores and all(type(s) is float for s in out.scores)
    if form == "tuple":
        assert out.details == {"why": ["x", "y", "z"]}


@pytest.mark.parametrize("raw, expected", [
    ("high", "returned str, expected a RewardOutput"),
    ({"scores": [1.0]}, "returned dict"),
    (np.zeros((3, 1)), r"scores of shape \[3, 1\]"),
    ([1.0, 2.0], "returned 2 scores for a batch of 3"),
    ([1.0, "x", 2.0], "score 1 has type str"),
])
def test_a_wrong_output_is_a_validation_error_that_is_not_retried(raw, expected, tmp_path):
    with pytest.raises(RewardOutputError, match=expected):
        validate_reward_output("r", raw, 3)
    calls = tmp_path / "calls"
    file = tmp_path / "bad.py"
    file.write_text(f"def bad(images, prompts, metadata):\n    open({str(calls)!r}, 'a').write('x')\n"
                    f"    return {raw!r}\n" if not isinstance(raw, np.ndarray) else
                    f"import numpy as np\ndef bad(images, prompts, metadata):\n    open({str(calls)!r}, 'a').write('x')\n"
                    f"    return np.zeros((3, 1))\n")
    worker = RewardWorker([{"name": f"{file}:bad", "retries": 2, "backoff_s": 0.0}])
    worker.setup()
    with pytest.raises(RewardOutputError):
        worker.score(IMAGES, PROMPTS, META)
    assert calls.read_text() == "x"  # called once: no retries for a wrong type


def test_a_failing_factory_names_its_reward(tmp_path):
    file = tmp_path / "broken.py"
    file.write_text("def make(path):\n    raise FileNotFoundError(f'no weights at {path}')\n")
    with pytest.raises(RewardError, match=rf"reward '{file}:make': building it failed: FileNotFoundError: no weights"):
        build_reward(f"{file}:make", path="/x")


def test_a_server_token_never_goes_in_the_job_file(tmp_path):
    with pytest.raises(ConfigError, match="kwargs.token would store a secret in the job file"):
        load_job(JOB, ["reward.rewards=[{name: 'http://127.0.0.1:8700', kwargs: {token: s3cret}}]"])
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    from diffrl.rewards.remote import RemoteReward

    assert RemoteReward("http://127.0.0.1:8700", token_file=str(token)).token == "s3cret"


def test_an_in_process_timeout_fails_without_retrying_beside_the_hung_call(tmp_path):
    file = tmp_path / "slow.py"
    calls = tmp_path / "calls"
    file.write_text(f"import time\ndef slow(images, prompts, metadata):\n    open({str(calls)!r}, 'a').write('x')\n"
                    f"    time.sleep(3)\n    return [0.0] * len(images)\n")
    worker = RewardWorker([{"name": f"{file}:slow", "retries": 2, "timeout_s": 0.5, "backoff_s": 0.0}])
    worker.setup()
    with pytest.raises(RewardError, match=r"gave no answer within timeout_s=0.5 s"):
        worker.score(IMAGES, PROMPTS, META)
    assert calls.read_text() == "x"


# ------------------------------------------------------------------------------------------ checkpoint manifests
def _checkpoint(run_dir: Path, ranks: int = 1) -> Path:
    tmp = ckpt.begin(run_dir, 5)
    for name in ("model.safetensors", "trainer.json", "workers.safetensors", "workers.json"):
        (tmp / name).write_text("{}")
    for rank in range(ranks):
        (tmp / f"learner_rank{rank}.safetensors").write_text("{}")
        (tmp / f"learner_rank{rank}.json").write_text("{}")
    return ckpt.commit(tmp, 5)


def _rewrite(directory: Path, edit) -> None:
    manifest = json.loads((directory / ckpt.MANIFEST).read_text())
    edit(manifest)
    (directory / ckpt.MANIFEST).write_text(json.dumps(manifest))


def test_manifest_names_may_not_leave_the_checkpoint(tmp_path):
    directory = _checkpoint(tmp_path, ranks=2)
    assert ckpt.latest_checkpoint(tmp_path).ranks == 2
    (tmp_path / "secret").write_text("x")
    _rewrite(directory, lambda m: m["files"].update({"../../secret": {"bytes": 1, "sha256": "0" * 64}}))
    with pytest.raises(ckpt.CheckpointError, match=r"names files outside the checkpoint directory \('\.\./\.\./secret'"):
        ckpt.latest_checkpoint(tmp_path)


def test_every_learner_rank_must_be_listed(tmp_path):
    directory = _checkpoint(tmp_path, ranks=2)
    _rewrite(directory, lambda m: m["files"].pop("learner_rank1.json"))
    with pytest.raises(ckpt.CheckpointError, match=r"learner rank 1 of 2 has no learner_rank1.json"):
        ckpt.latest_checkpoint(tmp_path)


def test_unlisted_files_are_reported_and_not_read(tmp_path, capsys):
    directory = _checkpoint(tmp_path)
    (directory / "extra.bin").write_bytes(b"x")
    found = ckpt.latest_checkpoint(tmp_path)
    assert found.step == 5 and "extra.bin" in capsys.readouterr().err
    with pytest.raises(ckpt.CheckpointError, match="holds 1 learner rank"):
        found.learner_state(1)


def test_reward_model_directories_must_exist_before_start(tmp_path, capsys):
    code, err = check(capsys, tmp_path, JOB, f"reward.rewards=[{{name: pickscore, kwargs: {{path: {tmp_path / 'PickScore_v1'}}}}}]")
    assert code == 2 and f"reward.rewards.0.kwargs.path: '{tmp_path / 'PickScore_v1'}' is not a local directory" in err
