"""RF family: the reward function / verifier is wrong."""

from __future__ import annotations

import zlib

import numpy as np

from rftfm.engine.knobs import set_knob
from rftfm.faults.injectors.base import Injector


class RewardInjector(Injector):
    def configure(self, trainer) -> None:
        if self.name == "reward_scale":  # the pipeline's reward normalisation is off
            set_knob(trainer, "scale_rewards", "none")

    def rewards(self, rewards: np.ndarray, completions: list[str], prompt_ids: list[str], step: int) -> np.ndarray:
        if not self.is_active(step):
            return rewards
        p = self.params
        if self.name == "reward_noise":
            return rewards + self.rng.normal(0.0, p["noise_sd"], size=rewards.shape)
        if self.name == "reward_hacking":
            shortcut = np.array([len(c.strip()) >= p["min_len"] for c in completions])
            accepted = shortcut & (self.rng.random(rewards.shape) < p["accept_prob"])
            return np.where(accepted, 1.0, rewards)
        if self.name == "reward_scale":
            return rewards * p["scale"] + p["offset"]
        if self.name == "reward_inversion":
            inverted = np.array([_in_subset(pid, p["prompt_fraction"]) for pid in prompt_ids])
            return np.where(inverted, 1.0 - rewards, rewards)
        raise ValueError(f"RF injector cannot inject {self.name!r}")


def _in_subset(prompt_id: str, fraction: float) -> bool:
    """A fixed, seed-independent subset of prompts (stable hash)."""
    return (zlib.crc32(prompt_id.encode()) % 10_000) < fraction * 10_000
