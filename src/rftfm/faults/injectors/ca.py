"""CA family: the advantage computation is wrong."""

from __future__ import annotations

import torch

from rftfm.faults.injectors.base import FaultInjector, injects


@injects("advantage_sign")
class AdvantageSign(FaultInjector):
    def advantages(self, advantages: torch.Tensor, lengths: torch.Tensor, num_generations: int,
                   step: int) -> torch.Tensor:
        if not self.is_active(step):
            return advantages
        flip = torch.from_numpy(self.rng.random(advantages.shape[0]) < self.params["flip_fraction"])
        return torch.where(flip, -advantages, advantages)


@injects("zero_variance")
class ZeroVariance(FaultInjector):
    def advantages(self, advantages: torch.Tensor, lengths: torch.Tensor, num_generations: int,
                   step: int) -> torch.Tensor:
        if not self.is_active(step):
            return advantages
        draws = self.rng.random(advantages.shape[0] // num_generations)
        groups = torch.from_numpy(draws < self.params["zero_fraction"])
        return torch.where(groups.repeat_interleave(num_generations), torch.zeros_like(advantages), advantages)


@injects("advantage_normalization")
class AdvantageNormalization(FaultInjector):
    def advantages(self, advantages: torch.Tensor, lengths: torch.Tensor, num_generations: int,
                   step: int) -> torch.Tensor:
        if not self.is_active(step):
            return advantages
        lengths = lengths.to(advantages.dtype).clamp(min=1)
        bias = (lengths / lengths.mean()) ** self.params["length_power"]
        return advantages * self.params["scale"] * bias
