"""What a job's rewards need on the cluster: file rewards are copied with the job, local modules ride along as
py_modules, and what cannot travel (an installed plug-in the cluster may lack, a reward server on this machine's
loopback) is said before submitting."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffrl.platform.config import ConfigError
from diffrl.rewards.remote import LOOPBACK


@dataclass
class Shipment:
    """`names`: {reward index: its name on the cluster}; `files`: {path under the staging dir: local file};
    `py_modules`: local package or module paths to upload; `warnings`: rewards that may not work there."""

    names: dict[int, str] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    py_modules: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _installed(path: str) -> bool:
    return any(part in ("site-packages", "dist-packages") for part in Path(path).parts)


def _module_path(top: str) -> str | None:
    spec = importlib.util.find_spec(top)
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return str(list(spec.submodule_search_locations)[0])
    return spec.origin


def plan_rewards(cfg: Any, requirements: list[str] | None = None, directory: str = "rewards") -> Shipment:
    """How each reward of `cfg` (kinds with `reward.rewards`) gets to the cluster."""
    import urllib.parse

    from diffrl.rewards.base import entry_point_distribution, registered_in_process

    shipment = Shipment()
    specs = getattr(getattr(cfg, "reward", None), "rewards", None) or []
    wanted = " ".join(requirements or []).lower()
    for index, spec in enumerate(specs):
        name = spec.name
        label = f"reward.rewards.{index} ('{name}')"
        if name.startswith(("http://", "https://")):
            if (urllib.parse.urlsplit(name).hostname or "") in LOOPBACK:
                shipment.warnings.append(f"{label}: a loopback URL on the cluster names the cluster's own machine, "
                                         f"not this one; give the reward server's routable address")
            if spec.kwargs.get("token_file"):
                shipment.warnings.append(f"{label}: kwargs.token_file is not shipped (a secret); it must exist at "
                                         f"{spec.kwargs['token_file']} on the cluster, or set DIFFRL_REWARD_TOKEN there")
            continue
        if ":" in name:
            target, _, attribute = name.rpartition(":")
            if target.endswith(".py"):
                shipped = f"{directory}/{Path(target).name}"
                if shipped in shipment.files and shipment.files[shipped].resolve() != Path(target).resolve():
                    raise ConfigError(f"{label}: two reward files are named {Path(target).name}; rename one")
                shipment.files[shipped] = Path(target)
                shipment.names[index] = f"{shipped}:{attribute}"
                continue
            top = target.split(".")[0]
            path = _module_path(top)
            if top == "diffrl" or path is None or top in sys.stdlib_module_names or not Path(path).exists():
                continue  # diffrl itself (shipped), the standard library, built-in modules
            if _installed(path):
                if top.lower().replace("_", "-") not in wanted.replace("_", "-"):
                    shipment.warnings.append(f"{label}: module '{top}' is an installed package; the cluster needs it "
                                             f"too (list it in --requirements)")
            elif path not in shipment.py_modules:
                shipment.py_modules.append(path)
            continue
        if registered_in_process(name):
            continue
        dist = entry_point_distribution(name)
        if dist is not None and dist.lower() not in wanted:
            shipment.warnings.append(f"{label}: registered by the installed package {dist}; the cluster needs it too "
                                     f"(list it in --requirements)")
    return shipment


def print_warnings(shipment: Shipment) -> None:
    for warning in shipment.warnings:
        print(f"warning: {warning}", file=sys.stderr)
