"""The advantage invariants of a plain TRL ``GRPOTrainer``, from the per-completion rewards and advantages it keeps.

``GRPOTrainer`` keeps the latest generation batch's rewards (per reward function) and advantages in ``trainer._logs``
for its completion tables. From them :func:`advantage_invariants` computes the two invariants of group-relative
estimators (:func:`rftfm.fm.features.advantage_consistency`): 0 in a healthy run, broken by an advantage bug; and the
share of advantages whose sign disagrees with their reward's (:mod:`rftfm.fm.advantage_signs`), which tells a flip
from a rescaling; and, whatever the estimator, the share of completions no function scored (:mod:`rftfm.fm.unscored`)
and the repeated completions scored differently (:mod:`rftfm.fm.repeat_rewards`). A
log of step metrics gets them without per-trajectory records, so the detector's invariant channel works on a user's
run in tier a.

They are computed only where TRL's own estimator makes them hold: ``multi_objective_aggregation`` is
``"sum_then_normalize"`` (the default), groups are ``num_generations`` consecutive completions, and the rows kept
cannot be an evaluation batch of another group size. Everything else returns ``None`` with the reason, never a
substitute value.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rftfm.fm import repeat_rewards
from rftfm.fm.features import FLIPPED, INVARIANT_FEATURES, advantage_consistency, advantage_flips

RESIDUAL, ZEROED = INVARIANT_FEATURES


def unsupported(trainer: Any) -> str | None:
    """Why the invariants cannot be read from this trainer (None: they can)."""
    logs = getattr(trainer, "_logs", None)
    if not isinstance(logs, dict) or "advantages" not in logs or "rewards" not in logs:
        return "the trainer keeps no per-completion rewards and advantages (not a TRL GRPOTrainer)"
    aggregation = getattr(trainer, "multi_objective_aggregation", "sum_then_normalize")
    if aggregation != "sum_then_normalize":
        return f"multi_objective_aggregation={aggregation!r} normalises each reward function apart"
    size = getattr(trainer, "num_generations", None)
    if not isinstance(size, int) or size < 2:
        return "num_generations is unknown or below 2"
    eval_size = getattr(trainer, "num_generations_eval", None)
    strategy = getattr(getattr(trainer, "args", None), "eval_strategy", "no")
    evaluates = getattr(strategy, "value", strategy) != "no"  # transformers' IntervalStrategy or its string
    if evaluates and eval_size not in (None, size):
        return f"evaluation batches (groups of {eval_size}) share the trainer's completion log with training ({size})"
    return None


def advantage_invariants(trainer: Any) -> dict[str, float | None]:
    """``{traj_advantage_residual, traj_advantage_zeroed, advantage_flipped_share}`` of the trainer's latest generation
    batch (the last: :mod:`rftfm.fm.advantage_signs`; None: not judged -- no group whose rewards spread, or
    :func:`unsupported`)."""
    nothing: dict[str, float | None] = {RESIDUAL: None, ZEROED: None, FLIPPED: None}
    if unsupported(trainer) is not None:
        return nothing
    size = trainer.num_generations
    advantage = np.asarray(list(trainer._logs["advantages"]), dtype=float)
    reward = batch_rewards(trainer)
    n = advantage.size
    if n == 0 or n % size or reward is None or reward.size != n:
        return nothing
    groups = np.arange(n) // size
    residual, zeroed = advantage_consistency(groups, reward, advantage)
    return {RESIDUAL: residual, ZEROED: zeroed, FLIPPED: advantage_flips(groups, reward, advantage)}


def batch_rewards(trainer: Any) -> np.ndarray | None:
    """The reward of each completion of the trainer's latest generation batch as TRL combines its functions' (the
    weighted nansum; NaN where no function scored it); ``None`` where the trainer keeps no per-function rewards of
    equal length, or its weights do not match them."""
    logs = getattr(trainer, "_logs", None)
    rewards = logs.get("rewards") if isinstance(logs, dict) else None
    if not isinstance(rewards, dict) or not rewards:
        return None
    per_function = [np.asarray(list(values), dtype=float) for values in rewards.values()]
    if any(r.size != per_function[0].size for r in per_function):
        return None
    stacked = np.stack(per_function, axis=1)
    weights = getattr(trainer, "reward_weights", None)
    weights = np.ones(stacked.shape[1]) if weights is None else weights
    weights = np.asarray(weights.tolist() if hasattr(weights, "tolist") else weights, dtype=float).reshape(-1)
    if weights.size != stacked.shape[1]:
        return None
    return np.where(np.isnan(stacked).all(axis=1), np.nan, np.nansum(stacked * weights, axis=1))


def repeat_disagreements(trainer: Any) -> float | None:
    """The repeated completions of the trainer's latest generation batch (identical completions of one prompt) whose
    rewards differ (:func:`rftfm.fm.repeat_rewards.disagreements`); ``None`` where none repeats or the trainer keeps
    no prompts, completions and rewards of equal length. Whatever the estimator: it is the verifier's doing."""
    logs = getattr(trainer, "_logs", None)
    if not isinstance(logs, dict) or "prompt" not in logs or "completion" not in logs:
        return None
    reward = batch_rewards(trainer)
    prompts, completions = list(logs["prompt"]), list(logs["completion"])
    if reward is None or not (len(prompts) == len(completions) == reward.size):
        return None
    return repeat_rewards.disagreements(prompts, completions, reward.tolist())


def unscored_share(trainer: Any) -> float | None:
    """The share of the trainer's latest generation batch's completions that no reward function scored (every
    function returned ``None``: NaN in its per-function log; :mod:`rftfm.fm.unscored`); ``None`` where the trainer
    keeps no per-function rewards of equal length. Whatever the estimator: it is the verifier's doing."""
    logs = getattr(trainer, "_logs", None)
    rewards = logs.get("rewards") if isinstance(logs, dict) else None
    if not isinstance(rewards, dict) or not rewards:
        return None
    per_function = [np.asarray(list(values), dtype=float) for values in rewards.values()]
    n = per_function[0].size
    if n == 0 or any(r.size != n for r in per_function):
        return None
    return float(np.isnan(np.stack(per_function, axis=1)).all(axis=1).mean())
