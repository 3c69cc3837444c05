"""The reward service: any diffrl reward served by Ray Serve (replicas across CPUs and GPUs) behind a FastAPI
ingress, with the JSON schema of `diffrl.rewards.remote` (POST /score, GET /health), so `RemoteReward` is its client.

Every limit bounds what one client can make the service allocate or hold, and each is configurable (`Limits`):
- the body size, refused from the declared Content-Length before anything is read (411 without one, 413 above
  the limit), and counted again while reading (a client that sends more than it declared gets 413);
- images and pixels per request, checked from the raw shape or each PNG's header before any pixel is decoded
  (a decompression bomb is a 413, not an allocation);
- concurrent requests: `max_concurrent` per replica in flight, `max_queued` waiting (503 beyond);
- connections (`front_door`, in front of Serve's proxy): at most `max_connections_per_client` open from one client
  address and `max_connections` in all (503 beyond); a request
  must start within `idle_timeout_s` of the connection's opening or of the last answer (else it is closed), and its
  headers must be complete within `header_timeout_s` (408) and fit in `max_header_bytes` (431);
- slow clients: a body must arrive within `body_timeout_s` (408), and a request must finish within
  `request_timeout_s` (Serve's HTTP proxy option).
A malformed request gets a 4xx naming the problem and the service stays up; a reward that raises is a 500 naming it.
The service binds 127.0.0.1 unless told otherwise and refuses any other address without a shared token; the token
is compared in constant time and never taken from the command line.
"""

from __future__ import annotations

import base64
import hmac
import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np



@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 64 << 20
    max_images: int = 256
    max_pixels: int = 256 * 1024 * 1024  # summed over the request's images
    max_concurrent: int = 8
    max_queued: int = 64
    body_timeout_s: float = 30.0
    request_timeout_s: float = 300.0
    idle_timeout_s: float = 30.0
    header_timeout_s: float = 10.0
    max_header_bytes: int = 32 << 10
    max_connections: int = 4096
    max_connections_per_client: int = 64


class RequestError(ValueError):
    """A request the service refuses: `status` is the HTTP code, the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _b64(data: Any, what: str) -> bytes:
    if not isinstance(data, str):
        raise RequestError(400, f"{what} must be a base64 string")
    try:
        return base64.b64decode(data, validate=True)
    except ValueError as err:
        raise RequestError(400, f"{what} is not base64: {err}") from None


def decode_bounded(payload: Any, limits: Limits) -> np.ndarray:
    """The request's images as uint8 [N, H, W, 3], refusing more than `limits` allows before decoding pixels."""
    if not isinstance(payload, dict):
        raise RequestError(400, "images must be an object with format and data")
    fmt = payload.get("format")
    if fmt == "raw":
        shape = payload.get("shape")
        if not (isinstance(shape, list) and len(shape) == 4 and all(isinstance(d, int) and d >= 0 for d in shape)
                and shape[-1] == 3):
            raise RequestError(400, f"raw images need shape [N, H, W, 3] of non-negative ints, got {shape!r}")
        n, h, w, _ = shape
        if n > limits.max_images or n * h * w > limits.max_pixels:
            raise RequestError(413, f"{n} images of {h}x{w} exceed the limits ({limits.max_images} images, "
                                    f"{limits.max_pixels} pixels per request)")
        data = _b64(payload.get("data"), "images.data")
        if len(data) != n * h * w * 3:
            raise RequestError(400, f"raw image data has {len(data)} bytes, shape {shape} needs {n * h * w * 3}")
        return np.frombuffer(data, dtype=np.uint8).reshape(shape)
    if fmt == "png":
        from PIL import Image

        items = payload.get("data")
        if not isinstance(items, list):
            raise RequestError(400, "png images need data: a list of base64 PNGs")
        if len(items) > limits.max_images:
            raise RequestError(413, f"{len(items)} images exceed the limit of {limits.max_images} per request")
        budget, images = limits.max_pixels, []
        for index, item in enumerate(items):
            try:
                image = Image.open(io.BytesIO(_b64(item, f"images.data[{index}]")))  # reads the header only
            except RequestError:
                raise
            except Image.DecompressionBombError as err:  # PIL's own bound, above ours for most settings
                raise RequestError(413, f"images.data[{index}] exceeds the limit of {limits.max_pixels} pixels per "
                                        f"request ({err})") from None
            except Exception as err:  # noqa: BLE001 - any undecodable image is the client's error
                raise RequestError(400, f"images.data[{index}] is not an image: {err}") from None
            width, height = image.size
            budget -= width * height
            if budget < 0:
                raise RequestError(413, f"images.data[{index}] ({width}x{height}) exceeds the limit of "
                                        f"{limits.max_pixels} pixels per request")
            try:
                images.append(np.asarray(image.convert("RGB")))
            except Exception as err:  # noqa: BLE001
                raise RequestError(400, f"images.data[{index}] does not decode: {err}") from None
        if not images:
            return np.zeros((0, 1, 1, 3), dtype=np.uint8)
        if len({im.shape for im in images}) > 1:
            raise RequestError(400, "png images must all have the same size")
        return np.stack(images)
    raise RequestError(400, f"images.format must be raw or png, got {fmt!r}")


def parse_request(body: bytes, limits: Limits) -> tuple[np.ndarray, list[str], list[dict]]:
    """(images, prompts, metadata) of a /score body; RequestError (4xx) for anything malformed or too large."""
    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise RequestError(400, f"body is not JSON: {err}") from None
    if not isinstance(request, dict):
        raise RequestError(400, "body must be a JSON object with images, prompts and metadata")
    images = decode_bounded(request.get("images"), limits)
    prompts, metadata = request.get("prompts"), request.get("metadata")
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise RequestError(400, "prompts must be a list of strings")
    metadata = [{} for _ in prompts] if metadata is None else metadata
    if not isinstance(metadata, list) or not all(isinstance(m, dict) for m in metadata):
        raise RequestError(400, "metadata must be a list of objects")
    if not len(images) == len(prompts) == len(metadata):
        raise RequestError(400, f"{len(images)} images, {len(prompts)} prompts, {len(metadata)} metadata")
    return images, prompts, metadata


def authorized(header: str | None, token: str | None) -> bool:
    return token is None or hmac.compare_digest((header or "").encode(), f"Bearer {token}".encode())
