"""Every plug-in route loads and scores; the wire format round-trips (the service itself: test_reward_service.py)."""


import json

import numpy as np
import pytest

from diffrl.rewards.base import RewardError, build_reward, known_rewards
from diffrl.cluster.reward_service import Limits, parse_request
from diffrl.rewards.remote import RemoteReward, encode_images

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
    body = json.dumps({"images": encode_images(IMAGES, fmt), "prompts": PROMPTS, "metadata": META}).encode()
    images, prompts, metadata = parse_request(body, Limits())  # what the reward service decodes
    assert np.array_equal(images, IMAGES) and prompts == PROMPTS and metadata == META


def test_unreachable_server_is_a_named_error():
    with pytest.raises(RewardError, match=r"reward server http://127.0.0.1:9 unreachable"):
        RemoteReward("http://127.0.0.1:9", timeout_s=2)(IMAGES, PROMPTS, META)
