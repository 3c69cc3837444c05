"""Submit diffrl jobs to a running Ray cluster through the Ray Jobs API, and follow, query or stop them.

`submit_job` validates the job before it contacts the cluster, then stages a temporary working directory with the
resolved job as `job.yaml` (plus copies of the prompt files it names, under `data/`) and submits
`python -m diffrl.cli run job.yaml` with a runtime env that ships this installation's `diffrl` package
(py_modules: the cluster runs exactly the submitter's code), optional pinned pip requirements, and offline defaults.
Everything else a job names — `model.path`, reward kwargs such as detector paths, `output_dir` — must already be
reachable from the cluster's nodes (shared storage or the image).

The dashboard address is `--address`, else RAY_API_SERVER_ADDRESS, else RAY_ADDRESS when it is an http(s) URL,
else http://127.0.0.1:8265.

Ray 2.60 token authentication, as measured with `ray start --head` on one machine:
- With RAY_AUTH_MODE unset, `ray start --head` turns token authentication on by itself when a token already exists
  on that machine (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token), and leaves it off otherwise; it never
  writes one. Any `ray.init()` that starts a local cluster does write ~/.ray/auth_token, so on most machines that
  have run Ray once, a plain `ray start --head` is token-protected.
- The Jobs SDK only sends the token when RAY_AUTH_MODE=token is set in the client's environment; otherwise a
  protected dashboard answers 401 even on the same machine.
- So with RAY_AUTH_MODE unset this module asks without a token first and, only when the dashboard answers 401,
  again with the local token: a default `ray start --head` needs no extra step, and the token is never sent to a
  dashboard that did not ask for it. RAY_AUTH_MODE=token or disabled is respected as set. For a remote
  protected cluster, put its token in RAY_AUTH_TOKEN (`ray get-auth-token` on the head prints it).
- The job's driver inherits RAY_AUTH_MODE=token from the head's processes, so `diffrl run` inside the job joins
  the cluster with no further setting.
- The entrypoint's `python` is the one on the PATH of the process that ran `ray start`: start the head from the
  environment where diffrl's requirements are installed (an activated venv).
- A loopback-only head on one machine: `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 ray start --head
  --node-ip-address=127.0.0.1 --dashboard-host=127.0.0.1` (without the variable Ray rewrites 127.0.0.1 to the
  machine's routable address).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, TextIO

import diffrl
from diffrl.cluster.shipping import Shipment, plan_rewards, print_warnings
from diffrl.kinds import kind_of, load_job
from diffrl.kinds.rl.pairs import pairs_file
from diffrl.rewards.remote import LOOPBACK
from diffrl.platform.config import ConfigError, dump_job

DEFAULT_DASHBOARD = "http://127.0.0.1:8265"
ENTRYPOINT = "python -m diffrl.cli run job.yaml"
TERMINAL_STATES = ("SUCCEEDED", "FAILED", "STOPPED")


class JobsError(RuntimeError):
    """A cluster-side failure, in one line naming the dashboard address or the job id (CLI exit code 2)."""


def dashboard_address(address: str | None = None) -> str:
    """The Ray dashboard URL to talk to: `address`, RAY_API_SERVER_ADDRESS, an http(s) RAY_ADDRESS, or the local
    default. A RAY_ADDRESS of the form host:port is a GCS address (what a job's driver sees), not a dashboard."""
    if address:
        return address.rstrip("/")
    if os.environ.get("RAY_API_SERVER_ADDRESS"):
        return os.environ["RAY_API_SERVER_ADDRESS"].rstrip("/")
    ray_address = os.environ.get("RAY_ADDRESS", "")
    if ray_address.startswith(("http://", "https://")):
        return ray_address.rstrip("/")
    return DEFAULT_DASHBOARD


def _local_token_header() -> dict[str, str]:
    from ray._raylet import AuthenticationTokenLoader

    return AuthenticationTokenLoader.instance().get_token_for_http_header(ignore_auth_mode=True)


def _host(address: str) -> str:
    import urllib.parse

    return (urllib.parse.urlsplit(address if "://" in address else f"http://{address}").hostname or "").lower()


def _given_token_header() -> dict[str, str] | None:
    """The Authorization header of the token the user named (RAY_AUTH_TOKEN, else the file RAY_AUTH_TOKEN_PATH),
    read here rather than by Ray's loader, which falls back to ~/.ray when the named file is unreadable."""
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if not token and os.environ.get("RAY_AUTH_TOKEN_PATH"):
        try:
            token = Path(os.environ["RAY_AUTH_TOKEN_PATH"]).expanduser().read_text().strip()
        except OSError as err:
            raise JobsError(f"RAY_AUTH_TOKEN_PATH: cannot read {os.environ['RAY_AUTH_TOKEN_PATH']} ({err.strerror})") from None
    return {"Authorization": f"Bearer {token}"} if token else None


def connect(address: str) -> Any:
    """A JobSubmissionClient for `address`. A token is sent only when the dashboard asks for one (401), and then
    only a token meant for it: the user's RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH, or this machine's own token when the
    dashboard is on this machine (loopback). A remote dashboard never gets the local ~/.ray token."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        try:
            return JobSubmissionClient(address)
        except AuthenticationError:
            if os.environ.get("RAY_AUTH_MODE") is not None:
                raise
            header = _given_token_header()
            if header is None:
                if _host(address) not in LOOPBACK:
                    raise
                header = _local_token_header()
            if not header:
                raise
            return JobSubmissionClient(address, headers=header)
    except AuthenticationError as err:
        reason = str(err).splitlines()[0]
        fix = ("unset RAY_AUTH_MODE=disabled here, or set it to token" if os.environ.get("RAY_AUTH_MODE") == "disabled"
               else "set RAY_AUTH_TOKEN to the cluster's token (`ray get-auth-token` on the head prints it); this "
                    "machine's own token is never sent to another host")
        raise JobsError(f"the Ray dashboard at {address} refused the request ({reason}); {fix}") from None
    except (ConnectionError, OSError, ValueError) as err:
        raise JobsError(f"cannot reach the Ray dashboard at {address} ({type(err).__name__}); is the cluster up "
                        f"and the address right? (--address http://HEAD:8265 or RAY_API_SERVER_ADDRESS)") from None


def _on_job(address: str, job_id: str, call: Callable[[Any], Any]) -> Any:
    """Run `call(client)` for one job, turning the SDK's errors into one line naming the job and the address."""
    client = connect(address)
    try:
        return call(client)
    except RuntimeError as err:
        message = str(err)
        if "404" in message or "does not exist" in message:
            raise JobsError(f"no job '{job_id}' on the Ray cluster at {address}") from None
        raise JobsError(f"the Ray dashboard at {address} failed on job '{job_id}': "
                        f"{message.splitlines()[0] if message else type(err).__name__}") from None


def portable_job(cfg: Any, data_dir: str) -> tuple[str, dict[str, Path]]:
    """The resolved job as YAML, ready to run elsewhere: the input files its kind names (`JobKind.files`, e.g. the
    RL prompt files data.train_file -> `data_dir/train.jsonl`) renamed under `data_dir`, and `ray.address` cleared
    (inside a Ray job RAY_ADDRESS names the cluster). Returns the YAML and {new file name: the local file to copy
    there}."""
    copies: dict[str, Path] = {}
    portable = _with_value(cfg, "ray.address", None)
    for key, value in kind_of(cfg).files(cfg).items():
        if value and Path(value).is_file():
            name = key.rpartition(".")[2].removesuffix("_file") + Path(value).suffix
            copies[name] = Path(value)
            portable = _with_value(portable, key, f"{data_dir.rstrip('/')}/{name}")
    return dump_job(portable), copies


def _with_value(section: Any, dotted: str, value: Any) -> Any:
    """A copy of a config with the value at `dotted` replaced. model_copy skips validation: a renamed file exists
    only where the job will run."""
    head, _, rest = dotted.partition(".")
    new = _with_value(getattr(section, head), rest, value) if rest else value
    return section.model_copy(update={head: new})


def _with_reward_names(cfg: Any, names: dict[int, str]) -> Any:
    if not names:
        return cfg
    rewards = [spec.model_copy(update={"name": names[i]}) if i in names else spec
               for i, spec in enumerate(cfg.reward.rewards)]
    return cfg.model_copy(update={"reward": cfg.reward.model_copy(update={"rewards": rewards})})


def stage_job(cfg: Any, staging: Path, shipment: Shipment | None = None) -> Path:
    """Write `job.yaml`, the prompt files it names (under data/) and its file rewards (under rewards/, renamed in the
    job) into `staging`; returns the job file."""
    shipment = shipment or plan_rewards(cfg)
    for name, source in shipment.files.items():
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, staging / name)
    text, copies = portable_job(_with_reward_names(cfg, shipment.names), "data")
    for name, source in copies.items():
        (staging / "data").mkdir(exist_ok=True)
        shutil.copyfile(source, staging / "data" / name)
    job_file = staging / "job.yaml"
    job_file.write_text(text)
    return job_file


def read_requirements(path: str | Path) -> list[str]:
    """The requirement lines of a pip requirements file (comments and blank lines dropped)."""
    path = Path(path)
    if not path.is_file():
        raise JobsError(f"requirements file not found: {path}")
    lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line]


def runtime_env(staging: Path, pip: list[str] | None = None, ship_code: bool = True) -> dict[str, Any]:
    """The job's Ray runtime env: the staged working dir, this diffrl package (ship_code), pinned pip lines."""
    env: dict[str, Any] = {
        "working_dir": str(staging),
        "excludes": ["__pycache__/", "*.pyc"],
        "env_vars": {"HF_HUB_OFFLINE": "1", "WANDB_MODE": os.environ.get("WANDB_MODE", "offline"),
                     "RAY_USAGE_STATS_ENABLED": "0"},
    }
    if ship_code:
        env["py_modules"] = [str(Path(diffrl.__file__).parent)]
    if pip:
        env["pip"] = list(pip)
    return env


def default_submission_id(name: str) -> str:
    return f"diffrl-{name}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"


def submit_job(job_path: str | Path, overrides: list[str], address: str | None, *,
               requirements: str | Path | None = None, ship_code: bool = True,
               submission_id: str | None = None) -> str:
    """Validate the job, stage it and submit it to the cluster at `address`; returns the submission id.

    Raises ConfigError for an invalid job (before any contact with the cluster) and JobsError for cluster-side
    failures."""
    cfg = load_job(job_path, overrides, local=False)  # the weights are on the cluster's storage
    for notice in cfg.notices:
        print(f"note: {notice}", file=sys.stderr)
    pip = read_requirements(requirements) if requirements else None
    if not Path(cfg.output_dir).is_absolute():
        print(f"warning: output_dir '{cfg.output_dir}' is relative: the run's outputs land in the job's temporary "
              f"working directory on the head node and are lost with it; set output_dir to shared storage "
              f"(e.g. output_dir=/shared/runs)", file=sys.stderr)
    pairs = pairs_file(cfg)
    if pairs is not None and not Path(pairs).is_absolute():
        print(f"warning: learner.diffusion_dpo.pairs '{pairs}' is relative: the pairs file and its images are not "
              f"shipped with the job; give an absolute path on storage the cluster's head node reads", file=sys.stderr)
    shipment = plan_rewards(cfg, pip)
    print_warnings(shipment)
    address = dashboard_address(address)
    submission_id = submission_id or default_submission_id(cfg.name)
    with tempfile.TemporaryDirectory(prefix="diffrl-submit-") as staging:
        stage_job(cfg, Path(staging), shipment)
        env = runtime_env(Path(staging), pip, ship_code)
        if shipment.py_modules:  # local reward modules (pkg.module:factory from this machine's working tree)
            env["py_modules"] = env.get("py_modules", []) + shipment.py_modules
        # The working dir and py_modules are uploaded during submit_job, so the staging dir may go afterwards.
        return _on_job(address, submission_id, lambda client: client.submit_job(
            entrypoint=ENTRYPOINT, runtime_env=env, submission_id=submission_id, metadata={"diffrl_job": cfg.name}))


def job_info(address: str | None, job_id: str) -> Any:
    """The job's JobDetails (status, message, times, runtime env)."""
    address = dashboard_address(address)
    return _on_job(address, job_id, lambda client: client.get_job_info(job_id))


def job_status(address: str | None, job_id: str) -> str:
    """The job's status: PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED."""
    return str(job_info(address, job_id).status.value)


def _wait_terminal(address: str, job_id: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    status = job_status(address, job_id)
    while status not in TERMINAL_STATES and time.monotonic() < deadline:
        time.sleep(0.5)
        status = job_status(address, job_id)
    return status


def follow_logs(address: str | None, job_id: str, out: TextIO) -> str:
    """Stream the job's logs to `out` until it ends; returns the final status."""
    address = dashboard_address(address)
    job_info(address, job_id)  # an unknown job id fails here, in one line

    async def tail(client: Any) -> None:
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    _on_job(address, job_id, lambda client: asyncio.run(tail(client)))
    # The log stream closes when the driver exits; the status turns terminal a moment later.
    return _wait_terminal(address, job_id, timeout_s=60)


def job_logs(address: str | None, job_id: str) -> str:
    """The job's logs so far."""
    address = dashboard_address(address)
    return _on_job(address, job_id, lambda client: client.get_job_logs(job_id))


def stop_job(address: str | None, job_id: str, timeout_s: float = 60) -> str:
    """Ask the job to stop and wait (up to `timeout_s`) until it has; returns its status then."""
    address = dashboard_address(address)
    _on_job(address, job_id, lambda client: client.stop_job(job_id))
    return _wait_terminal(address, job_id, timeout_s)


def _follow_up(job_id: str, address: str) -> str:
    flag = f" --address {address}"
    return (f"{job_id}\n"
            f"  follow: diffrl logs {job_id} --follow{flag}\n"
            f"  status: diffrl status {job_id}{flag}\n"
            f"  stop:   diffrl stop {job_id}{flag}")


def _reports_errors(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn ConfigError/JobsError into `error: ...` on stderr and exit code 2."""
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except (ConfigError, JobsError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    return run


@_reports_errors
def cmd_submit(args: argparse.Namespace) -> int:
    address = dashboard_address(args.address)
    job_id = submit_job(args.job, args.overrides, address, requirements=args.requirements,
                        ship_code=not args.no_ship_code)
    print(_follow_up(job_id, address), flush=True)
    if not args.follow:
        return 0
    status = follow_logs(address, job_id, sys.stdout)
    print(f"{job_id}: {status}")
    return 0 if status == "SUCCEEDED" else 1


@_reports_errors
def cmd_status(args: argparse.Namespace) -> int:
    info = job_info(args.address, args.job_id)
    print(f"{args.job_id}: {info.status.value}" + (f" ({info.message})" if info.message else ""))
    return 0


@_reports_errors
def cmd_logs(args: argparse.Namespace) -> int:
    if not args.follow:
        print(job_logs(args.address, args.job_id), end="")
        return 0
    status = follow_logs(args.address, args.job_id, sys.stdout)
    print(f"{args.job_id}: {status}")
    return 0 if status == "SUCCEEDED" else 1


@_reports_errors
def cmd_stop(args: argparse.Namespace) -> int:
    status = stop_job(args.address, args.job_id)
    print(f"{args.job_id}: {status}")
    return 0 if status in TERMINAL_STATES else 1


def add_job_commands(sub: argparse._SubParsersAction) -> None:
    """Register `submit`, `status`, `logs` and `stop` on the `diffrl` command's subparsers."""
    address_help = f"Ray dashboard URL (default: RAY_ADDRESS when it is http(s)://..., else {DEFAULT_DASHBOARD})"

    submit = sub.add_parser("submit", help="submit a job file to a running Ray cluster (Ray Jobs API)")
    submit.add_argument("job", help="YAML job file, validated before anything is sent")
    submit.add_argument("overrides", nargs="*", help="dotted overrides such as trainer.steps=20")
    submit.add_argument("--address", default=None, help=address_help)
    submit.add_argument("--requirements", default=None,
                        help="pinned pip requirements installed into the job's runtime env "
                             "(e.g. cluster/requirements.txt)")
    submit.add_argument("--no-ship-code", action="store_true",
                        help="use the diffrl installed on the cluster instead of shipping this one")
    submit.add_argument("--follow", action="store_true", help="stream the logs until the job ends")
    submit.set_defaults(func=cmd_submit)

    for name, handler, text in (("status", cmd_status, "show a submitted job's status"),
                                ("logs", cmd_logs, "print a submitted job's logs"),
                                ("stop", cmd_stop, "stop a submitted job and wait until it has stopped")):
        parser = sub.add_parser(name, help=text)
        parser.add_argument("job_id", help="the id `diffrl submit` printed")
        parser.add_argument("--address", default=None, help=address_help)
        if name == "logs":
            parser.add_argument("--follow", action="store_true", help="stream until the job ends")
        parser.set_defaults(func=handler)

