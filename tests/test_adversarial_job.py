"""`kind: adversarial` as a user runs it: `diffrl run configs/adversarial_shapes.yaml` on Ray evaluates the EMA before,
during and after fine-tuning (GenEval-shapes and Frechet distance per NFE, the robustness curve), two learner ranks
train the weights of one, a resumed run finishes bitwise equal to an uninterrupted one, the saved model is another
job's model.path; bad configs exit 2 naming the key; an image folder is a data source."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from diffrl import cli
from diffrl.envs.shapes import prompt_splits, render_prompt
from diffrl.kinds import load_job
from diffrl.kinds.adversarial.data import build_source
from diffrl.platform.config import ConfigError

REPO = Path(__file__).resolve().parents[1]
JOB = str(REPO / "configs/adversarial_shapes.yaml")
FAST = ["trainer.steps=4", "trainer.checkpoint_every=2", "trainer.eval_every=2", "learner.batch_size=8",
        "learner.micro_batch_size=4", "learner.cpus_per_worker=1", "eval.cpus_per_worker=1", "eval.nfe=[2,3]",
        "eval.seeds_per_prompt=1", "eval.real_per_prompt=2", "eval.robustness_samples=4",
        "eval.robustness_radii=[0.0,0.2]", "eval.robustness_times=[0.5]", "trainer.wandb.mode=disabled"]


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def one_rank(ray_cluster, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one_rank")
    assert cli.main(["run", JOB, f"output_dir={out}", *FAST]) == 0
    return out / "adversarial_shapes"


def test_the_job_evaluates_quality_and_robustness_and_saves_a_usable_model(one_rank, tmp_path, capsys):
    evals = [r for r in records(one_rank) if "eval/headline" in r]
    assert [r["step"] for r in evals] == [0, 2, 4]  # before training, every eval_every, at the end
    for r in evals:
        assert 0 <= r["eval/nfe2/geneval"] <= 1 and r["eval/nfe3/fd"] > 0
        assert r["eval/robust/eta0.2"] > r["eval/robust/eta0"] > 0  # a perturbation raises the error
    losses = [r for r in records(one_rank) if "train/loss" in r]
    assert [r["step"] for r in losses] == [1, 2, 3, 4] and all(r["train/delta_norm"] > 0 for r in losses)
    assert (one_rank / "figures" / "adversarial.png").stat().st_size > 0 and (one_rank / "report.html").exists()
    assert (one_rank / "samples_nfe2_step4.png").exists()
    # The EMA model is a model.path for the next job (here: another adversarial job), and differs from the base.
    assert load_job(JOB, [f"model.path={one_rank / 'model'}"]).model.path == str(one_rank / "model")
    base = load_file(str(REPO / "diffrl/models/assets/shapes_base/model.safetensors"))
    final = load_file(str(one_rank / "model" / "model.safetensors"))
    assert final.keys() == base.keys() and any(not torch.equal(final[k], base[k]) for k in base)
    assert all(torch.equal(final[k], base[k]) for k in base if k.startswith("text_encoder."))  # trains: denoiser


@pytest.mark.slow  # the learner-level tests (test_adversarial) cover the update in `make test`; this is test-all
def test_two_learner_ranks_train_the_weights_of_one(one_rank, tmp_path):
    assert cli.main(["run", JOB, f"output_dir={tmp_path}", "learner.num_workers=2", *FAST]) == 0
    one = load_file(str(one_rank / "final.safetensors"))
    two = load_file(str(tmp_path / "adversarial_shapes" / "final.safetensors"))
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(one[key], two[key], rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.slow  # RL's SIGKILL resume (test_resume) keeps the shared checkpoint path in `make test`
def test_a_resumed_run_finishes_bitwise_equal(one_rank, tmp_path):
    first = [*FAST, "trainer.steps=2"]
    assert cli.main(["run", JOB, f"output_dir={tmp_path}", *first]) == 0
    assert cli.main(["run", "--resume", JOB, f"output_dir={tmp_path}", *FAST]) == 0
    resumed = tmp_path / "adversarial_shapes"
    one, two = (load_file(str(d / "final.safetensors")) for d in (one_rank, resumed))
    assert all(torch.equal(one[k], two[k]) for k in one)
    losses = {r["step"]: r["train/loss"] for r in records(resumed) if "train/loss" in r}
    assert losses == {r["step"]: r["train/loss"] for r in records(one_rank) if "train/loss" in r}


@pytest.mark.parametrize("override, key", [
    ("learner.adversarial.prediction=velocity", "learner.adversarial.min_t"),
    ("model.path=null", "model.path"),
    ("learner.num_workers=3", "learner.num_workers"),
    ("learner.adversarial.adv_steps=0", "learner.adversarial.adv_steps"),
    ("eval.attack=pgd", "eval.attack"),
])
def test_bad_configs_exit_2_naming_the_key(override, key, capsys, tmp_path):
    assert cli.main(["run", JOB, f"output_dir={tmp_path}", override]) == 2
    err = capsys.readouterr().err
    assert key in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # nothing written


def write_folder(root: Path, count: int) -> Path:
    _, heldout = prompt_splits()
    lines = []
    for i in range(count):
        entry = heldout[i % len(heldout)]
        Image.fromarray(render_prompt(entry, np.random.default_rng(i))).resize((60, 60)).save(root / f"{i:03d}.png")
        lines.append(json.dumps({"file": f"{i:03d}.png", "prompt": entry["prompt"]}))
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return root / "captions.jsonl"


def test_an_image_folder_is_a_data_source(tmp_path):
    captions = write_folder(tmp_path, 12)
    cfg = load_job(JOB, ["data.source=image_folder", f"data.path={tmp_path}", f"data.captions={captions}",
                         "data.heldout=4"])
    source = build_source(cfg)
    batch, again = source.batch(3, 6), build_source(cfg).batch(3, 6)
    assert batch.x0.shape == (6, 3, 30, 30) and torch.equal(batch.x0, again.x0) and batch.prompts == again.prompts
    assert -1 <= batch.x0.min() and batch.x0.max() <= 1
    real = source.real_set(1)
    assert len(real.images) == 4 and real.images.shape[1:] == (30, 30, 3)
    held = {bytes(image) for image in real.images}
    assert not any(bytes(x) in held for x in source.images[source.train])  # held-out images never train
    (tmp_path / "captions.jsonl").write_text('{"file": "missing.png", "prompt": "a photo"}\n')
    with pytest.raises(ConfigError, match="data.captions"):
        load_job(JOB, ["data.source=image_folder", f"data.path={tmp_path}", f"data.captions={captions}",
                       "data.heldout=4"])
    with pytest.raises(ConfigError, match="data.path"):
        load_job(JOB, ["data.source=image_folder", f"data.path={tmp_path / 'nowhere'}"])
