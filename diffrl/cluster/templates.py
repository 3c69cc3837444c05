"""Cluster templates rendered from a job file: a KubeRay RayJob, a Slurm batch script and a `ray up` cluster file.

The templates live in diffrl/cluster/templates/ as `string.Template`s with `@@{name}` placeholders (`$` belongs to
the shell commands inside them). Node counts and sizes come from the job's resource pools (`resource_pools`): by default one
node type holds up to 8 GPUs, 8 CPUs per GPU and 4 GiB per CPU, and enough nodes for the job's GPUs; every choice
can be overridden and is checked against the job's needs. Dashboards bind 127.0.0.1 on the head unless
`open_dashboard` (Slurm, ray up); KubeRay's operator needs the dashboard on the pod network, so that template keeps
it behind the cluster-internal head service and Ray token authentication instead.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

import yaml

from diffrl.cluster.jobs import portable_job
from diffrl.kinds import kind_of, load_job
from diffrl.kinds.rl.pairs import pairs_file
from diffrl.platform.config import ConfigError
from diffrl.platform.roles import PoolSpec, resource_pools

TEMPLATES = Path(__file__).parent / "templates"
KINDS = {"kuberay": "kuberay.yaml", "slurm": "slurm.sh", "ray-up": "ray-up.yaml"}
DEFAULT_IMAGE = "diffrl:0.1.0"
JOB_MOUNT = "/home/ray/diffrl-job"
MAX_GPUS_PER_NODE = 8
CPUS_PER_GPU = 8
GIB_PER_CPU = 4
# Provider blocks and node configs of the `ray up` file (AWS picks its Deep Learning AMI by region). Other clouds:
# replace `provider` and the node_config blocks of the rendered file (cluster/README.md).
PROVIDERS = {
    "aws": {"block": {"type": "aws", "region": "us-west-2", "cache_stopped_nodes": False},
            "head": {"InstanceType": "m6i.2xlarge"},
            # The smallest of these with at least the GPUs a node needs (A10G, A10G, A100).
            "gpu": [(1, {"InstanceType": "g5.8xlarge"}), (4, {"InstanceType": "g5.12xlarge"}),
                    (8, {"InstanceType": "p4d.24xlarge"})],
            "cpu": {"InstanceType": "m6i.8xlarge"}},
}


class TemplateError(ValueError):
    """An impossible template request; the message names the option to change and what the job needs."""


class ClusterTemplate(Template):
    delimiter = "@@"


@dataclass(frozen=True)
class ClusterShape:
    """Worker nodes for a job: how many, and the GPUs, CPUs and memory of each."""

    nodes: int
    gpus_per_node: int
    cpus_per_node: int
    memory_gib: int
    total_gpus: float
    total_cpus: float
    summary: str


def job_pools(cfg: Any) -> list[PoolSpec]:
    """The resource pools the runtime will place for this job (from its kind's roles and ray.colocate)."""
    return resource_pools(kind_of(cfg).roles(cfg), cfg.ray.colocate)


def cluster_shape(cfg: Any, nodes: int | None = None, gpus_per_node: int | None = None,
                  cpus_per_node: int | None = None) -> ClusterShape:
    """Size the worker nodes from the job's roles; explicit values are checked against what the job needs."""
    demands = job_pools(cfg)
    total_gpus = sum(d.total_gpus for d in demands)
    total_cpus = sum(d.total_cpus for d in demands)
    summary = (f"{total_gpus:g} GPU(s) and {total_cpus:g} CPU(s) for Ray: "
               + ", ".join(d.describe() for d in demands))
    if gpus_per_node is None:
        wanted = math.ceil(total_gpus / nodes) if nodes else math.ceil(total_gpus)
        gpus_per_node = min(wanted, MAX_GPUS_PER_NODE)
    if nodes is None:
        nodes = math.ceil(total_gpus / gpus_per_node) if total_gpus and gpus_per_node else 1
    if cpus_per_node is None:
        cpus_per_node = max(math.ceil(total_cpus / nodes), CPUS_PER_GPU * max(gpus_per_node, 1))
    if nodes < 1 or gpus_per_node < 0 or cpus_per_node < 1:
        raise TemplateError(f"--nodes must be >= 1, --gpus-per-node >= 0 and --cpus-per-node >= 1; got {nodes}, "
                            f"{gpus_per_node}, {cpus_per_node}")
    if nodes * gpus_per_node < total_gpus or nodes * cpus_per_node < total_cpus:
        raise TemplateError(f"{nodes} node(s) x ({gpus_per_node} GPU, {cpus_per_node} CPU) cannot hold the job, "
                            f"which needs {summary}; raise --nodes, --gpus-per-node or --cpus-per-node")
    for demand in demands:
        if demand.gpus > gpus_per_node or demand.cpus > cpus_per_node:
            raise TemplateError(f"one {demand.role} worker needs {demand.cpus:g} CPU and {demand.gpus:g} GPU, more "
                                f"than a node of {cpus_per_node} CPU and {gpus_per_node} GPU; raise --gpus-per-node "
                                f"or --cpus-per-node")
    return ClusterShape(nodes, gpus_per_node, cpus_per_node, GIB_PER_CPU * cpus_per_node, total_gpus, total_cpus,
                        summary)


def _notes(cfg: Any, demands: list[PoolSpec]) -> str:
    """Comment lines for what the template cannot settle itself."""
    lines = []
    custom = sorted({key for d in demands for key in d.resources})
    if custom:
        lines.append(f"# The job asks for custom Ray resources {custom}: advertise them on the nodes that should run "
                     f"those roles (ray start --resources).")
    if not Path(cfg.output_dir).is_absolute():
        lines.append(f"# output_dir '{cfg.output_dir}' is relative: outputs stay on the head and vanish with it; set "
                     f"output_dir to shared storage.")
    pairs = pairs_file(cfg)
    if pairs is not None and not Path(pairs).is_absolute():
        lines.append(f"# learner.diffusion_dpo.pairs '{pairs}' is relative: the pairs file and its images are not in "
                     f"this template; give an absolute path on storage the head node reads.")
    return "".join(line + "\n" for line in lines)


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (the job file, prompt files) as literal blocks, as a person would write them."""


_BlockDumper.add_representer(
    str, lambda dumper, text: dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None))


def _yaml_under_key(value: Any, spaces: int) -> str:
    """`value` as block-style YAML, indented to sit under a key."""
    text = yaml.dump(value, Dumper=_BlockDumper, sort_keys=False, default_flow_style=False, width=1000)
    return "\n".join(" " * spaces + line if line else line for line in text.rstrip("\n").splitlines())


def _k8s_name(name: str) -> str:
    """A Kubernetes resource name from a job name: lowercase letters, digits and dashes, at most 47 characters
    (KubeRay's limit for a RayJob)."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:47].rstrip("-") or "diffrl"


def pinned_requirements() -> list[str]:
    """diffrl's pinned runtime requirements, as installed (pyproject's dependencies, without the extras)."""
    return [req for req in importlib.metadata.requires("diffrl") or [] if ";" not in req]


def _kuberay_values(cfg: Any, shape: ClusterShape, image: str, provider: str) -> dict[str, Any]:
    job_text, copies = portable_job(cfg, JOB_MOUNT)
    files = {"job.yaml": job_text, **{name: path.read_text() for name, path in copies.items()}}
    gpus = shape.gpus_per_node
    return {"image": image, "ray_version": importlib.metadata.version("ray"),
            "configmap_data": _yaml_under_key(files, 2),
            "gpu_request": f', nvidia.com/gpu: "{gpus}"' if gpus else ""}


def _slurm_values(cfg: Any, shape: ClusterShape, image: str, provider: str) -> dict[str, Any]:
    gpus = shape.gpus_per_node
    return {"sbatch_gpus": f"#SBATCH --gpus-per-node={gpus}\n" if gpus else "",
            "num_gpus_flag": f" --num-gpus={gpus}" if gpus else ""}


def _ray_up_values(cfg: Any, shape: ClusterShape, image: str, provider: str) -> dict[str, Any]:
    spec = PROVIDERS[provider]
    worker_config = (next((config for count, config in spec["gpu"] if count >= shape.gpus_per_node),
                          spec["gpu"][-1][1]) if shape.gpus_per_node else spec["cpu"])
    pins = pinned_requirements()
    torch = [pin for pin in pins if pin.startswith("torch==")]  # first, on its own (see the Makefile)
    commands = [f"pip install --quiet {' '.join(shlex.quote(pin) for pin in group)}"
                for group in (torch, [pin for pin in pins if pin not in torch]) if group]
    return {"provider": provider, "provider_block": _yaml_under_key(spec["block"], 2),
            "head_node_config": _yaml_under_key(spec["head"], 6),
            "worker_node_config": _yaml_under_key(worker_config, 6),
            "setup_commands": "\n".join(f"  - {json.dumps(command)}" for command in commands)}


KIND_VALUES = {"kuberay": _kuberay_values, "slurm": _slurm_values, "ray-up": _ray_up_values}


def render_template(kind: str, cfg: Any, *, job_file: str, image: str = DEFAULT_IMAGE, nodes: int | None = None,
                    gpus_per_node: int | None = None, cpus_per_node: int | None = None,
                    open_dashboard: bool = False, provider: str = "aws") -> str:
    """Render the `kind` template (kuberay, slurm, ray-up) for the validated job `cfg` read from `job_file`."""
    if kind not in KINDS:
        raise TemplateError(f"unknown template kind '{kind}'; allowed: {', '.join(KINDS)}")
    if kind == "kuberay" and open_dashboard:
        raise TemplateError("kuberay: the dashboard already listens on the pod network (the KubeRay operator polls "
                            "jobs through it) behind the cluster-internal head service and Ray token auth; reach it "
                            "with kubectl port-forward. --open-dashboard applies to slurm and ray-up")
    if provider not in PROVIDERS:
        raise TemplateError(f"unknown provider '{provider}'; allowed: {', '.join(PROVIDERS)}")
    shape = cluster_shape(cfg, nodes, gpus_per_node, cpus_per_node)
    options = {"--image": image if kind == "kuberay" and image != DEFAULT_IMAGE else None,
               "--provider": provider if kind == "ray-up" and provider != "aws" else None,
               "--nodes": nodes, "--gpus-per-node": gpus_per_node, "--cpus-per-node": cpus_per_node}
    command = " ".join(["diffrl cluster-template", kind, job_file,
                        *[f"{flag} {value}" for flag, value in options.items() if value is not None],
                        *(["--open-dashboard"] if open_dashboard else [])])
    values: dict[str, Any] = {
        "command": command, "name": cfg.name, "k8s_name": _k8s_name(cfg.name),
        "job_file": job_file, "job_path": shlex.quote(job_file), "summary": shape.summary,
        "notes": _notes(cfg, job_pools(cfg)), "nodes": shape.nodes, "gpus_per_node": shape.gpus_per_node,
        "cpus_per_node": shape.cpus_per_node, "memory_gib": shape.memory_gib,
        "dashboard_host": "0.0.0.0" if open_dashboard else "127.0.0.1",
        **KIND_VALUES[kind](cfg, shape, image, provider),
    }
    return ClusterTemplate((TEMPLATES / KINDS[kind]).read_text()).substitute(values)


def cmd_cluster_template(args: argparse.Namespace) -> int:
    try:
        cfg = load_job(args.job, local=False)
        text = render_template(args.kind, cfg, job_file=args.job, image=args.image, nodes=args.nodes,
                               gpus_per_node=args.gpus_per_node, cpus_per_node=args.cpus_per_node,
                               open_dashboard=args.open_dashboard, provider=args.provider)
    except (ConfigError, TemplateError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.out is None:
        sys.stdout.write(text)
        return 0
    out = Path(args.out)
    if out.exists() and not args.force:
        print(f"error: {out} exists; pass --force to overwrite it", file=sys.stderr)
        return 2
    out.write_text(text)
    if args.kind == "slurm":
        out.chmod(0o755)
    print(f"wrote {out}")
    return 0


def add_template_command(sub: argparse._SubParsersAction) -> None:
    """Register `cluster-template {kuberay,slurm,ray-up} JOB.yaml` on the `diffrl` command's subparsers."""
    parser = sub.add_parser("cluster-template", help="render a KubeRay, Slurm or `ray up` file sized for a job")
    parser.add_argument("kind", choices=list(KINDS))
    parser.add_argument("job", help="YAML job file (validated first)")
    parser.add_argument("--image", default=DEFAULT_IMAGE, help="container image with diffrl installed (kuberay)")
    parser.add_argument("--provider", default="aws", choices=list(PROVIDERS), help="cloud provider (ray-up)")
    parser.add_argument("--nodes", type=int, default=None, help="worker nodes (default: enough for the job's GPUs)")
    parser.add_argument("--gpus-per-node", type=int, default=None,
                        help=f"GPUs per node (default: the job's GPUs, at most {MAX_GPUS_PER_NODE})")
    parser.add_argument("--cpus-per-node", type=int, default=None,
                        help=f"CPUs per node (default: {CPUS_PER_GPU} per GPU, at least the job's share)")
    parser.add_argument("--open-dashboard", action="store_true",
                        help="bind the head's dashboard to 0.0.0.0 instead of 127.0.0.1 (slurm, ray-up)")
    parser.add_argument("--out", default=None, help="write to this file instead of stdout")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    parser.set_defaults(func=cmd_cluster_template)
