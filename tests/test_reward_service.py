"""The reward service on a real Ray Serve deployment: the JSON contract (scores like the local reward, token,
errors), and every limit a hostile client meets — refused before anything is allocated, answered with a 4xx
naming the problem, and the service still up afterwards."""

import base64
import io
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffrl.cluster.reward_service import Limits, RequestError, parse_request
from diffrl.rewards.base import RewardError, build_reward
from diffrl.rewards.remote import RemoteReward, encode_images

EXAMPLE = "examples/rewards/brightness.py:brightness"
SLOW = f"{Path(__file__).parent / 'reward_fixtures.py'}:slow_checksum"
IMAGES = np.random.default_rng(0).integers(0, 256, size=(3, 8, 8, 3), dtype=np.uint8)
PROMPTS, META = ["a", "b", "c"], [{}, {}, {}]
LIMITS = Limits(max_body_bytes=1 << 20, max_images=8, max_pixels=8 * 64 * 64, body_timeout_s=2.0, idle_timeout_s=2.0,
                header_timeout_s=2.0, max_header_bytes=4096, max_connections=12,
                max_connections_per_client=6)


def free_port() -> int:
    """A port free now, below Linux's ephemeral range (32768+: Ray's and the OS's own picks) and in a block of its
    own for each xdist worker, so that another test process cannot be handed it before this test binds it."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    block = 20000 + 1000 * (int(worker[2:]) % 12 if worker[2:].isdigit() else 0)
    for port in random.Random().sample(range(block, block + 1000), 1000):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {block}-{block + 999}")


def png(width: int, height: int) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 10, 10)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def bomb(width: int, height: int) -> str:
    """A PNG whose header declares width x height RGB pixels, with a few bytes of data: a decompression bomb's
    shape without building one (a real 20000 x 20000 PNG would take 1.2 GB here)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    return base64.b64encode(data).decode()


# ---------------------------------------------------------------------------------- request rules (no server)
def test_oversized_and_bomb_images_are_refused_before_decoding():
    with pytest.raises(RequestError, match="100 images of 8x8 exceed the limits") as raw:
        parse_request(json.dumps({"images": {"format": "raw", "shape": [100, 8, 8, 3], "data": ""},
                                  "prompts": []}).encode(), LIMITS)
    assert raw.value.status == 413
    with pytest.raises(RequestError, match=r"images.data\[0\].* exceeds the limit") as caught:  # 400 M pixels, 100 B
        parse_request(json.dumps({"images": {"format": "png", "data": [bomb(20000, 20000)]},
                                  "prompts": ["x"]}).encode(), LIMITS)
    assert caught.value.status == 413
    with pytest.raises(RequestError, match=r"\(200x200\) exceeds the limit of 32768 pixels") as caught:
        parse_request(json.dumps({"images": {"format": "png", "data": [bomb(200, 200)]}, "prompts": ["x"]}).encode(),
                      LIMITS)
    assert caught.value.status == 413
    ok = parse_request(json.dumps({"images": {"format": "png", "data": [png(16, 16)] * 2},
                                   "prompts": ["x", "y"]}).encode(), LIMITS)
    assert ok[0].shape == (2, 16, 16, 3)


@pytest.mark.parametrize("body, expected", [
    (b"not json", "body is not JSON"),
    (b"[]", "body must be a JSON object"),
    (json.dumps({"images": {"format": "gif"}, "prompts": []}).encode(), "images.format must be raw or png"),
    (json.dumps({"images": {"format": "raw", "shape": [1, 2, 2, 3], "data": "!!"}, "prompts": ["x"]}).encode(),
     "images.data is not base64"),
    (json.dumps({"images": {"format": "raw", "shape": [1, 2, 2, 3], "data": "AAAA"}, "prompts": ["x"]}).encode(),
     "raw image data has 3 bytes"),
    (json.dumps({"images": {"format": "png", "data": ["AAAA"]}, "prompts": ["x"]}).encode(), "is not an image"),
    (json.dumps({"images": encode_images(IMAGES), "prompts": [1, 2, 3]}).encode(), "prompts must be a list of str"),
    (json.dumps({"images": encode_images(IMAGES), "prompts": ["a"]}).encode(), "3 images, 1 prompts"),
])
def test_malformed_requests_are_400_with_a_reason(body, expected):
    with pytest.raises(RequestError, match=expected) as caught:
        parse_request(body, LIMITS)
    assert caught.value.status == 400


# ------------------------------------------------------------------------------------ a real Serve deployment
@pytest.fixture(scope="module")
def service(tmp_path_factory):
    from diffrl.cluster.reward_serve import start_service, stop_service

    port = free_port()
    token = "s3cret-for-the-test"
    urls = {
        "plain": start_service(EXAMPLE, {"target": 0.3}, port=port, replicas=2, cpus_per_replica=0.5, limits=LIMITS,
                               route_prefix="/plain", num_cpus=6),
        "token": start_service(EXAMPLE, {}, port=port, token=token, cpus_per_replica=0.5, limits=LIMITS,
                               route_prefix="/token"),
        "broken": start_service(f"{Path(__file__).parent / 'reward_fixtures.py'}:raising", {}, port=port,
                                cpus_per_replica=0.5, limits=LIMITS, route_prefix="/broken"),
        "single": start_service(SLOW, {"delay": 2.0}, port=port, cpus_per_replica=0.5,
                                limits=Limits(max_concurrent=1, max_queued=1), route_prefix="/single"),
    }
    yield urls, token, port
    stop_service()


def post(url: str, body: bytes, headers: dict | None = None) -> tuple[int, str]:
    request = urllib.request.Request(f"{url}/score", data=body, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_scores_like_the_local_reward_across_replicas(service):
    urls, _, _ = service
    local = build_reward(EXAMPLE, target=0.3)(IMAGES, PROMPTS, META)
    for _ in range(4):
        out = build_reward(urls["plain"])(IMAGES, PROMPTS, META)
        assert out.scores == pytest.approx(local.scores) and out.details["mean_brightness"] == pytest.approx(
            local.details["mean_brightness"])
    with urllib.request.urlopen(f"{urls['plain']}/health", timeout=5) as reply:
        assert json.loads(reply.read()) == {"ready": True, "reward": EXAMPLE}


def test_the_token_is_required_and_a_reward_error_is_a_named_500(service):
    urls, token, _ = service
    with pytest.raises(RewardError, match="answered 401"):
        RemoteReward(urls["token"])(IMAGES, PROMPTS, META)
    with pytest.raises(RewardError, match="answered 401"):
        RemoteReward(urls["token"], token="wrong")(IMAGES, PROMPTS, META)
    assert len(RemoteReward(urls["token"], token=token)(IMAGES, PROMPTS, META).scores) == 3
    with pytest.raises(RewardError, match="answered 500.*reward '.*:raising' failed: RuntimeError: model not loaded"):
        RemoteReward(urls["broken"])(IMAGES, PROMPTS, META)


def test_body_limits_are_enforced_from_the_declared_length_and_while_reading(service):
    urls, _, port = service
    status, reason = post(urls["plain"], b"x" * (2 << 20))
    assert status == 413 and "exceeds the limit of 1048576" in reason
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:  # declares 10 bytes, sends 100
        raw.sendall(b"POST /plain/score HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n" + b"y" * 100)
        assert raw.recv(300).startswith(b"HTTP/1.1 400")  # nothing past the declared length is read as the body
    status, reason = post(urls["plain"], json.dumps({"images": {"format": "png", "data": [bomb(20000, 20000)]},
                                                     "prompts": ["x"]}).encode())
    assert status == 413 and "exceeds the limit" in reason
    status, reason = post(urls["plain"], b"{not json")
    assert status == 400 and "body is not JSON" in reason


def test_a_slow_body_is_cut_off_and_the_service_stays_up(service):
    urls, _, port = service
    with socket.create_connection(("127.0.0.1", port), timeout=30) as slow:
        slow.sendall(b"POST /plain/score HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"{")
        tick = time.monotonic()
        answer = b""
        while b"did not arrive" not in answer and (chunk := slow.recv(300)):
            answer += chunk  # headers and body may arrive in separate segments
        text = answer.decode(errors="replace")
        assert text.split("\r\n")[0].endswith("408 Request Timeout") and "did not arrive within 2 s" in text
        assert time.monotonic() - tick < 15
    assert len(RemoteReward(urls["plain"])(IMAGES, PROMPTS, META).scores) == 3  # still up


def read_all(connection: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    answer = b""
    while chunk := connection.recv(4096):
        answer += chunk
    return answer


def test_connections_that_send_nothing_or_trickle_headers_are_closed(service):
    """Uvicorn alone would hold these forever; the front door closes an idle connection after idle_timeout_s, with
    or without an earlier answer, and answers headers that do not complete within header_timeout_s with a 408."""
    urls, _, port = service
    tick = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as idle:
        assert read_all(idle) == b"" and 1.5 < time.monotonic() - tick < 10  # closed without a request
    with socket.create_connection(("127.0.0.1", port), timeout=30) as kept:
        kept.sendall(b"GET /plain/health HTTP/1.1\r\nHost: x\r\n\r\n")
        tick = time.monotonic()
        answer = read_all(kept)
        assert answer.startswith(b"HTTP/1.1 200") and b'"ready":true' in answer
        assert 1.5 < time.monotonic() - tick < 10  # the kept-alive connection is closed once idle
    with socket.create_connection(("127.0.0.1", port), timeout=30) as slow:
        tick = time.monotonic()
        for byte in b"POST /plain/score HTTP/1.1\r\nHost: x\r\n":  # one byte every 0.1 s: never complete
            try:
                slow.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.1)
        answer = read_all(slow).decode()
        assert answer.startswith("HTTP/1.1 408") and "headers did not arrive within 2 s" in answer
        assert time.monotonic() - tick < 10
    with socket.create_connection(("127.0.0.1", port), timeout=30) as big:
        big.sendall(b"GET /plain/health HTTP/1.1\r\nX-Filler: " + b"a" * 8000)
        assert read_all(big).decode().startswith("HTTP/1.1 431")
    assert len(RemoteReward(urls["plain"])(IMAGES, PROMPTS, META).scores) == 3  # still up


def test_the_front_door_answers_502_when_the_service_is_down_and_names_a_busy_port():
    from diffrl.cluster.front_door import FrontDoor

    door = FrontDoor("127.0.0.1", free_port(), ("127.0.0.1", free_port()), LIMITS).start()  # nothing upstream
    try:
        with socket.create_connection(("127.0.0.1", door.port), timeout=30) as client:
            answer = read_all(client).decode()
        assert answer.startswith("HTTP/1.1 502") and "the reward service is unreachable" in answer
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{door.port}"):
            FrontDoor("127.0.0.1", door.port, ("127.0.0.1", 1), LIMITS).start()
    finally:
        door.stop()


def connect_from(source: str, port: int) -> socket.socket:
    """A connection from another loopback address (all of 127/8 is this machine): another client, as the front door
    sees it."""
    return socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))


def test_connections_beyond_the_limit_are_a_503(service):
    urls, _, port = service
    held = [connect_from(f"127.0.0.{2 + i // 6}", port) for i in range(12)]  # two clients at their share each
    time.sleep(0.3)
    try:
        with connect_from("127.0.0.9", port) as extra:
            answer = read_all(extra).decode()
            assert answer.startswith("HTTP/1.1 503") and "12 connections are open" in answer
    finally:
        for connection in held:
            connection.close()
    time.sleep(0.3)
    assert len(RemoteReward(urls["plain"])(IMAGES, PROMPTS, META).scores) == 3  # freed again


def test_a_client_holding_its_idle_connections_does_not_lock_others_out(service):
    """One client opens its limit of idle connections (and keeps them, as a renewing client would): its next one is
    refused, naming the per-client limit, while another client's request is served."""
    urls, _, port = service
    held = [connect_from("127.0.0.2", port) for _ in range(6)]
    time.sleep(0.3)
    try:
        with connect_from("127.0.0.2", port) as extra:
            answer = read_all(extra).decode()
        assert answer.startswith("HTTP/1.1 503") and "client 127.0.0.2 has 6 connections open" in answer
        assert len(RemoteReward(urls["plain"])(IMAGES, PROMPTS, META).scores) == 3  # another client (127.0.0.1)
    finally:
        for connection in held:
            connection.close()


def test_concurrency_beyond_the_limit_is_a_503(service):
    urls, _, _ = service
    body = json.dumps({"images": encode_images(IMAGES), "prompts": PROMPTS, "metadata": META}).encode()
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(post(urls["single"], body)[0])) for _ in range(4)]
    for thread in threads:
        thread.start()
        time.sleep(0.3)
    for thread in threads:
        thread.join()
    assert results.count(200) >= 2 and 503 in results, results  # one running, one queued, the rest refused
    assert post(urls["single"], body)[0] == 200  # the service stays up


def test_the_cli_refuses_other_interfaces_without_a_token_and_never_reads_argv_tokens(tmp_path):
    from diffrl.cli import build_parser

    parser = build_parser()
    assert "--token" not in parser._subparsers._group_actions[0].choices["serve-reward"]._option_string_actions
    env = {k: v for k, v in __import__("os").environ.items() if k != "DIFFRL_REWARD_TOKEN"}
    bad = subprocess.run([sys.executable, "-m", "diffrl.cli", "serve-reward", EXAMPLE, "--host", "0.0.0.0"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert bad.returncode == 2 and "without a shared token" in bad.stderr
    empty = tmp_path / "empty"
    empty.write_text("\n")
    bad = subprocess.run([sys.executable, "-m", "diffrl.cli", "serve-reward", EXAMPLE, "--token-file", str(empty)],
                         capture_output=True, text=True, timeout=120, env=env)
    assert bad.returncode == 2 and f"token file {empty} is empty" in bad.stderr


def test_the_cli_serves_with_a_token_file_and_stops_on_sigterm(tmp_path):
    """`diffrl serve-reward` as a user runs it: the token from a file, scores like the local reward, and `kill`
    (SIGTERM) stops the service and the Ray cluster it started."""
    import signal

    token = tmp_path / "token"
    token.write_text("from-a-file\n")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DIFFRL_REWARD_TOKEN", "RAY_ADDRESS")}
    process = subprocess.Popen([sys.executable, "-m", "diffrl.cli", "serve-reward", EXAMPLE, "--port", str(port),
                                "--token-file", str(token), "--kwargs", '{"target": 0.3}', "--cpus-per-replica", "0.5"],
                               stdout=subprocess.PIPE, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        assert "token required" in process.stdout.readline()
        out = RemoteReward(url, token_file=str(token), timeout_s=30)(IMAGES, PROMPTS, META)
        assert out.scores == pytest.approx(build_reward(EXAMPLE, target=0.3)(IMAGES, PROMPTS, META).scores)
        with pytest.raises(RewardError, match="answered 401"):
            RemoteReward(url, timeout_s=30)(IMAGES, PROMPTS, META)
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=90) == 0
    with pytest.raises(RewardError, match="unreachable"):
        RemoteReward(url, timeout_s=5)(IMAGES, PROMPTS, META)
