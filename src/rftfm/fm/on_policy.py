"""When a run's clip ratio says its rollouts came from another policy: the rule of the detector's on-policy check.

A trainer whose every optimiser step trains on rollouts the current policy just generated -- TRL's GRPOTrainer when
``gradient_accumulation_steps`` is a multiple of ``steps_per_generation * num_iterations``, so it sets the old
log-probabilities to the current ones -- has importance ratios of exactly 1 and a clip ratio of exactly 0 at every
step, whatever its configuration (every healthy benchmark run, and both real TRL logs of ../shared/real-logs). A
clip ratio above 0 in such a run means the ratios left the clip range: the rollouts came from another policy (a
stale or perturbed sampler copy, a rollout / training mismatch). Frameworks whose optimiser takes several steps on
one batch (verl's PPO mini-batches, ``num_iterations > 1``) clip by design, and a run that clips only after many steps
at 0 looks the same in a log, so the rule is used only where the caller knows the run is on-policy
(:meth:`rftfm.fm.detect.Detector.know_on_policy`: the TRL callback checks the trainer's configuration). Fitting-free,
like :mod:`rftfm.fm.invariants`: a rule over one number, no library does it.
"""

from __future__ import annotations

import math

import numpy as np

SIGNAL = "clip_ratio_region"
#: Clip ratio (a fraction of tokens) taken as "above 0": far below one clipped token in a batch of any real size.
LIMIT = 1e-9


def units(clip_ratio: float | None) -> float:
    """A record's clip ratio in units of :data:`LIMIT` (above 1: the rollouts came from another policy), capped."""
    if clip_ratio is None or not math.isfinite(clip_ratio) or clip_ratio <= 0:
        return 0.0
    return min(clip_ratio / LIMIT, 1e6)


def trl_on_policy(trainer: object) -> bool:
    """Whether a TRL GRPOTrainer trains each optimiser step on rollouts of the current policy and takes the old
    log-probabilities to be the current ones (its own test), so that every importance ratio is exactly 1. Not with
    vLLM's importance-sampling correction: TRL then computes the old log-probabilities in a separate forward pass,
    which dropout alone can set apart."""
    try:  # TRL's own configuration (attributes, not metrics)
        args = trainer.args  # type: ignore[attr-defined]
        accumulation, per_generation = args.gradient_accumulation_steps, args.steps_per_generation
        iterations = trainer.num_iterations  # type: ignore[attr-defined]
        separate_pass = bool(getattr(trainer, "use_vllm", False)) and bool(
            getattr(trainer, "vllm_importance_sampling_correction", False)
        )
    except AttributeError:
        return False
    if separate_pass:
        return False
    if not all(isinstance(v, int) and v > 0 for v in (accumulation, per_generation, iterations)):
        return False
    return accumulation % (per_generation * iterations) == 0


def recently_clipped(clip_ratio: np.ndarray, steps: np.ndarray, recent: int = 20) -> bool:
    """Whether any of one run's last ``recent`` present records (``clip_ratio``, ``steps`` (S,)) clipped."""
    present = np.flatnonzero(steps > 0)[-recent:]
    return any(units(float(clip_ratio[i])) > 1.0 for i in present)
