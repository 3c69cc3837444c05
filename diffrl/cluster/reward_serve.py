"""The Ray Serve deployment of the reward service (see `reward_service` for the limits and the request rules):
`start_service` places `replicas` replicas of one reward, each with its CPUs / GPUs, behind a FastAPI ingress on
Serve's HTTP proxy, which listens on loopback behind the front door (`front_door`) on the public address."""

import asyncio
import logging
import os
from typing import Any

from fastapi import FastAPI, Request  # FastAPI reads the route annotations at run time: no postponed annotations
from fastapi.responses import JSONResponse

from diffrl.cluster.front_door import FrontDoor
from diffrl.cluster.reward_service import Limits, RequestError, authorized, parse_request
from diffrl.rewards.remote import LOOPBACK
from diffrl.utils.net import free_port

_DOORS: "dict[tuple[str, int], FrontDoor]" = {}
_PROXY: "dict[str, int]" = {}  # the loopback port of this process's Serve proxy


def _app(name: str, kwargs: dict, token: "str | None", limits: Limits):
    from ray import serve

    app = FastAPI(title=f"diffrl reward '{name}'")

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @serve.deployment(max_ongoing_requests=limits.max_concurrent, max_queued_requests=limits.max_queued)
    @serve.ingress(app)
    class RewardService:
        def __init__(self) -> None:
            from diffrl.rewards.base import build_reward

            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            self.reward = build_reward(name, **kwargs)
            self.lock = asyncio.Lock()  # rewards need not be thread-safe: one scoring at a time per replica

        @app.get("/health")
        async def health(self, request: Request) -> Any:
            if not authorized(request.headers.get("authorization"), token):
                return error(401, "missing or wrong token")
            return {"ready": True, "reward": name}

        @app.post("/score")
        async def score(self, request: Request) -> Any:
            from diffrl.rewards.base import validate_reward_output
            from diffrl.rewards.remote import jsonable

            if not authorized(request.headers.get("authorization"), token):
                return error(401, "missing or wrong token")
            declared = request.headers.get("content-length")
            if declared is None or not declared.isdigit():
                return error(411, "a Content-Length header is required")
            if int(declared) > limits.max_body_bytes:
                return error(413, f"body of {declared} bytes exceeds the limit of {limits.max_body_bytes}")
            body = bytearray()

            async def read() -> bool:
                async for chunk in request.stream():
                    body.extend(chunk)
                    if len(body) > min(int(declared), limits.max_body_bytes):
                        return False
                return True

            try:
                if not await asyncio.wait_for(read(), limits.body_timeout_s):
                    return error(413, "body is longer than its Content-Length or the limit")
            except asyncio.TimeoutError:
                return error(408, f"the body did not arrive within {limits.body_timeout_s:g} s")
            try:
                images, prompts, metadata = parse_request(bytes(body), limits)
            except RequestError as err:
                return error(err.status, str(err))
            try:
                async with self.lock:
                    raw = await asyncio.get_running_loop().run_in_executor(None, self.reward, images, prompts,
                                                                           metadata)
                output = validate_reward_output(name, raw, len(prompts))
            except Exception as err:  # noqa: BLE001 - reported to the client, which fails loudly
                return error(500, f"reward '{name}' failed: {type(err).__name__}: {err}")
            return {"scores": output.scores, "details": jsonable(output.details)}

    return RewardService


def start_service(name: str, kwargs: "dict | None" = None, host: str = "127.0.0.1", port: int = 8700,
                  token: "str | None" = None, replicas: int = 1, cpus_per_replica: float = 1.0,
                  gpus_per_replica: float = 0.0, limits: Limits = Limits(), num_cpus: "int | None" = None,
                  route_prefix: str = "/") -> str:
    """Serve reward `name` (built with `kwargs` in every replica) on http://host:port (under `route_prefix`: several
    rewards can share one proxy); returns the URL. Starts a local Ray cluster unless one is connected (RAY_ADDRESS
    joins a running one). Refuses a non-loopback host without a token. The proxy's timeouts and the front door's
    limits are set by the first service started from this process."""
    if host not in LOOPBACK and not token:
        raise ValueError(f"serve-reward: refusing to listen on {host} without a shared token (DIFFRL_REWARD_TOKEN or "
                         f"--token-file); only 127.0.0.1 may be served without one")
    from ray import serve

    from diffrl.platform.ray_cluster import connect_ray

    new_proxy = "port" not in _PROXY
    proxy_port = _PROXY["port"] if not new_proxy else free_port("127.0.0.1")
    new_door = (host, port) not in _DOORS
    if new_door:  # before Ray starts or anything is deployed: a public port in use fails here
        _DOORS[host, port] = FrontDoor(host, port, ("127.0.0.1", proxy_port), limits).start()
    try:
        connect_ray(num_cpus=num_cpus or max(2, int(replicas * cpus_per_replica) + 1), num_gpus=None)
        quiet = {"log_level": "INFO" if os.environ.get("DIFFRL_VERBOSE") else "WARNING"}
        logging.getLogger("ray.serve").setLevel(quiet["log_level"])
        if new_proxy:
            serve.start(http_options={"host": "127.0.0.1", "port": proxy_port, "request_timeout_s":
                                      limits.request_timeout_s, "keep_alive_timeout_s": limits.idle_timeout_s},
                        logging_config=quiet)
            _PROXY["port"] = proxy_port  # only once Serve listens there: a retry after a failure starts it again
        deployment = _app(name, dict(kwargs or {}), token, limits).options(
            num_replicas=replicas, ray_actor_options={"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica},
            logging_config=quiet)
        serve.run(deployment.bind(), name=f"reward{route_prefix.replace('/', '-')}", route_prefix=route_prefix,
                  blocking=False)
    except BaseException:
        if new_door:  # nothing listens on host:port for a service that did not start
            _DOORS.pop((host, port)).stop()
        raise
    return f"http://{host}:{port}{route_prefix.rstrip('/')}"


def stop_service() -> None:
    import ray
    from ray import serve

    for door in _DOORS.values():
        door.stop()
    _DOORS.clear()
    _PROXY.clear()
    serve.shutdown()
    ray.shutdown()
