"""The reward served by benchmarks/reward_load.py: mean brightness, echoing each prompt so the client can check that
every response answers its own request (nothing lost, nothing duplicated or crossed)."""

from diffrl.rewards.base import RewardOutput


def echo_brightness():
    def score(images, prompts, metadata):
        return RewardOutput(scores=(images.mean(axis=(1, 2, 3)) / 255.0).tolist(), details={"echo": list(prompts)})

    return score
