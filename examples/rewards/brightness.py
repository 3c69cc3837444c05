"""A custom reward in a file: use it as `{name: "examples/rewards/brightness.py:brightness", kwargs: {target: 0.3}}`.

A reward is any callable (images uint8 [N, H, W, 3], prompts, metadata) -> RewardOutput with one finite float per
image; `details` are optional per-image lists that diffrl logs as `<reward>/<key>`.
"""

from diffrl.rewards.base import RewardOutput


def brightness(target: float = 0.5):
    def score(images, prompts, metadata):
        mean = images.mean(axis=(1, 2, 3)) / 255.0
        return RewardOutput(scores=(-abs(mean - target)).tolist(), details={"mean_brightness": mean.tolist()})

    return score
