"""RewardWorker: runs the job's rewards on image batches, validates every output and combines them by weight."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from diffrl.rewards.base import RewardError, RewardOutput, build_reward, validate_reward_output


class RewardWorker:
    """Scores images with each configured reward; errors name the reward. Returns the weighted total and details."""

    def __init__(self, reward_specs: Sequence[dict]) -> None:
        self.specs = list(reward_specs)
        self.rewards: dict[str, Any] = {}

    def setup(self) -> None:
        for spec in self.specs:
            self.rewards[spec["name"]] = build_reward(spec["name"], **spec.get("kwargs", {}))

    def score(self, images: np.ndarray, prompts: Sequence[str], metadata: Sequence[dict]) -> RewardOutput:
        total = np.zeros(len(prompts), dtype=np.float64)
        details: dict[str, list] = {}
        for spec in self.specs:
            name = spec["name"]
            try:
                raw = self.rewards[name](images, list(prompts), list(metadata))
            except RewardError:
                raise
            except Exception as err:
                raise RewardError(f"reward '{name}' raised {type(err).__name__}: {err}") from err
            output = validate_reward_output(name, raw, len(prompts))
            total += spec.get("weight", 1.0) * np.asarray(output.scores, dtype=np.float64)
            details[name] = output.scores
            details.update({f"{name}/{key}": values for key, values in output.details.items()})
        return RewardOutput(scores=total.tolist(), details=details)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None

    def health(self) -> dict[str, Any]:
        return {"ready": len(self.rewards) == len(self.specs)}
