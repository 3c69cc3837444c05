"""The reward service's wire format and its client (the service itself: diffrl/cluster/reward_serve.py, on Ray Serve).

Request (POST /score, JSON):
    {"images": {"format": "raw", "shape": [N, H, W, 3], "data": "<base64 of uint8 bytes, C order>"}
               or {"format": "png", "data": ["<base64 PNG>", ...]},
     "prompts": ["...", ...], "metadata": [{...}, ...]}
Response 200: {"scores": [float, ...], "details": {"name": [...], ...}}
Errors, each {"error": "..."}: 400 (malformed request), 401 (missing or wrong token), 408 (body too slow),
411 (no Content-Length), 413 (body, images or pixels over the service's limits), 503 (queue full), 500 (the
reward raised). GET /health -> {"ready": true, "reward": NAME}.

The service binds 127.0.0.1 unless told otherwise and refuses to bind any other address without a shared token;
with a token every request needs the header `Authorization: Bearer TOKEN`. Nothing is unpickled: JSON and PNG only.
"""

from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.request
from typing import Sequence

import numpy as np

from diffrl.rewards.base import RewardError, RewardOutput

LOOPBACK = ("127.0.0.1", "localhost", "::1")


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


def jsonable(details: dict) -> dict:
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
