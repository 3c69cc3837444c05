"""The `diffrl` command line: run, resume and validate jobs; submit and follow cluster jobs; render cluster
templates; rebuild reports; pretrain the built-in model; serve rewards."""

from __future__ import annotations

import argparse
import os
import sys


def cmd_run(args: argparse.Namespace) -> int:
    from diffrl.kinds import kind_of, load_job
    from diffrl.platform.checkpoint import CheckpointError
    from diffrl.platform.config import ConfigError

    overrides = list(args.overrides)
    if args.address:
        overrides.append(f"ray.address={args.address}")
    try:
        cfg = load_job(args.job, overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for notice in cfg.notices:
        print(f"note: {notice}", file=sys.stderr)
    if args.check:
        print(f"{args.job}: valid {cfg.kind} job")
        return 0
    from diffrl.platform.runs import RunFinished
    from diffrl.platform.runtime import run_job

    try:
        run_job(kind_of(cfg), cfg, resume=args.resume)
    except RunFinished as done:
        print(f"diffrl: {done}")
        return 0
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("diffrl: interrupted; `diffrl run --resume` continues from the newest checkpoint", file=sys.stderr)
        return 130
    except Exception as err:
        return report_failure(err)
    return 0


def report_failure(err: BaseException) -> int:
    """A failure after start as one line naming the role, rank and cause (exit 1); DIFFRL_DEBUG=1 re-raises it for
    the full traceback."""
    from diffrl.platform.calls import describe_failure

    if os.environ.get("DIFFRL_DEBUG"):
        raise err
    print(f"error: {describe_failure(err)}\n(set DIFFRL_DEBUG=1 for the traceback)", file=sys.stderr)
    return 1


# `diffrl pretrain-shapes`: configs/pretrain_shapes.yaml, embedded (the recipe is PretrainJobConfig's defaults).
PRETRAIN_SHAPES = {"kind": "pretrain", "name": "pretrain_shapes", "learner": {"cpus_per_worker": 2},
                   "eval": {"cpus_per_worker": 2}, "trainer": {"checkpoint_every": 500}}


def cmd_pretrain(args: argparse.Namespace) -> int:
    """The pretrain kind with the shipped recipe; --out copies the trained model directory there."""
    import shutil
    from pathlib import Path

    from diffrl.kinds import parse_job, run_job
    from diffrl.platform.config import ConfigError, apply_overrides

    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and not args.force:
        print(f"error: {out} exists; pass --force to replace it", file=sys.stderr)
        return 2
    overrides = [*args.overrides, f"seed={args.seed}"] + ([f"trainer.steps={args.steps}"] if args.steps else [])
    try:
        cfg = parse_job(apply_overrides(PRETRAIN_SHAPES, overrides), source="diffrl pretrain-shapes")
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        summary = run_job(cfg)
    except Exception as err:
        return report_failure(err)
    if out is not None:
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(summary["model"], out)
        print(f"pretrain-shapes: model copied to {out}")
    return 0


def cmd_serve_reward(args: argparse.Namespace) -> int:
    """The reward service on Ray Serve (cluster/reward_serve.py); Ctrl-C stops it."""
    import json
    import signal
    import threading

    from diffrl.cluster.reward_service import Limits
    from diffrl.rewards.base import RewardError, check_reward
    from diffrl.rewards.remote import read_token_file

    try:
        kwargs = json.loads(args.kwargs)
        if not isinstance(kwargs, dict):
            raise ValueError("--kwargs must be a JSON object")
        check_reward(args.reward, kwargs)
        # The token never comes from argv (visible to every user through `ps`): a file or the environment.
        token = read_token_file(args.token_file) if args.token_file else os.environ.get("DIFFRL_REWARD_TOKEN")
        limits = Limits(max_body_bytes=int(args.max_body_mb * (1 << 20)), max_images=args.max_images,
                        max_pixels=args.max_pixels, max_concurrent=args.max_concurrent, max_queued=args.max_queued,
                        body_timeout_s=args.body_timeout_s, request_timeout_s=args.request_timeout_s,
                        idle_timeout_s=args.idle_timeout_s, header_timeout_s=args.header_timeout_s,
                        max_connections=args.max_connections,
                        max_connections_per_client=args.max_connections_per_client)
        from diffrl.cluster.reward_serve import start_service, stop_service

        url = start_service(args.reward, kwargs, host=args.host, port=args.port, token=token, replicas=args.replicas,
                            cpus_per_replica=args.cpus_per_replica, gpus_per_replica=args.gpus_per_replica,
                            limits=limits)
    except (RewardError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"serving reward '{args.reward}' on {url} (POST /score, GET /health; {args.replicas} replica(s)"
          f"{', token required' if token else ''}); Ctrl-C stops", flush=True)

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)  # `kill` stops the service and its local Ray cluster too
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        stop_service()
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from diffrl.kinds.export import export_run
    from diffrl.platform.config import ConfigError

    try:
        out = export_run(args.run, args.format, args.out, force=args.force)
    except (ConfigError, FileNotFoundError, KeyError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"export: wrote {out} ({args.format})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffrl", description="RL post-training for diffusion and flow models")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a job file (overrides: key.path=value)")
    run.add_argument("job", help="YAML job file, e.g. configs/shapes_awm.yaml")
    run.add_argument("overrides", nargs="*", help="dotted overrides such as trainer.steps=20")
    run.add_argument("--check", action="store_true", help="validate the job and exit")
    run.add_argument("--resume", action="store_true",
                     help="continue runs/NAME from its newest complete checkpoint (see also resume: auto)")
    run.add_argument("--address", default=None,
                     help="join this Ray cluster (host:port, or set RAY_ADDRESS); default: start a local one on "
                          "127.0.0.1")
    run.set_defaults(func=cmd_run)

    pre = sub.add_parser("pretrain-shapes", help="pretrain the built-in tiny model on the shapes world (an alias of "
                                                 "diffrl run configs/pretrain_shapes.yaml)")
    pre.add_argument("overrides", nargs="*", help="dotted overrides such as learner.num_workers=2")
    pre.add_argument("--out", default=None, help="also copy the trained model directory here")
    pre.add_argument("--force", action="store_true", help="replace --out if it exists")
    pre.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the shipped recipe's 5000)")
    pre.add_argument("--seed", type=int, default=0)
    pre.set_defaults(func=cmd_pretrain)

    serve = sub.add_parser("serve-reward", help="serve a reward over HTTP on Ray Serve (JSON schema in "
                                                 "diffrl/rewards/remote.py, limits in diffrl/cluster/reward_service.py)")
    serve.add_argument("reward", help="registered name, pkg.module:factory or path/file.py:factory")
    serve.add_argument("--port", type=int, default=8700)
    serve.add_argument("--host", default="127.0.0.1", help="other addresses need a shared token")
    serve.add_argument("--token-file", default=None, help="file holding the shared token (else DIFFRL_REWARD_TOKEN); "
                                                          "never on the command line, where `ps` shows it")
    serve.add_argument("--kwargs", default="{}", help="JSON object of factory arguments")
    serve.add_argument("--replicas", type=int, default=1, help="Serve replicas of the reward")
    serve.add_argument("--cpus-per-replica", type=float, default=1.0)
    serve.add_argument("--gpus-per-replica", type=float, default=0.0, help="fractional GPUs allowed")
    from diffrl.cluster.reward_service import Limits

    defaults = Limits()
    serve.add_argument("--max-body-mb", type=float, default=defaults.max_body_bytes / (1 << 20),
                       help="largest request body (refused from its Content-Length)")
    serve.add_argument("--max-images", type=int, default=defaults.max_images, help="images per request")
    serve.add_argument("--max-pixels", type=int, default=defaults.max_pixels, help="pixels per request, summed")
    serve.add_argument("--max-concurrent", type=int, default=defaults.max_concurrent, help="requests in flight per "
                                                                                          "replica")
    serve.add_argument("--max-queued", type=int, default=defaults.max_queued, help="requests waiting (503 beyond)")
    serve.add_argument("--body-timeout-s", type=float, default=defaults.body_timeout_s)
    serve.add_argument("--request-timeout-s", type=float, default=defaults.request_timeout_s)
    serve.add_argument("--idle-timeout-s", type=float, default=defaults.idle_timeout_s,
                       help="a connection must start a request within this (after opening or an answer)")
    serve.add_argument("--header-timeout-s", type=float, default=defaults.header_timeout_s,
                       help="a request's headers must be complete within this (408)")
    serve.add_argument("--max-connections", type=int, default=defaults.max_connections,
                       help="open at once in all (503 beyond)")
    serve.add_argument("--max-connections-per-client", type=int, default=defaults.max_connections_per_client,
                       help="open at once from one client address (503 beyond)")
    serve.set_defaults(func=cmd_serve_reward)

    export = sub.add_parser("export", help="write a finished run's model as a diffusers pipeline folder or a LoRA file")
    export.add_argument("run", help="the run directory, e.g. runs/NAME")
    export.add_argument("out", help="output directory")
    export.add_argument("--format", choices=["diffusers", "lora"], default="diffusers",
                        help="diffusers: the full pipeline (LoRA merged); lora: pipe.load_lora_weights(OUT) loads it")
    export.add_argument("--force", action="store_true", help="replace OUT if it exists")
    export.set_defaults(func=cmd_export)

    from diffrl.cluster.jobs import add_job_commands
    from diffrl.cluster.templates import add_template_command
    from diffrl.platform.report_html import add_report_command

    add_job_commands(sub)
    add_template_command(sub)
    add_report_command(sub)
    return parser


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line as `diffrl` reads it: overrides after an option (`diffrl run job.yaml --check
    trainer.steps=2`) are still overrides; anything else unknown exits 2 naming it."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and isinstance(getattr(args, "overrides", None), list) and all(
            "=" in item and not item.startswith("-") for item in extra):
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = parse(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
