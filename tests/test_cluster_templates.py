"""Cluster templates rendered from job files (diffrl/cluster/templates.py): each is checked by the tool that would
read it — YAML and the job loader for KubeRay, Ray's own autoscaler schema for `ray up`, `bash -n` for Slurm."""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from diffrl.cluster.templates import (
    KINDS, TemplateError, add_template_command, cluster_shape, pinned_requirements, render_template, job_pools,
)
from diffrl.kinds import load_job

ROOT = Path(__file__).resolve().parents[1]
GPU_JOB = "configs/templates/sd35m_geneval_flow_grpo.yaml"  # relative: the examples name it so
TINY_JOB = "configs/shapes_awm.yaml"
EXAMPLES = {"kuberay": "cluster/sd35m_geneval_flow_grpo.kuberay.yaml",
            "slurm": "cluster/sd35m_geneval_flow_grpo.slurm.sh",
            "ray-up": "cluster/sd35m_geneval_flow_grpo.ray-up.yaml"}


@pytest.fixture(autouse=True)
def at_repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # job files name their prompt files relative to the repository root


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="diffrl")
    add_template_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_roles_and_default_shape_follow_the_job():
    gpu = load_job(GPU_JOB, local=False)
    assert [(d.role, d.workers, d.cpus, d.gpus) for d in job_pools(gpu)] == [
        ("rollout", 1, 1.0, 1.0), ("reward0", 1, 0.5, 0.5), ("learner", 1, 1.0, 1.0)]
    shape = cluster_shape(gpu)
    assert (shape.nodes, shape.gpus_per_node, shape.cpus_per_node) == (1, 3, 24)
    assert cluster_shape(gpu, nodes=3).gpus_per_node == 1
    tiny = cluster_shape(load_job(TINY_JOB))
    assert (tiny.nodes, tiny.gpus_per_node, tiny.cpus_per_node) == (1, 0, 8)
    sol = load_job("configs/shapes_sol.yaml")
    roles = [d.role for d in job_pools(sol)]
    assert ("explore" in roles) == (not sol.rollout.sol.colocate)
    colocated = load_job("configs/shapes_sol.yaml", ["rollout.sol.colocate=true"])
    pools = {d.role: d for d in job_pools(colocated)}
    assert "explore" not in pools
    assert pools["rollout+explore"].cpus == colocated.rollout.cpus_per_worker + colocated.rollout.sol.explore_cpus_per_worker
    hybrid = load_job(GPU_JOB, ["ray.colocate=[[rollout, learner]]", "learner.num_workers=2",
                                "rollout.gpus_per_worker=0.5", "learner.gpus_per_worker=0.5"], local=False)
    assert [(d.role, d.workers, d.gpus) for d in job_pools(hybrid)] == [
        ("reward0", 1, 0.5), ("rollout+learner", 2, 1.0)]
    uneven = load_job(GPU_JOB, ["ray.colocate=[[rollout, learner]]", "rollout.num_workers=4"], local=False)
    shared = job_pools(uneven)[-1]
    assert [b["GPU"] for b in shared.bundle_list()] == [2.0, 1.0, 1.0, 1.0]  # learner rank 0 on bundle 0 only
    assert shared.total_gpus == 5.0 and cluster_shape(uneven).total_gpus == 5.5


def test_kuberay_manifest(tmp_path):
    cfg = load_job(GPU_JOB, local=False)
    documents = list(yaml.safe_load_all(render_template("kuberay", cfg, job_file=GPU_JOB, image="reg/diffrl:1")))
    assert [(d["apiVersion"], d["kind"]) for d in documents] == [("v1", "ConfigMap"), ("ray.io/v1", "RayJob")]
    config_map, ray_job = documents
    spec = ray_job["spec"]
    assert spec["entrypoint"] == "diffrl run /home/ray/diffrl-job/job.yaml"
    cluster = spec["rayClusterSpec"]
    assert cluster["authOptions"] == {"mode": "token"}
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert head["template"]["spec"]["volumes"][0]["configMap"]["name"] == config_map["metadata"]["name"]
    (workers,) = cluster["workerGroupSpecs"]
    container = workers["template"]["spec"]["containers"][0]
    assert container["image"] == "reg/diffrl:1"
    requests = container["resources"]["requests"]
    shape = cluster_shape(cfg)
    assert workers["replicas"] == workers["minReplicas"] == workers["maxReplicas"] == shape.nodes
    assert int(requests["nvidia.com/gpu"]) * workers["replicas"] >= shape.total_gpus == 2.5
    assert int(requests["cpu"]) * workers["replicas"] >= shape.total_cpus
    assert requests == container["resources"]["limits"]

    # The embedded job is the validated one: write the ConfigMap out as the pod would see it and load it back.
    for name, text in config_map["data"].items():
        (tmp_path / name).write_text(text)
    embedded = yaml.safe_load(config_map["data"]["job.yaml"])
    assert embedded["data"]["train_file"] == "/home/ray/diffrl-job/train.jsonl"
    loaded = load_job(tmp_path / "job.yaml", [f"data.train_file={tmp_path / 'train.jsonl'}",
                                              f"data.eval_file={tmp_path / 'eval.jsonl'}"], local=False)
    assert loaded.model_dump(exclude={"data"}) == cfg.model_dump(exclude={"data"})
    assert (tmp_path / "train.jsonl").read_text() == Path(cfg.data.train_file).read_text()


def test_kuberay_cpu_job_requests_no_gpus():
    documents = list(yaml.safe_load_all(render_template("kuberay", load_job(TINY_JOB), job_file=TINY_JOB)))
    config_map, ray_job = documents
    assert list(config_map["data"]) == ["job.yaml"]
    container = ray_job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in container["resources"]["requests"]


def test_kuberay_config_map_carries_prompt_files_verbatim(tmp_path):
    train, held_out = tmp_path / "train.txt", tmp_path / "eval.txt"
    train.write_text("  a prompt that starts with spaces\n\na red square: with a colon\n")
    held_out.write_text("one line without a newline")
    # Plain-text prompts carry no GenEval metadata: score them with a reward that needs none.
    cfg = load_job(TINY_JOB, ["data.source=files", f"data.train_file={train}", f"data.eval_file={held_out}",
                              "reward.rewards=[{name: jpeg_compressibility}]"])
    config_map = next(yaml.safe_load_all(render_template("kuberay", cfg, job_file=TINY_JOB)))
    assert config_map["data"]["train.txt"] == train.read_text()
    assert config_map["data"]["eval.txt"] == held_out.read_text()


def test_ray_up_file_passes_rays_autoscaler_schema():
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = load_job(GPU_JOB, local=False)
    config = yaml.safe_load(render_template("ray-up", cfg, job_file=GPU_JOB))
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    validate_config(prepare_config(copy.deepcopy(config)))  # what `ray up` runs: defaults merged, then checked
    worker = config["available_node_types"]["worker"]
    shape = cluster_shape(cfg)
    assert worker["resources"] == {"CPU": shape.cpus_per_node, "GPU": shape.gpus_per_node}
    assert worker["min_workers"] == worker["max_workers"] == config["max_workers"] == shape.nodes
    setup = " ".join(config["setup_commands"])
    assert all(pin.split("==")[0] in setup and pin.split("==")[1] in setup for pin in pinned_requirements())
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "RAY_AUTH_MODE=token" in head_start
    opened = yaml.safe_load(render_template("ray-up", cfg, job_file=GPU_JOB, open_dashboard=True))
    assert "--dashboard-host=0.0.0.0" in " ".join(opened["head_start_ray_commands"])


def test_pinned_requirements_are_the_cluster_requirements():
    lines = [line for line in (ROOT / "cluster" / "requirements.txt").read_text().splitlines()
             if line and not line.startswith("#")]
    assert sorted(pinned_requirements()) == sorted(lines)


def test_slurm_script_is_valid_bash_sized_from_the_job(tmp_path):
    cfg = load_job(GPU_JOB, local=False)
    script = tmp_path / "job.sh"
    script.write_text(render_template("slurm", cfg, job_file=GPU_JOB, nodes=3))
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    sbatch = dict(line.removeprefix("#SBATCH --").split("=", 1) for line in text.splitlines()
                  if line.startswith("#SBATCH --"))
    shape = cluster_shape(cfg, nodes=3)
    assert (sbatch["nodes"], sbatch["gpus-per-node"], sbatch["cpus-per-task"]) == (
        "3", str(shape.gpus_per_node), str(shape.cpus_per_node)) == ("3", "1", "8")
    assert "--dashboard-host=127.0.0.1" in text and "export RAY_AUTH_MODE=token" in text
    assert text.rstrip().endswith(f"diffrl run {GPU_JOB}")
    cpu_only = render_template("slurm", load_job(TINY_JOB), job_file=TINY_JOB)
    assert "gpus-per-node" not in cpu_only and "--num-gpus" not in cpu_only


@pytest.mark.parametrize("kind", list(KINDS))
def test_rendered_examples_are_up_to_date(kind):
    expected = render_template(kind, load_job(GPU_JOB, local=False), job_file=GPU_JOB)
    example = ROOT / EXAMPLES[kind]
    assert example.read_text() == expected, (
        f"{EXAMPLES[kind]} is stale; re-render it: diffrl cluster-template {kind} {GPU_JOB} --out {EXAMPLES[kind]} "
        f"--force")


def test_bad_inputs_give_clear_errors(tmp_path, capsys):
    cfg = load_job(GPU_JOB, local=False)
    with pytest.raises(TemplateError, match="unknown template kind 'nomad'; allowed: kuberay, slurm, ray-up"):
        render_template("nomad", cfg, job_file=GPU_JOB)
    with pytest.raises(TemplateError, match="needs 2.5 GPU.*raise --nodes, --gpus-per-node"):
        render_template("slurm", cfg, job_file=GPU_JOB, nodes=1, gpus_per_node=2)
    with pytest.raises(TemplateError, match="--open-dashboard applies to slurm and ray-up"):
        render_template("kuberay", cfg, job_file=GPU_JOB, open_dashboard=True)

    assert cli("cluster-template", "slurm", "missing.yaml") == 2
    assert capsys.readouterr().err.strip() == "error: job file not found: missing.yaml"
    with pytest.raises(SystemExit):
        cli("cluster-template", "nomad", GPU_JOB)
    assert "invalid choice: 'nomad'" in capsys.readouterr().err

    out = tmp_path / "job.sh"
    out.write_text("keep me")
    assert cli("cluster-template", "slurm", GPU_JOB, "--out", str(out)) == 2
    assert "exists; pass --force" in capsys.readouterr().err and out.read_text() == "keep me"
    assert cli("cluster-template", "slurm", GPU_JOB, "--out", str(out), "--force") == 0
    assert out.read_text().startswith("#!/bin/bash") and os.access(out, os.X_OK)
    assert cli("cluster-template", "kuberay", TINY_JOB) == 0
    assert "kind: RayJob" in capsys.readouterr().out


def test_a_relative_pairs_file_is_noted_in_the_template():
    """Offline Diffusion-DPO's pairs file is not in the template: a relative path gets a comment saying so."""
    job = "configs/shapes_diffusion_dpo_offline.yaml"
    note = "# learner.diffusion_dpo.pairs 'examples/dpo_pairs/pairs.jsonl' is relative"
    assert note in render_template("slurm", load_job(job, ["output_dir=/shared/runs"]), job_file=job)
    absolute = str(ROOT / "examples/dpo_pairs/pairs.jsonl")
    script = render_template("slurm", load_job(job, [f"learner.diffusion_dpo.pairs={absolute}"]), job_file=job)
    assert "is relative: the pairs" not in script
