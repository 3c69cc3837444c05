"""Rewards used by tests that run in Ray actors (loaded there by file path)."""

import time

from diffrl.rewards.base import RewardOutput


def slow_checksum(delay: float = 1.0):
    """Scores each image by a checksum of its pixels after `delay` seconds (slow enough to be killed mid-batch)."""

    def reward(images, prompts, metadata):
        time.sleep(delay)
        return RewardOutput(scores=[float(int(image.sum()) % 997) for image in images], details={"prompt": list(prompts)})

    return reward


def hang_once(marker: str):
    """Hangs (10 minutes) on the first call of the test, marked by creating `marker`; checksums afterwards."""
    import os

    def reward(images, prompts, metadata):
        if not os.path.exists(marker):
            open(marker, "w").close()
            time.sleep(600)
        return [float(int(image.sum()) % 997) for image in images]

    return reward



def raising():
    """A reward whose every call raises (a model that failed to load)."""

    def reward(images, prompts, metadata):
        raise RuntimeError("model not loaded")

    return reward
