"""Security defaults: nothing the project ships unpickles data or loads torch files without weights_only=True, and every
socket a run opens (Ray's, the learners' gloo groups, the weight-broadcast group, the reward server) listens on the
loopback interface unless configured otherwise."""

import ast
import ipaddress
from pathlib import Path

import psutil

from diffrl.kinds import load_job
from diffrl.kinds.rl.roles import start_rl_roles as start_roles

REPO = Path(__file__).resolve().parents[1]
SHIPPED = [REPO / "diffrl", REPO / "benchmarks", REPO / "examples"]


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def unsafe_loads(source: str) -> list[str]:
    """Calls that can execute code from data: pickle/cloudpickle/dill/joblib/marshal loads, torch.load without
    weights_only=True, numpy loads with allow_pickle=True, yaml.load / unsafe_load."""
    found = []
    tree = ast.parse(source)
    for node in ast.walk(tree):  # `from pickle import loads` and the like, whatever name they are bound to
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in (
                "pickle", "cloudpickle", "dill", "joblib", "marshal", "shelve"):
            found += [f"line {node.lineno}: from {node.module} import {a.name}" for a in node.names
                      if a.name in ("load", "loads", "Unpickler", "open")]
    for node, name in _calls(tree):
        keywords = {k.arg: k.value for k in node.keywords}
        flagged = (
            name.split(".")[-1] in ("load", "loads") and name.split(".")[0] in ("pickle", "cloudpickle", "dill",
                                                                                 "joblib", "marshal", "shelve")
            or name == "torch.load" and not (isinstance(keywords.get("weights_only"), ast.Constant)
                                             and keywords["weights_only"].value is True)
            or name in ("np.load", "numpy.load") and isinstance(keywords.get("allow_pickle"), ast.Constant)
            and keywords["allow_pickle"].value is True
            or name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load")
        )
        if flagged:
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_the_scanner_flags_what_it_should():
    bad = ("import pickle, torch, yaml, numpy as np\npickle.load(f)\ntorch.load(p)\ntorch.load(p, weights_only=False)\n"
           "np.load(p, allow_pickle=True)\nyaml.load(s)\n")
    assert len(unsafe_loads(bad)) == 5
    assert len(unsafe_loads("from pickle import loads as l\nl(b)\n")) == 1
    assert unsafe_loads("torch.load(p, weights_only=True)\nyaml.safe_load(s)\nnp.load(p)\n") == []


def test_no_shipped_code_unpickles_or_loads_unsafely():
    problems = {}
    for root in SHIPPED:
        for path in root.rglob("*.py"):
            found = unsafe_loads(path.read_text())
            if found:
                problems[str(path.relative_to(REPO))] = found
    assert problems == {}


def test_no_shipped_default_listens_on_every_interface():
    """No literal wildcard address in the code's defaults (templates open the dashboard only when asked)."""
    offenders = []
    for root in SHIPPED:
        for path in root.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.arguments):
                    defaults = [*node.defaults, *[d for d in node.kw_defaults if d is not None]]
                    offenders += [f"{path.name}:{d.lineno}" for d in defaults
                                  if isinstance(d, ast.Constant) and d.value in ("0.0.0.0", "::")]
    assert offenders == []


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def test_every_socket_of_a_local_run_listens_on_loopback(ray_cluster):
    """Ray's own processes, the two learner ranks (gloo) and the weight-broadcast group of a local Ray run."""
    cfg = load_job(REPO / "configs/shapes_awm.yaml", ["learner.num_workers=2", "learner.cpus_per_worker=1",
                                                       "learner.sync_backend=broadcast", "rollout.prompts_per_step=2",
                                                       "rollout.group_size=4"])
    roles = start_roles(cfg)
    try:
        family = {p.pid for p in [psutil.Process(), *psutil.Process().children(recursive=True)]}
        listening = [(c.laddr.ip, c.laddr.port, psutil.Process(c.pid).name()) for c in psutil.net_connections("inet")
                     if c.status == psutil.CONN_LISTEN and c.pid in family]
        names = {name for _, _, name in listening}
        assert {"gcs_server", "raylet"} <= names and any("LearnerWorker" in n for n in names), names
        assert [entry for entry in listening if not _loopback(entry[0])] == []
    finally:
        roles.shutdown()
