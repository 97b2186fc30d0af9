"""The one registry of training signals: every metric a detector, diagnoser, playbook or baseline
treats specially is declared here once, with how it is compared.

``scale`` says how a signal is compared with itself over time, so that no comparison depends on a
configuration's units:

* ``log`` -- a positive magnitude (KL, grad norm, lengths, reward spread): compared as a ratio,
  on an ``asinh(x / c)`` scale with ``c`` the run's own typical magnitude (log-like for large
  values, linear near 0, so a KL that starts at exactly 0 is still defined);
* ``rate`` -- a fraction in [0, 1] (clip ratio, truncated ratio, zero-variance groups, accuracy):
  compared in absolute units, and its level alone is meaningful across configurations;
* ``linear`` -- a signed level whose unit is the user's (reward, loss): compared only in units of
  the run's own step-to-step noise.

A signal's *absolute level* is read only where it means the same in every configuration
(:func:`has_absolute_level`): fractions, except the clip ratio (zero when each batch gets one
optimiser step, as in TRL's default; a few percent with verl's PPO mini-batches) and fractions
whose healthy level is set by the task's difficulty (``level_by_task``: an accuracy, the share of
groups whose completions all got the same reward -- 90 % of them in a healthy run on a hard task
where nearly every completion fails, as in a sparse-reward tool task or early on hard maths). A
grad norm, a reward or even a KL is judged only against the run itself (1,000 tokens is normal
for a reasoning model and a blow-up for an 8-token answer; a distillation run sits at a KL of
0.5 where a GRPO run on a small model stays below 0.05).

``group`` ties signals that measure one thing (the playbook asks "did only reward-level signals
move?"); ``duplicates`` names the train-step metric a trajectory aggregate repeats (evidence shows
one of each pair). Reward components that TRL logs per reward function (``rewards/<name>/mean``)
are matched by :data:`REWARD_COMPONENT`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Scale = Literal["log", "rate", "linear"]
Source = Literal["step", "trajectory", "derived", "rule"]  # rule: read beside the features by a fitting-free rule
Group = Literal[
    "reward", "accuracy", "kl", "entropy", "optimiser", "advantage", "clip", "length", "sampling", "tool", "config"
]


@dataclass(frozen=True)
class Signal:
    name: str
    label: str  # what a user reads in evidence, e.g. "KL"
    source: Source
    scale: Scale
    group: Group
    feature: bool = True  # False: a knob or hardware echo (learning rate, step time), never evidence of a fault
    duplicates: str | None = None
    noisy: bool = False  # jumpy by nature in healthy runs: a jump is no surprise on its own
    level_by_task: bool = False  # a fraction whose healthy level is set by the task's difficulty
    # a move this way is the run getting better and no registered fault's symptom (a held-out accuracy rising):
    # the detector's surprise channel does not count it
    benign: Literal["up", "down"] | None = None
    # computed through the policy's weights (a loss, a gradient, a divergence or entropy of its logits): not finite
    # once they are (:mod:`rftfm.fm.non_finite`)
    forward_pass: bool = False


def _step(
    name: str,
    label: str,
    scale: Scale,
    group: Group,
    feature: bool = True,
    noisy: bool = False,
    level_by_task: bool = False,
    benign: Literal["up", "down"] | None = None,
    forward_pass: bool = False,
) -> Signal:
    return Signal(
        name, label, "step", scale, group, feature, noisy=noisy, level_by_task=level_by_task, benign=benign,
        forward_pass=forward_pass,
    )


def _traj(name: str, label: str, scale: Scale, group: Group, duplicates: str | None = None) -> Signal:
    return Signal(name, label, "trajectory", scale, group, True, duplicates)


SIGNALS: dict[str, Signal] = {
    s.name: s
    for s in (
        # --- what a framework logs per train step (``records.STEP_METRICS``, same order)
        _step("reward_mean", "train reward", "linear", "reward"),
        _step("reward_std", "reward sd", "log", "reward"),
        _step("eval_accuracy", "eval accuracy", "rate", "accuracy", level_by_task=True, benign="up"),
        _step("kl", "KL", "log", "kl", forward_pass=True),
        _step("entropy", "entropy", "log", "entropy", forward_pass=True),
        # GRPO's loss hovers around 0, either sign
        _step("policy_loss", "policy loss", "linear", "optimiser", noisy=True, forward_pass=True),
        _step("grad_norm", "grad norm", "log", "optimiser", forward_pass=True),
        _step("learning_rate", "learning rate", "log", "config", feature=False),
        _step("clip_ratio_low", "low clip ratio", "rate", "clip", feature=False),  # the region ratio covers both
        _step("clip_ratio_high", "high clip ratio", "rate", "clip", feature=False),
        _step("clip_ratio_region", "clip ratio", "rate", "clip"),
        _step("completion_length_mean", "response length", "log", "length"),
        _step("completion_length_max", "max response length", "log", "length", noisy=True),  # one sample moves it
        _step("truncated_ratio", "truncated ratio", "rate", "length"),
        _step("frac_zero_std_groups", "zero-variance groups", "rate", "advantage", level_by_task=True),
        # what a tool-calling run logs (TRL's ``tools/*``); their healthy levels are set by the task and by how well
        # the policy writes calls (a model still learning the format fails many), so only their changes are evidence
        _step("tool_call_frequency", "tool calls per completion", "rate", "tool", level_by_task=True),
        _step("tool_failure_frequency", "tool failure rate", "rate", "tool", level_by_task=True),
        _step("step_time_s", "step time", "log", "config", feature=False),
        # --- aggregates of one step's trajectories (per-completion records)
        _traj("traj_reward_mean", "trajectory reward", "linear", "reward", duplicates="reward_mean"),
        _traj("traj_reward_std", "trajectory reward sd", "log", "reward", duplicates="reward_std"),
        _traj("traj_length_mean", "trajectory length", "log", "length", duplicates="completion_length_mean"),
        _traj("traj_length_std", "trajectory length sd", "log", "length"),
        _traj("traj_advantage_std", "advantage sd", "log", "advantage"),
        _traj("traj_advantage_absmax", "max |advantage|", "log", "advantage"),
        # group-relative estimators (GRPO, Dr. GRPO, DAPO, BNPO, RLOO) make each group's advantages a positive
        # multiple of its rewards' deviations from the group mean: 0 in every healthy run of any configuration
        _traj("traj_advantage_residual", "advantage not explained by reward", "rate", "advantage"),
        _traj("traj_advantage_zeroed", "groups with zero advantages despite a reward spread", "rate", "advantage"),
        _traj("traj_repetition_mean", "repetition", "rate", "sampling"),
        _traj("traj_unique_mean", "unique-token ratio", "rate", "sampling"),
        _traj("traj_tool_call_rate", "tool calls", "rate", "tool", duplicates="tool_call_frequency"),
        _traj("traj_tool_error_rate", "tool errors", "rate", "tool"),
        _traj("traj_empty_rate", "empty responses", "rate", "length"),
        _traj("traj_short_rate", "short responses", "rate", "length"),
        _traj("traj_long_rate", "long responses", "rate", "length"),
        _traj("traj_truncated_rate", "truncated responses", "rate", "length", duplicates="truncated_ratio"),
        # --- derived by the detectors from the above
        Signal("reward_minus_eval", "train reward minus eval accuracy", "derived", "linear", "reward"),
        Signal("reward_var_excess", "reward variance beyond a 0/1 verifier's", "derived", "linear", "reward"),
        Signal(
            "eval_unchanged_steps", "steps with unchanged eval accuracy", "derived", "linear", "accuracy", noisy=True
        ),
        # --- read beside the features by a fitting-free rule, never a feature (:mod:`rftfm.fm.unscored`,
        # :mod:`rftfm.fm.repeat_rewards`, :mod:`rftfm.fm.advantage_signs`)
        Signal("unscored_share", "completions no reward function scored", "rule", "rate", "reward", feature=False),
        Signal(
            "repeat_reward_disagreements", "identical completions scored differently", "rule", "linear", "reward",
            feature=False,
        ),
        Signal(
            "advantage_flipped_share", "advantages opposite in sign to their reward's deviation", "rule", "rate",
            "advantage", feature=False,
        ),
    )
}

#: ``rewards/<function name>/mean`` (TRL >= 0.15) or ``rewards/<function name>`` (older TRL): one reward function.
REWARD_COMPONENT = re.compile(r"^rewards/(?P<name>[^/]+?)(?:/mean)?$")


def signal(name: str) -> Signal:
    """The registered signal ``name`` (``KeyError`` naming the known ones otherwise)."""
    try:
        return SIGNALS[name]
    except KeyError:
        raise KeyError(f"unknown signal {name!r}; register it in rftfm.signals") from None


def scale(name: str) -> Scale:
    """How signal ``name`` is compared over time; an unregistered one (a reward component) is a signed level."""
    return SIGNALS[name].scale if name in SIGNALS else "linear"


def names(
    *,
    source: Source | None = None,
    scale: Scale | None = None,
    group: Group | tuple[Group, ...] | None = None,
    feature: bool | None = None,
) -> tuple[str, ...]:
    """Registered signal names with the given attributes (``group``: one or several), in registry order."""
    groups = (group,) if isinstance(group, str) else group
    return tuple(
        s.name
        for s in SIGNALS.values()
        if (source is None or s.source == source)
        and (scale is None or s.scale == scale)
        and (groups is None or s.group in groups)
        and (feature is None or s.feature == feature)
    )


def label(name: str) -> str:
    """What a user reads for ``name``: the registered label, a reward component's function, or the name."""
    if name in SIGNALS:
        return SIGNALS[name].label
    match = REWARD_COMPONENT.match(name)
    return f"reward '{match.group('name')}'" if match else name


def is_reward_component(name: str) -> bool:
    return REWARD_COMPONENT.match(name) is not None and not name.endswith("/std")


#: The group whose healthy value depends on how many optimiser steps a batch gets: exactly 0 with one (TRL's
#: default, and every run of the benchmark), a few percent with verl's PPO mini-batches or ``num_iterations > 1``.
_PER_BATCH_STEPS_GROUP: Group = "clip"


def has_absolute_level(name: str, task_set: bool = False) -> bool:
    """Whether ``name``'s value, not only its change, is comparable across configurations (``task_set``: also a
    fraction whose healthy level the task's difficulty sets -- evidence of which fault an alarm is, not of one)."""
    return (
        name in SIGNALS
        and SIGNALS[name].scale == "rate"
        and (task_set or not SIGNALS[name].level_by_task)
        and not depends_on_steps_per_batch(name)
    )


def depends_on_steps_per_batch(name: str) -> bool:
    """Whether ``name``'s healthy behaviour depends on optimiser steps per batch (see ``_PER_BATCH_STEPS_GROUP``)."""
    return name in SIGNALS and SIGNALS[name].group == _PER_BATCH_STEPS_GROUP
