"""Every plug-in route loads and scores; the HTTP reward server keeps its contract (token, schema, errors)."""

import sys
import urllib.request

import numpy as np
import pytest

from diffrl.rewards.base import RewardError, build_reward, known_rewards
from diffrl.rewards.remote import RemoteReward, decode_images, encode_images, serve_reward

IMAGES = np.random.default_rng(0).integers(0, 256, size=(3, 8, 8, 3), dtype=np.uint8)
PROMPTS = ["a", "b", "c"]
META = [{}, {}, {}]
EXAMPLE = "examples/rewards/brightness.py:brightness"


def expected(target=0.3):
    return (-abs(IMAGES.mean(axis=(1, 2, 3)) / 255.0 - target)).tolist()


def test_import_path_and_file_routes(monkeypatch):
    monkeypatch.syspath_prepend("examples/rewards")
    by_import = build_reward("brightness:brightness", target=0.3)
    by_file = build_reward(EXAMPLE, target=0.3)
    assert by_import(IMAGES, PROMPTS, META).scores == pytest.approx(expected())
    assert by_file(IMAGES, PROMPTS, META).scores == pytest.approx(expected())


def test_entry_point_route(tmp_path, monkeypatch):
    # An installed distribution that registers a reward in the `diffrl.rewards` entry-point group.
    package = tmp_path / "plugin_pkg"
    package.mkdir()
    (package / "__init__.py").write_text(
        "from diffrl.rewards.base import RewardOutput\n"
        "def factory(value=0.7):\n"
        "    return lambda images, prompts, metadata: RewardOutput(scores=[value] * len(images))\n")
    dist = tmp_path / "plugin_pkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: plugin-pkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[diffrl.rewards]\nplugin_reward = plugin_pkg:factory\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "plugin_reward" in known_rewards()
    assert build_reward("plugin_reward", value=0.25)(IMAGES, PROMPTS, META).scores == [0.25] * 3


@pytest.mark.parametrize("fmt", ["raw", "png"])
def test_wire_format_round_trips(fmt):
    assert np.array_equal(decode_images(encode_images(IMAGES, fmt)), IMAGES)


def test_url_route_scores_like_the_local_reward():
    server = serve_reward(build_reward(EXAMPLE, target=0.3), "brightness")
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        remote = build_reward(url)
        assert isinstance(remote, RemoteReward)
        out = remote(IMAGES, PROMPTS, META)
        assert out.scores == pytest.approx(expected()) and len(out.details["mean_brightness"]) == 3
        with urllib.request.urlopen(f"{url}/health", timeout=5) as reply:
            assert b'"ready": true' in reply.read()
    finally:
        server.shutdown()


def test_server_requires_the_token_when_configured():
    server = serve_reward(build_reward(EXAMPLE), "brightness", token="s3cret")
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with pytest.raises(RewardError, match="answered 401"):
            RemoteReward(url)(IMAGES, PROMPTS, META)
        with pytest.raises(RewardError, match="answered 401"):
            RemoteReward(url, token="wrong")(IMAGES, PROMPTS, META)
        assert len(RemoteReward(url, token="s3cret")(IMAGES, PROMPTS, META).scores) == 3
    finally:
        server.shutdown()


def test_server_refuses_other_interfaces_without_a_token_and_reports_reward_errors():
    with pytest.raises(ValueError, match="refusing to listen on 0.0.0.0 without a shared token"):
        serve_reward(build_reward(EXAMPLE), "brightness", host="0.0.0.0")

    def broken(images, prompts, metadata):
        raise RuntimeError("model not loaded")

    server = serve_reward(broken, "broken")
    try:
        with pytest.raises(RewardError, match="answered 500.*reward 'broken' failed: RuntimeError: model not loaded"):
            RemoteReward(f"http://127.0.0.1:{server.server_address[1]}")(IMAGES, PROMPTS, META)
    finally:
        server.shutdown()


def test_unreachable_server_is_a_named_error():
    with pytest.raises(RewardError, match=r"reward server http://127.0.0.1:9 unreachable"):
        RemoteReward("http://127.0.0.1:9", timeout_s=2)(IMAGES, PROMPTS, META)


def test_serve_reward_cli_serves_over_loopback(tmp_path):
    import socket
    import subprocess
    import time

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "diffrl.cli", "serve-reward", EXAMPLE, "--port",
                                str(port), "--kwargs", '{"target": 0.3}'], stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert f"http://127.0.0.1:{port}" in line
        deadline = time.time() + 30
        while True:
            try:
                out = RemoteReward(f"http://127.0.0.1:{port}", timeout_s=5)(IMAGES, PROMPTS, META)
                break
            except RewardError:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        assert out.scores == pytest.approx(expected())
    finally:
        process.terminate()
        process.wait(timeout=10)
    bad = subprocess.run([sys.executable, "-m", "diffrl.cli", "serve-reward", EXAMPLE, "--host", "0.0.0.0"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "without a shared token" in bad.stderr


def test_serve_reward_reads_its_token_from_a_file_never_argv(tmp_path):
    import socket
    import subprocess
    import time

    from diffrl.cli import build_parser

    assert "--token" not in build_parser()._subparsers._group_actions[0].choices["serve-reward"]._option_string_actions
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in __import__("os").environ.items() if k != "DIFFRL_REWARD_TOKEN"}
    process = subprocess.Popen([sys.executable, "-m", "diffrl.cli", "serve-reward", EXAMPLE, "--port", str(port),
                                "--token-file", str(token)], stdout=subprocess.PIPE, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        assert "token required" in process.stdout.readline()
        deadline = time.time() + 30
        while True:
            try:
                out = RemoteReward(url, token_file=str(token), timeout_s=5)(IMAGES, PROMPTS, META)
                break
            except RewardError:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        assert len(out.scores) == 3
        with pytest.raises(RewardError, match="401"):
            RemoteReward(url, timeout_s=5)(IMAGES, PROMPTS, META)
    finally:
        process.terminate()
        process.wait(timeout=10)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    bad = subprocess.run([sys.executable, "-m", "diffrl.cli", "serve-reward", EXAMPLE, "--token-file", str(empty)],
                         capture_output=True, text=True, timeout=60, env=env)
    assert bad.returncode == 2 and f"token file {empty} is empty" in bad.stderr
