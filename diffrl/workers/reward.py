"""RewardWorker: runs the job's rewards on image batches, validates every output and combines them by weight."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Sequence

import numpy as np

from diffrl.rewards.base import RewardError, RewardOutput, RewardOutputError, build_reward, validate_reward_output
from diffrl.platform.worker import WorkerBase


class RewardTimeout(RewardError):
    """An in-process reward call ran past its timeout_s (it cannot be stopped, so it is not retried)."""


class RewardWorker(WorkerBase):
    """Scores images with each configured reward; errors name the reward. Returns the weighted total and details."""

    def __init__(self, reward_specs: Sequence[dict]) -> None:
        super().__init__()
        self.specs = list(reward_specs)
        self.rewards: dict[str, Any] = {}

    def build(self) -> None:
        for spec in self.specs:
            self.rewards[spec["name"]] = build_reward(spec["name"], **spec.get("kwargs", {}))

    def _attempt(self, spec: dict, images: np.ndarray, prompts: list[str], metadata: list[dict]) -> RewardOutput:
        """One call of the reward, bounded by spec["timeout_s"] (run on its own thread so a hang cannot block)."""
        name, timeout = spec["name"], spec.get("timeout_s")
        if timeout is None:
            raw = self.rewards[name](images, prompts, metadata)
        else:
            pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"reward-{name}")
            try:
                raw = pool.submit(self.rewards[name], images, prompts, metadata).result(timeout=timeout)
            except FutureTimeout:
                # The call cannot be stopped in this process: fail without retrying beside it.
                raise RewardTimeout(f"reward '{name}' gave no answer within timeout_s={timeout:g} s (in-process "
                                  f"workers cannot stop a hung call, so it is not retried; on Ray the replica is "
                                  f"restarted instead)") from None
            finally:
                pool.shutdown(wait=False)
        return validate_reward_output(name, raw, len(prompts))

    def _score_one(self, spec: dict, images: np.ndarray, prompts: list[str], metadata: list[dict]) -> RewardOutput:
        """Call with bounded retries and exponential backoff; then fail naming the reward and the last cause."""
        attempts = spec.get("retries", 0) + 1
        for attempt in range(attempts):
            try:
                return self._attempt(spec, images, prompts, metadata)
            except (RewardOutputError, RewardTimeout):
                raise  # a wrong return type is a bug in the reward, a hung call still runs: no retry beside them
            except Exception as err:  # noqa: BLE001 - every failure is retried, then reported by name
                cause = err
                if attempt + 1 < attempts:
                    time.sleep(spec.get("backoff_s", 0.5) * 2**attempt)
        detail = str(cause).removeprefix(f"reward '{spec['name']}' ")
        raise RewardError(f"reward '{spec['name']}' failed after {attempts} attempt(s): "
                          f"{type(cause).__name__}: {detail}") from cause

    def score(self, images: np.ndarray, prompts: Sequence[str], metadata: Sequence[dict]) -> RewardOutput:
        self.require_ready()
        total = np.zeros(len(prompts), dtype=np.float64)
        details: dict[str, list] = {}
        for spec in self.specs:
            name = spec["name"]
            output = self._score_one(spec, images, list(prompts), list(metadata))
            total += spec.get("weight", 1.0) * np.asarray(output.scores, dtype=np.float64)
            details[name] = output.scores
            details.update({f"{name}/{key}": values for key, values in output.details.items()})
        return RewardOutput(scores=total.tolist(), details=details)
