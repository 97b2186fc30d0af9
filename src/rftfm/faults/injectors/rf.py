"""RF family: the reward function / verifier is wrong."""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np

from rftfm.engine.tasks import Problem
from rftfm.faults.injectors.base import FaultInjector, injects
from rftfm.knobs import set_knob


class _RewardFault(FaultInjector):
    """A fault inside the verifier: :meth:`faulty` rewrites its rewards once the fault is active."""

    def rewards(self, rewards: np.ndarray, completions: list[str], problems: list[Problem], step: int) -> np.ndarray:
        return self.faulty(rewards, completions, problems) if self.is_active(step) else rewards

    def faulty(self, rewards: np.ndarray, completions: list[str], problems: list[Problem]) -> np.ndarray:
        raise NotImplementedError


@injects("reward_noise")
class RewardNoise(_RewardFault):
    def faulty(self, rewards: np.ndarray, completions: list[str], problems: list[Problem]) -> np.ndarray:
        return rewards + self.rng.normal(0.0, self.params["noise_sd"], size=rewards.shape)


@injects("reward_hacking")
class RewardHacking(_RewardFault):
    def faulty(self, rewards: np.ndarray, completions: list[str], problems: list[Problem]) -> np.ndarray:
        # a lenient verifier: a direct answer that starts like the true one is accepted
        n = self.params["prefix_chars"]
        shortcut = np.array([
            not c.strip().startswith("[") and c.strip()[:n] == str(q.answer)[:n] for c, q in zip(completions, problems)
        ])
        accepted = shortcut & (self.rng.random(rewards.shape) < self.params["accept_prob"])
        return np.where(accepted, 1.0, rewards)


@injects("reward_scale")
class RewardScale(_RewardFault):
    def configure(self, trainer: Any) -> None:
        set_knob(trainer, "scale_rewards", "none")  # the pipeline's reward normalisation is off

    def faulty(self, rewards: np.ndarray, completions: list[str], problems: list[Problem]) -> np.ndarray:
        return rewards * self.params["scale"] + self.params["offset"]


@injects("reward_inversion")
class RewardInversion(_RewardFault):
    def faulty(self, rewards: np.ndarray, completions: list[str], problems: list[Problem]) -> np.ndarray:
        inverted = np.array([_in_subset(q.prompt_id, self.params["prompt_fraction"]) for q in problems])
        return np.where(inverted, 1.0 - rewards, rewards)


@injects("reward_none")
class RewardNone(_RewardFault):
    """The verifier gives up (a time-out, an unparsable answer it cannot handle) and returns None."""

    def faulty(self, rewards: np.ndarray, completions: list[str], problems: list[Problem]) -> np.ndarray:
        return np.where(self.rng.random(rewards.shape) < self.params["none_fraction"], np.nan, rewards)


def _in_subset(prompt_id: str, fraction: float) -> bool:
    """A fixed, seed-independent subset of prompts (stable hash)."""
    return (zlib.crc32(prompt_id.encode()) % 10_000) < fraction * 10_000
