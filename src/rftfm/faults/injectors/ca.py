"""CA family: the advantage computation is wrong."""

from __future__ import annotations

import torch

from rftfm.faults.injectors.base import Injector


class CreditInjector(Injector):
    def advantages(self, advantages: torch.Tensor, lengths: torch.Tensor, num_generations: int, step: int) -> torch.Tensor:
        if not self.is_active(step):
            return advantages
        p = self.params
        n = advantages.shape[0]
        if self.name == "advantage_sign":
            flip = torch.from_numpy(self.rng.random(n) < p["flip_fraction"])
            return torch.where(flip, -advantages, advantages)
        if self.name == "zero_variance":
            groups = torch.from_numpy(self.rng.random(n // num_generations) < p["zero_fraction"])
            return torch.where(groups.repeat_interleave(num_generations), torch.zeros_like(advantages), advantages)
        if self.name == "advantage_normalization":
            lengths = lengths.to(advantages.dtype).clamp(min=1)
            bias = (lengths / lengths.mean()) ** p["length_power"]
            return advantages * p["scale"] * bias
        raise ValueError(f"CA injector cannot inject {self.name!r}")
