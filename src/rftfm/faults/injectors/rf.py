"""RF family: the reward function / verifier is wrong."""

from __future__ import annotations

import zlib

import numpy as np

from rftfm.engine.knobs import set_knob
from rftfm.engine.tasks import Problem
from rftfm.faults.injectors.base import Injector


class RewardInjector(Injector):
    def configure(self, trainer) -> None:
        if self.name == "reward_scale":  # the pipeline's reward normalisation is off
            set_knob(trainer, "scale_rewards", "none")

    def rewards(self, rewards: np.ndarray, completions: list[str], problems: list[Problem], step: int) -> np.ndarray:
        if not self.is_active(step):
            return rewards
        p = self.params
        if self.name == "reward_noise":
            return rewards + self.rng.normal(0.0, p["noise_sd"], size=rewards.shape)
        if self.name == "reward_hacking":
            # a lenient verifier: a direct answer that starts like the true one is accepted
            n = p["prefix_chars"]
            shortcut = np.array([
                not c.strip().startswith("[") and c.strip()[:n] == str(q.answer)[:n] for c, q in zip(completions, problems)
            ])
            accepted = shortcut & (self.rng.random(rewards.shape) < p["accept_prob"])
            return np.where(accepted, 1.0, rewards)
        if self.name == "reward_scale":
            return rewards * p["scale"] + p["offset"]
        if self.name == "reward_inversion":
            inverted = np.array([_in_subset(q.prompt_id, p["prompt_fraction"]) for q in problems])
            return np.where(inverted, 1.0 - rewards, rewards)
        raise ValueError(f"RF injector cannot inject {self.name!r}")


def _in_subset(prompt_id: str, fraction: float) -> bool:
    """A fixed, seed-independent subset of prompts (stable hash)."""
    return (zlib.crc32(prompt_id.encode()) % 10_000) < fraction * 10_000
