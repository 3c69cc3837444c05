"""Ray Jobs submission (diffrl/cluster/jobs.py) and multi-node placement, on real `ray start` processes.

Every Ray process a test starts runs in its own session (start_new_session) under a private --temp-dir, with
every port chosen free and bound to 127.0.0.1; `RayNode.stop` kills that whole session (never `ray stop`, which
would reach other people's clusters on the machine).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from diffrl.cluster import jobs
from diffrl.kinds import load_job
from diffrl.platform.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
TINY_JOB = str(ROOT / "configs" / "shapes_awm.yaml")
GPU_JOB = str(ROOT / "configs" / "templates" / "sd35m_geneval_flow_grpo.yaml")
FAST = ["trainer.steps=1", "rollout.prompts_per_step=2", "rollout.group_size=4", "trainer.eval_seeds_per_prompt=1",
        "trainer.eval_every=1"]
VENV_BIN = Path(sys.executable).parent
HEAD_PORTS = ("port", "dashboard-port", "ray-client-server-port", "dashboard-agent-listen-port",
              "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port", "node-manager-port",
              "object-manager-port")
NODE_PORTS = HEAD_PORTS[3:]
# Ray refuses `ray start --address` (a second node) while RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, and with the switch
# on it rewrites 127.0.0.1 to the machine's routable address, where a loopback-only head does not listen. So the
# second node runs Ray's own CLI with that rewrite turned off: every one of its sockets stays on 127.0.0.1.
JOIN_ON_LOOPBACK = ("import sys, ray._private.services as services; services.resolve_ip_for_localhost = lambda host: "
                    "host; from ray.scripts.scripts import main; sys.argv[0] = 'ray'; sys.exit(main())")
LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}


def free_ports(names: tuple[str, ...]) -> dict[str, int]:
    """One free loopback port per name (all held open together so that no two are the same)."""
    sockets = [socket.socket() for _ in names]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = {name: sock.getsockname()[1] for name, sock in zip(names, sockets)}
    for sock in sockets:
        sock.close()
    return ports


def ray_env(**extra: str) -> dict[str, str]:
    """The environment of a test's Ray processes: this venv first on PATH (a job's `python` is the head's), no
    inherited cluster address or auth mode (a default `ray start`), usage stats off."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    env.update(PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", RAY_USAGE_STATS_ENABLED="0",
               RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", **extra)
    return env


class RayNode:
    """One `ray start --block` in its own session; stop() ends every process of that session."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, join: bool = False) -> None:
        launcher = [sys.executable, "-c", JOIN_ON_LOOPBACK] if join else [str(VENV_BIN / "ray")]
        self.log = log
        with log.open("w") as out:
            self.process = subprocess.Popen([*launcher, "start", "--block", "--disable-usage-stats", *args], env=env,
                                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def session(self) -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter(["status"]):
            try:
                if os.getsid(proc.pid) == self.process.pid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                    found.append(proc)
            except (ProcessLookupError, PermissionError):
                continue
        return found

    def listening(self) -> set[tuple[str, int]]:
        pids = {proc.pid for proc in self.session()}
        return {(conn.laddr.ip, conn.laddr.port) for conn in psutil.net_connections("inet")
                if conn.status == psutil.CONN_LISTEN and conn.pid in pids}

    def log_tail(self) -> str:
        return self.log.read_text()[-3000:] if self.log.exists() else ""

    def stop(self) -> None:
        """SIGTERM to the process group, then SIGKILL to whatever of the session is left (Ray's workers sit in
        process groups of their own, but stay in the session)."""
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        deadline = time.monotonic() + 20
        while (left := self.session()) and time.monotonic() < deadline:
            for proc in left:
                try:
                    proc.kill()
                except psutil.NoSuchProcess:
                    pass
            time.sleep(0.2)
        self.process.poll()


def start_head(temp_dir: Path, env: dict[str, str], resources: dict | None = None) -> tuple[RayNode, dict[str, int]]:
    ports = free_ports(HEAD_PORTS)
    args = ["--head", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", "--num-cpus=8",
            f"--temp-dir={temp_dir}", *[f"--{name}={port}" for name, port in ports.items()]]
    if resources:
        args.append(f"--resources={json.dumps(resources)}")
    node = RayNode(args, env, temp_dir.with_suffix(".head.log"))
    try:
        wait_for_dashboard(node, ports["dashboard-port"])
    except BaseException:
        node.stop()
        raise
    return node, ports


def wait_for_dashboard(node: RayNode, port: int, timeout_s: float = 90) -> None:
    """Until the dashboard answers HTTP at all (200, or 401 when the head turned token auth on)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if node.process.poll() is not None:
            raise RuntimeError(f"ray start exited with {node.process.returncode}:\n{node.log_tail()}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/version", timeout=2)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"no Ray dashboard on 127.0.0.1:{port} after {timeout_s:.0f} s:\n{node.log_tail()}")


def short_temp_dir() -> Path:
    # Ray's unix socket paths live under --temp-dir and must stay under ~107 characters.
    return Path(tempfile.mkdtemp(prefix="drt-", dir="/tmp"))


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="diffrl")
    jobs.add_job_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


# --- without a cluster ---------------------------------------------------------------------------------------------

def test_dashboard_address_resolution(monkeypatch):
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    assert jobs.dashboard_address(None) == "http://127.0.0.1:8265"
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")  # a GCS address, as inside a job: not a dashboard
    assert jobs.dashboard_address(None) == "http://127.0.0.1:8265"
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265/")
    assert jobs.dashboard_address(None) == "http://head:8265"
    assert jobs.dashboard_address("https://ray.example:443") == "https://ray.example:443"


def test_staged_job_round_trips_with_its_prompt_files(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = load_job(GPU_JOB, ["ray.address=10.0.0.1:6379"], local=False)  # as submit loads it: weights on the cluster
    job_file = jobs.stage_job(cfg, tmp_path)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["eval.jsonl", "train.jsonl"]
    assert (tmp_path / "data" / "train.jsonl").read_text() == Path(cfg.data.train_file).read_text()
    monkeypatch.chdir(tmp_path)  # the job runs from its working dir on the cluster
    staged = load_job(job_file, local=False)
    assert staged.data.train_file == "data/train.jsonl" and staged.data.eval_file == "data/eval.jsonl"
    assert staged.ray.address is None  # inside a Ray job RAY_ADDRESS names the cluster
    assert staged.model_dump(exclude={"data", "ray"}) == cfg.model_dump(exclude={"data", "ray"})


def test_runtime_env_ships_code_requirements_and_offline_defaults(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    pins = jobs.read_requirements(ROOT / "cluster" / "requirements.txt")
    env = jobs.runtime_env(tmp_path, pins, ship_code=True)
    assert env["working_dir"] == str(tmp_path)
    assert env["py_modules"] == [str(ROOT / "diffrl")]
    assert "torch==2.13.0" in env["pip"]
    assert env["env_vars"] == {"HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "RAY_USAGE_STATS_ENABLED": "0"}
    assert "py_modules" not in jobs.runtime_env(tmp_path, None, ship_code=False)
    assert "pip" not in jobs.runtime_env(tmp_path, None)


def test_cluster_requirements_match_pyproject_pins():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = jobs.read_requirements(ROOT / "cluster" / "requirements.txt")
    assert sorted(pins) == sorted(pyproject["project"]["dependencies"])
    assert all("==" in pin for pin in pins)


def test_invalid_job_fails_before_contacting_the_cluster(capsys):
    with pytest.raises(ConfigError, match="trainer.steps"):
        jobs.submit_job(TINY_JOB, ["trainer.steps=-1"], "http://127.0.0.1:9")
    assert cli("submit", TINY_JOB, "trainer.steps=-1", "--address", "http://127.0.0.1:9") == 2
    captured = capsys.readouterr()
    assert "trainer.steps" in captured.err and "127.0.0.1:9" not in captured.err and captured.out == ""
    assert cli("submit", TINY_JOB, "--requirements", "missing.txt", "--address", "http://127.0.0.1:9") == 2
    assert "requirements file not found: missing.txt" in capsys.readouterr().err


def test_a_relative_pairs_file_is_warned_about_before_submitting(capsys, monkeypatch):
    """Offline Diffusion-DPO's pairs file and its images are not shipped: a relative path is warned about."""
    monkeypatch.chdir(ROOT)
    job = "configs/shapes_diffusion_dpo_offline.yaml"
    assert cli("submit", job, "output_dir=/shared/runs", "--address", "http://127.0.0.1:9") == 2
    err = capsys.readouterr().err
    assert "warning: learner.diffusion_dpo.pairs 'examples/dpo_pairs/pairs.jsonl' is relative" in err
    absolute = str(ROOT / "examples/dpo_pairs/pairs.jsonl")
    assert cli("submit", job, f"learner.diffusion_dpo.pairs={absolute}", "--address", "http://127.0.0.1:9") == 2
    assert "pairs" not in capsys.readouterr().err


def test_unreachable_dashboard_is_one_line_with_the_address(capsys):
    assert cli("submit", TINY_JOB, "--address", "http://127.0.0.1:9") == 2
    err = capsys.readouterr().err
    assert "output_dir 'runs' is relative" in err  # warned before contacting the cluster
    assert "error: cannot reach the Ray dashboard at http://127.0.0.1:9" in err
    for command in ("status", "logs", "stop"):
        assert cli(command, "some-job", "--address", "http://127.0.0.1:9") == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: cannot reach the Ray dashboard at http://127.0.0.1:9") and "\n" not in err


# --- one head node ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def head():
    """A default `ray start --head` (auth as the machine decides: token mode when a token exists), loopback only."""
    temp_dir = short_temp_dir()
    node, ports = start_head(temp_dir, ray_env())
    try:
        yield node, ports, f"http://127.0.0.1:{ports['dashboard-port']}"
    finally:
        node.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)
        temp_dir.with_suffix(".head.log").unlink(missing_ok=True)


@pytest.mark.timeout(400)
def test_submit_follow_status_logs(head, tmp_path, capsys):
    node, _, dashboard = head
    out_dir = tmp_path / "runs"
    job_id = jobs.submit_job(TINY_JOB, [*FAST, f"output_dir={out_dir}"], dashboard)
    assert job_id.startswith("diffrl-shapes_awm-")
    logs = io.StringIO()
    status = jobs.follow_logs(dashboard, job_id, logs)
    assert status == "SUCCEEDED", logs.getvalue()[-3000:]
    assert "held-out GenEval-shapes" in logs.getvalue()
    run_dirs = {path.parent for path in out_dir.rglob("final.safetensors")}
    assert len(run_dirs) == 1 and (run_dirs.pop() / "metrics.jsonl").is_file()
    info = jobs.job_info(dashboard, job_id)
    assert info.entrypoint == jobs.ENTRYPOINT and info.runtime_env.get("py_modules")  # the submitter's code ran

    assert cli("status", job_id, "--address", dashboard) == 0
    assert capsys.readouterr().out.startswith(f"{job_id}: SUCCEEDED")
    assert cli("logs", job_id, "--address", dashboard) == 0
    assert "held-out GenEval-shapes" in capsys.readouterr().out
    assert cli("logs", job_id, "--follow", "--address", dashboard) == 0  # an ended job: prints and returns
    assert capsys.readouterr().out.rstrip().endswith(f"{job_id}: SUCCEEDED")
    assert cli("status", "no-such-job", "--address", dashboard) == 2
    assert capsys.readouterr().err.strip() == f"error: no job 'no-such-job' on the Ray cluster at {dashboard}"


@pytest.mark.timeout(300)
def test_stop_ends_a_long_job(head, tmp_path, capsys):
    _, _, dashboard = head
    assert cli("submit", TINY_JOB, *FAST, "trainer.steps=1000", f"output_dir={tmp_path}", "--address", dashboard) == 0
    printed = capsys.readouterr().out.splitlines()
    job_id = printed[0]
    assert f"diffrl stop {job_id} --address {dashboard}" in "\n".join(printed)
    deadline = time.monotonic() + 120
    while jobs.job_status(dashboard, job_id) == "PENDING" and time.monotonic() < deadline:
        time.sleep(0.5)
    status = jobs.job_status(dashboard, job_id)
    assert status == "RUNNING", f"{status}: {jobs.job_logs(dashboard, job_id)[-3000:]}"
    assert cli("stop", job_id, "--address", dashboard) == 0
    assert capsys.readouterr().out.strip() == f"{job_id}: STOPPED"
    assert jobs.job_status(dashboard, job_id) == "STOPPED"


def test_head_listens_on_loopback_only(head):
    node, ports, _ = head
    listening = node.listening()
    assert ("127.0.0.1", ports["dashboard-port"]) in listening
    assert any(port == ports["port"] for _, port in listening)  # the GCS
    assert {ip for ip, _ in listening} <= LOOPBACK, listening


# --- two nodes on one machine --------------------------------------------------------------------------------------

PLACEMENT_SCRIPT = """
import json, sys, time
import ray
from ray.util.state import list_actors
from diffrl.platform.ray_cluster import connect_ray
from diffrl.kinds import load_job
from diffrl.kinds.rl.controller import compute_advantages
from diffrl.kinds.rl.data import prompt_splits, step_requests
from diffrl.kinds.rollouts import generate_and_score
from diffrl.kinds.rl.roles import start_rl_roles as start_roles
from diffrl.platform.worker import split_evenly

job, address, *overrides = sys.argv[1:]
connect_ray(address)
deadline = time.monotonic() + 60
while sum(node["Alive"] for node in ray.nodes()) < 2 and time.monotonic() < deadline:
    time.sleep(0.5)
custom = {node["NodeID"]: sorted(k for k in node["Resources"] if k.startswith("node_"))
          for node in ray.nodes() if node["Alive"]}
roles = start_roles(load_job(job, overrides))
try:
    placed = {}
    for actor in list_actors(address=address, filters=[("state", "=", "ALIVE")]):
        placed.setdefault(actor.class_name, set()).update(custom[actor.node_id])
finally:
    roles.shutdown()
error = None
try:
    start_roles(load_job(job, overrides + ["learner.resources={node_c: 1}", "ray.placement_timeout_s=5"]))
except Exception as err:
    error = f"{type(err).__name__}: {err}"
# Two learner ranks on two nodes (one "slot" each) with broadcast weight sync: they meet through a TCP store on
# rank 0's node, train one step together, and every rollout worker receives the update.
cfg = load_job(job, overrides + ["learner.num_workers=2", "learner.cpus_per_worker=1",
                                 "learner.resources={slot: 1}", "learner.sync_backend=broadcast"])
roles = start_roles(cfg)
try:
    train, _ = prompt_splits(cfg)
    batch = generate_and_score(roles.rollout, roles.rewards, step_requests(train, cfg, 0))
    batch.advantages = compute_advantages(batch, cfg)
    shards = [batch.select(rows) for rows in split_evenly(list(range(len(batch))), 2)]
    roles.learner.scatter_async("update", shards, step=0).results()
    version = roles.sync.sync()
    spread = sorted(custom[a.node_id][0] for a in list_actors(address=address, filters=[("state", "=", "ALIVE")])
                    if a.class_name == "LearnerWorker")
    local_node = roles.roles.single_node
finally:
    roles.shutdown()
print("OUTCOME " + json.dumps({"placed": {k: sorted(v) for k, v in placed.items()}, "error": error,
                               "spread": spread, "version": version, "local_node": local_node}), flush=True)
"""


@pytest.mark.slow  # a two-node cluster on one machine (make test-all)
@pytest.mark.timeout(400)
def test_roles_land_on_the_nodes_their_resources_name(tmp_path):
    temp_dir = short_temp_dir()
    # Both nodes and the driver share a private token; a joining node only sends it under RAY_AUTH_MODE=token.
    env = ray_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    head_node, ports = start_head(temp_dir, env, resources={"node_a": 4, "slot": 1})
    worker = None
    try:
        worker_ports = free_ports(NODE_PORTS)
        worker = RayNode([f"--address=127.0.0.1:{ports['port']}", "--node-ip-address=127.0.0.1", "--num-cpus=8",
                          '--resources={"node_b": 4, "slot": 1}', *[f"--{k}={v}" for k, v in worker_ports.items()]],
                         {**env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"}, tmp_path / "worker.log", join=True)
        address = f"127.0.0.1:{ports['port']}"
        # The driver gets neither switch: connect_ray must keep 127.0.0.1 and turn token auth on by itself.
        driver_env = {k: v for k, v in env.items() if k not in ("RAY_AUTH_MODE", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
        result = subprocess.run(
            [sys.executable, "-c", PLACEMENT_SCRIPT, TINY_JOB, address, *FAST, "learner.resources={node_a: 1}",
             "rollout.resources={node_b: 1}", "reward.resources={node_b: 1}", f"ray.address={address}"],
            env=driver_env, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:] + worker.log_tail()
        # Ray's autoscaler may print to the driver's stdout after the script's own line: find that line.
        outcome = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("OUTCOME "))[8:])
        assert {ip for ip, _ in head_node.listening() | worker.listening()} <= LOOPBACK
    finally:
        for node in (worker, head_node):
            if node is not None:
                node.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)
        temp_dir.with_suffix(".head.log").unlink(missing_ok=True)
    assert outcome["placed"]["LearnerWorker"] == ["node_a"]
    assert outcome["placed"]["RolloutWorker"] == ["node_b"]
    assert outcome["placed"]["RewardWorker"] == ["node_b"]
    error = outcome["error"]
    assert error.startswith("PlacementTimeout: role 'learner' could not be placed"), error
    assert "node_c" in error and "node_a" in error and "node_b" in error and "2 node(s)" in error
    assert outcome["spread"] == ["node_a", "node_b"] and outcome["version"] == 1
    assert outcome["local_node"] is False  # two nodes: rendezvous through a TCP store, not the driver's files


# --- no accidental attach, no token to a stranger, rewards that travel ------------------------------------------------

@pytest.mark.timeout(300)
def test_a_local_run_never_attaches_to_a_stopped_heads_leftover_address():
    """cluster/README's one-machine walk-through (`ray start --head --block`, then Ctrl-C) can leave Ray's address
    file behind; plain ray.init(num_cpus=...) follows it and fails, a run with no address configured must start its
    own cluster instead."""
    base = short_temp_dir()
    try:
        (base / "ray").mkdir()
        port = free_ports(["gcs"])["gcs"]  # nothing listens there any more: the stopped head
        (base / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{port}")
        env = {**ray_env(), "TMPDIR": str(base)}  # Ray's default temp dir is then base/ray
        env.pop("RAY_TMPDIR", None)

        def child(code: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)

        plain = child("import ray\nray.init(num_cpus=2)\n")
        assert plain.returncode != 0 and "num_cpus and num_gpus must not be provided" in plain.stderr
        ours = child("from diffrl.platform.ray_cluster import connect_ray\nimport ray\nconnect_ray(num_cpus=2)\n"
                     "print('cpus', ray.cluster_resources()['CPU'])\nray.shutdown()\n")
        assert ours.returncode == 0, ours.stderr[-2000:]
        assert "cpus 2.0" in ours.stdout
    finally:
        shutil.rmtree(base, ignore_errors=True)


class _Refusing:
    """A dashboard stand-in that answers 401 to everything and records the Authorization headers it got."""

    def __init__(self, host: str) -> None:
        import http.server
        import threading

        seen = self.seen = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                seen.append(self.headers.get("Authorization"))
                self.send_response(401)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.address = f"http://{host}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


TOKEN_PROBE = """
import sys
from diffrl.cluster import jobs
jobs._local_token_header = lambda: {"Authorization": "Bearer local-secret"}
try:
    jobs.connect(sys.argv[1])
except jobs.JobsError as err:
    print(err)
"""


def test_submit_never_sends_the_local_token_to_another_host():
    """A dashboard that answers 401 at an address other than this machine's loopback gets no token unless one was
    given for it (RAY_AUTH_TOKEN); this machine's own gets the local token. Each probe is a fresh process, as
    `diffrl submit` is (a process that joined a token cluster has Ray's token mode switched on for good)."""
    stranger, local = _Refusing("127.0.0.2"), _Refusing("127.0.0.1")  # 127.0.0.2: not an address we were given

    def probe(server: _Refusing, **env: str) -> str:
        clean = {k: v for k, v in ray_env().items() if not k.startswith("RAY_AUTH")}
        return subprocess.run([sys.executable, "-c", TOKEN_PROBE, server.address], env={**clean, **env},
                              capture_output=True, text=True, timeout=120).stdout

    try:
        assert "never sent to another host" in probe(stranger)
        assert stranger.seen and all(header is None for header in stranger.seen)
        probe(local)
        assert local.seen[0] is None and "Bearer local-secret" in local.seen  # asked first without, then with
        stranger.seen.clear()
        probe(stranger, RAY_AUTH_TOKEN="given-for-it")
        assert "Bearer given-for-it" in stranger.seen and "Bearer local-secret" not in stranger.seen
    finally:
        stranger.close()
        local.close()


def test_file_and_local_module_rewards_travel_with_the_job(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    package = tmp_path / "myrewards"
    package.mkdir()
    (package / "__init__.py").write_text("def const(value=1.0):\n    return lambda i, p, m: [value] * len(i)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    rewards = ("reward.rewards=[{name: 'examples/rewards/plain_function.py:redness'}, {name: 'myrewards:const'}, "
               "{name: 'http://127.0.0.1:8700'}, {name: geneval_shapes}]")
    cfg = load_job(ROOT / "configs" / "shapes_awm.yaml", [rewards])
    from diffrl.cluster.shipping import plan_rewards

    shipment = plan_rewards(cfg)
    assert shipment.names == {0: "rewards/plain_function.py:redness"}
    assert shipment.py_modules == [str(package)]
    assert len(shipment.warnings) == 1 and "loopback URL on the cluster" in shipment.warnings[0]
    staging = tmp_path / "staging"
    staging.mkdir()
    job_file = jobs.stage_job(cfg, staging, shipment)
    assert (staging / "rewards" / "plain_function.py").read_text() == (ROOT / "examples/rewards/plain_function.py").read_text()
    monkeypatch.chdir(staging)  # as on the cluster: the staged job resolves its shipped reward
    staged = load_job(job_file)
    assert [s.name for s in staged.reward.rewards][:2] == ["rewards/plain_function.py:redness", "myrewards:const"]
