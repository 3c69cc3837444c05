"""Serving a reward over HTTP and calling a served reward: the wire format, the server and the client.

Request (POST /score, JSON):
    {"images": {"format": "raw", "shape": [N, H, W, 3], "data": "<base64 of uint8 bytes, C order>"}
               or {"format": "png", "data": ["<base64 PNG>", ...]},
     "prompts": ["...", ...], "metadata": [{...}, ...]}
Response 200: {"scores": [float, ...], "details": {"name": [...], ...}}
Errors: 400 (malformed request), 401 (missing or wrong token), 500 (the reward raised), each {"error": "..."}.
GET /health -> {"ready": true, "reward": NAME}.

The server binds 127.0.0.1 unless told otherwise and refuses to bind any other address without a shared token;
with a token every request needs the header `Authorization: Bearer TOKEN`. Nothing is unpickled: JSON and PNG only.
"""

from __future__ import annotations

import base64
import hmac
import io
import json
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Sequence

import numpy as np

from diffrl.rewards.base import RewardError, RewardOutput, validate_reward_output

LOOPBACK = ("127.0.0.1", "localhost", "::1")
MAX_BODY = 1 << 30


def encode_images(images: np.ndarray, fmt: str = "raw") -> dict:
    images = np.ascontiguousarray(images, dtype=np.uint8)
    if fmt == "raw":
        return {"format": "raw", "shape": list(images.shape), "data": base64.b64encode(images.tobytes()).decode()}
    if fmt == "png":
        from PIL import Image

        encoded = []
        for image in images:
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="PNG")
            encoded.append(base64.b64encode(buffer.getvalue()).decode())
        return {"format": "png", "data": encoded}
    raise ValueError(f"image format must be raw or png, got {fmt!r}")


def decode_images(payload: dict) -> np.ndarray:
    fmt = payload.get("format")
    if fmt == "raw":
        shape = tuple(int(d) for d in payload["shape"])
        if len(shape) != 4 or shape[-1] != 3:
            raise ValueError(f"raw images must have shape [N, H, W, 3], got {list(shape)}")
        data = base64.b64decode(payload["data"], validate=True)
        if len(data) != int(np.prod(shape)):
            raise ValueError(f"raw image data has {len(data)} bytes, shape {list(shape)} needs {int(np.prod(shape))}")
        return np.frombuffer(data, dtype=np.uint8).reshape(shape)
    if fmt == "png":
        from PIL import Image

        images = [np.asarray(Image.open(io.BytesIO(base64.b64decode(item, validate=True))).convert("RGB"))
                  for item in payload["data"]]
        if not images:
            return np.zeros((0, 1, 1, 3), dtype=np.uint8)
        return np.stack(images)
    raise ValueError(f"images.format must be raw or png, got {fmt!r}")


def serve_reward(reward: Callable, name: str, host: str = "127.0.0.1", port: int = 0,
                 token: str | None = None) -> ThreadingHTTPServer:
    """Start serving `reward` on a background thread; returns the server (server.server_address has the port).

    Scoring is serialized with a lock (rewards need not be thread-safe); requests are parsed concurrently.
    """
    if host not in LOOPBACK and not token:
        raise ValueError(f"serve-reward: refusing to listen on {host} without a shared token (DIFFRL_REWARD_TOKEN or "
                         "--token-file); "
                         "only 127.0.0.1 may be served without one")
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # quiet: one line per request would flood training logs
            return

        def _reply(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _authorized(self) -> bool:
            if not token:
                return True
            given = self.headers.get("Authorization", "")
            return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())

        def do_GET(self) -> None:  # noqa: N802
            if not self._authorized():
                return self._reply(401, {"error": "missing or wrong token"})
            if self.path != "/health":
                return self._reply(404, {"error": f"unknown path {self.path}"})
            self._reply(200, {"ready": True, "reward": name})

        def do_POST(self) -> None:  # noqa: N802
            if not self._authorized():
                return self._reply(401, {"error": "missing or wrong token"})
            if self.path != "/score":
                return self._reply(404, {"error": f"unknown path {self.path}"})
            length = int(self.headers.get("Content-Length", 0))
            if not 0 < length <= MAX_BODY:
                return self._reply(400, {"error": f"body of {length} bytes"})
            try:
                request = json.loads(self.rfile.read(length))
                images = decode_images(request["images"])
                prompts = [str(p) for p in request["prompts"]]
                metadata = list(request.get("metadata") or [{} for _ in prompts])
                if not len(images) == len(prompts) == len(metadata):
                    raise ValueError(f"{len(images)} images, {len(prompts)} prompts, {len(metadata)} metadata")
            except (KeyError, ValueError, TypeError) as err:
                return self._reply(400, {"error": f"malformed request: {type(err).__name__}: {err}"})
            try:
                with lock:
                    output = validate_reward_output(name, reward(images, prompts, metadata), len(prompts))
            except Exception as err:  # noqa: BLE001 - reported to the client, which fails loudly
                return self._reply(500, {"error": f"reward '{name}' failed: {type(err).__name__}: {err}"})
            self._reply(200, {"scores": output.scores, "details": _jsonable(output.details)})

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True, name=f"reward-server-{name}").start()
    return server


def read_token_file(path: str) -> str:
    """A shared token from a file (first line, stripped); errors name the file, never the token."""
    from pathlib import Path

    file = Path(path).expanduser()
    if not file.is_file():
        raise RewardError(f"token file not found: {file}")
    token = file.read_text().strip().splitlines()[0].strip() if file.read_text().strip() else ""
    if not token:
        raise RewardError(f"token file {file} is empty")
    return token


def _jsonable(details: dict) -> dict:
    return {k: [v.item() if isinstance(v, np.generic) else v for v in values] for k, values in details.items()}


class RemoteReward:
    """A reward served over HTTP (by `diffrl serve-reward` or anything speaking the same JSON). The token comes from
    `token` (Python callers), the file `token_file`, or DIFFRL_REWARD_TOKEN; job files never hold it (they are
    copied into run directories and shipped with cluster jobs)."""

    def __init__(self, url: str, token: str | None = None, timeout_s: float = 60.0, image_format: str = "raw",
                 token_file: str | None = None) -> None:
        import os

        self.url = url.rstrip("/")
        self.token = token or (read_token_file(token_file) if token_file else os.environ.get("DIFFRL_REWARD_TOKEN"))
        self.timeout_s = timeout_s
        self.image_format = image_format

    def __call__(self, images: np.ndarray, prompts: Sequence[str], metadata: Sequence[dict]) -> RewardOutput:
        body = json.dumps({"images": encode_images(images, self.image_format), "prompts": list(prompts),
                           "metadata": list(metadata)}).encode()
        request = urllib.request.Request(f"{self.url}/score", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                reply = json.loads(response.read())
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace")[:500]
            raise RewardError(f"reward server {self.url} answered {err.code}: {detail}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as err:
            raise RewardError(f"reward server {self.url} unreachable: {err}") from None
        return RewardOutput(scores=reply["scores"], details=reply.get("details", {}))
