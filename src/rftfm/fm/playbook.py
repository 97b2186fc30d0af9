"""The remediation playbook, as data: for every fault type an ordered ladder of rungs.

A rung is a set of actions applied together and then revalidated over K steps; when the
anomaly persists the controller climbs to the next rung. Every action goes through what a
real GRPO user has: checkpoint rollback, the trainer knobs of :mod:`rftfm.knobs`,
halting, or a backup verifier / tool the user registered. Types whose fault is code (a
wrong verifier, a broken advantage sign) are not ``knob_repairable`` in the taxonomy; their
ladders end in rollback + halt with the diagnosis as the incident's message.

Knob changes are relative so the same ladder works for any configuration:

* ``op="restore"``: undo drift -- set the knob back to its value at the last healthy
  checkpoint; if it has not drifted (or drifted the wrong way for ``direction``: a
  "healthy" checkpoint taken after a silent onset), apply ``fallback_factor`` / ``fallback_value``.
* ``op="scale"``: multiply the current value by ``factor``.
* ``op="set"``: set ``value``.

Results are clamped to ``bounds`` expressed as multiples of the healthy value
(``rel_bounds``) or as absolute limits (``abs_bounds``).

Sources for the rungs (published RFT / RLHF practice):
  [ckpt]  rollback to the last good checkpoint and lower the LR after loss spikes
          (OPT-175B logbook, Zhang et al. 2022; BLOOM, Le Scao et al. 2022; PaLM, Chowdhery et al. 2022).
  [kl]    KL penalty to the reference keeps the policy from drifting / exploiting a reward
          (Ouyang et al. 2022; Gao et al. 2023 "Scaling laws for reward model overoptimization").
  [temp]  GRPO rollouts at temperature 1.0 (DeepSeekMath, Shao et al. 2024; DAPO, Yu et al. 2025).
  [dapo]  overlong filtering = masking truncated completions; dynamic sampling; token-level
          loss (DAPO, Yu et al. 2025).
  [drgrpo] no std scaling / unbiased token normalisation (Dr. GRPO, Liu et al. 2025).
  [clip]  tighter clip range against off-policy rollouts (PPO, Schulman et al. 2017;
          truncated importance sampling, Yao et al. 2025 "Your efficient RL framework secretly brings you
          off-policy RL").
  [rep]   repetition penalty >= 1 and intact EOS against degenerate loops (Keskar et al. 2019; Holtzman et al. 2020).
  [norm]  reward normalisation / scaling (PPO implementation details, Huang et al. 2022).
  [opsm]  off-policy sequence masking (DeepSeek-V3.2, 2025; TRL's ``off_policy_mask_threshold``).
  [ens]   averaging several reward evaluations against a noisy reward (reward-model ensembles,
          Coste et al. 2024; Eisenstein et al. 2024).
  [retry] retrying transient sandbox / tool failures (the retry setting of agent-RL tool sandboxes).
  [ent]   entropy regularisation keeps the policy from collapsing (Williams & Peng 1991; Mnih et al. 2016;
          Skywork-OR1's adaptive entropy, He et al. 2025; TRL's ``entropy_coef``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from rftfm.faults.taxonomy import FAULT_TYPES
from rftfm.knobs import KNOBS
from rftfm.signals import names

KnobOp = Literal["restore", "scale", "set"]


@dataclass(frozen=True)
class KnobChange:
    knob: str
    op: KnobOp
    factor: float | None = None  # op=scale
    value: Any = None  # op=set
    fallback_factor: float | None = None  # op=restore, when the knob has not drifted
    fallback_value: Any = None  # op=restore, when the knob has not drifted
    rel_bounds: tuple[float, float] | None = None  # clamp to [lo, hi] x healthy value
    abs_bounds: tuple[float, float] | None = None  # clamp to [lo, hi]
    direction: Literal["up", "down"] | None = None  # op=restore: only undo drift that went the other way


@dataclass(frozen=True)
class Rung:
    """Actions applied together, then revalidated."""

    reason: str
    source: str
    rollback: bool = False
    knobs: tuple[KnobChange, ...] = ()
    halt: bool = False
    backup: Literal["verifier", "tool"] | None = None  # only when the user registered one
    restore_drifted: bool = (
        False  # undo every knob that changed since the healthy checkpoint; ``knobs`` only if none did
    )

    @property
    def kinds(self) -> set[str]:
        kinds = {"rollback"} if self.rollback else set()
        kinds |= {"set_knob"} if self.knobs else set()
        kinds |= {"halt"} if self.halt else set()
        kinds |= {f"backup_{self.backup}"} if self.backup else set()
        return kinds


def _restore(knob: str, **kw: Any) -> KnobChange:
    return KnobChange(knob, "restore", **kw)


def _scale(knob: str, factor: float, **kw: Any) -> KnobChange:
    return KnobChange(knob, "scale", factor=factor, **kw)


def _set(knob: str, value: Any) -> KnobChange:
    return KnobChange(knob, "set", value=value)


LR_BOUNDS = (0.01, 10.0)  # never move the LR beyond 1/100 .. 10x the healthy LR
LR_LOW_BOUNDS = (1.0, 100.0)  # raising a too-low LR: the "healthy" value may be the bad one (set from step 1)
HALT = Rung("no knob repairs this fault: stop training on the last healthy weights", "[ckpt]", rollback=True, halt=True)

PLAYBOOK: dict[str, tuple[Rung, ...]] = {
    # --- RF -------------------------------------------------------------------------------
    "reward_noise": (
        Rung(
            "noisy verifier: average several verifier calls per completion",
            "[ens] [ckpt]",
            rollback=True,
            knobs=(_restore("reward_samples", fallback_value=8, abs_bounds=(1, 16), direction="up"),),
        ),
        Rung(
            "still noisy: twice the verifier calls",
            "[ens] [ckpt]",
            rollback=True,
            knobs=(_scale("reward_samples", 2.0, abs_bounds=(1, 16)),),
        ),
        HALT,
    ),
    "reward_hacking": (
        Rung(
            "verifier accepts a shortcut: switch to the registered backup verifier",
            "[kl]",
            rollback=True,
            backup="verifier",
        ),
        HALT,
    ),
    "reward_scale": (
        Rung(
            "unnormalised reward scale: restore group reward normalisation",
            "[norm]",
            rollback=True,
            knobs=(_set("scale_rewards", "group"),),
        ),
        Rung(
            "reward scale still off: smaller steps",
            "[ckpt]",
            rollback=True,
            knobs=(_scale("learning_rate", 0.3, rel_bounds=LR_BOUNDS),),
        ),
        HALT,
    ),
    "reward_inversion": (
        Rung(
            "verifier inverted on part of the prompts: switch to the registered backup verifier",
            "[ckpt]",
            rollback=True,
            backup="verifier",
        ),
        HALT,
    ),
    # --- PG -------------------------------------------------------------------------------
    "sampling_temperature": (
        Rung(
            "rollout temperature off: restore it (GRPO samples at 1.0)",
            "[temp]",
            rollback=True,
            knobs=(_restore("temperature", fallback_value=1.0, abs_bounds=(0.3, 1.2), direction="down"),),
        ),
        Rung("sampling still too diverse: cooler sampling", "[temp]", rollback=True, knobs=(_set("temperature", 0.8),)),
        HALT,
    ),
    "length_truncation": (
        Rung(
            "completions cut off: raise the length limit, mask truncated completions",
            "[dapo]",
            rollback=True,
            knobs=(
                _restore("max_completion_length", fallback_factor=2.0, abs_bounds=(4, 32), direction="up"),
                _set("mask_truncated_completions", True),
            ),
        ),
        Rung(
            "still truncated: double the length limit",
            "[dapo]",
            knobs=(_scale("max_completion_length", 2.0, abs_bounds=(4, 32)),),
        ),
        HALT,
    ),
    "rollout_mismatch": (
        # The threshold is on the sequence's mean per-token KL between the policy that sampled it and the one
        # trained (TRL's ``get_off_policy_mask``). A rollout engine that missed weight syncs leaves that KL at a few
        # hundredths (90th percentile 0.015-0.146 over the benchmark's mismatched runs): TRL's example value, 0.5,
        # dropped at most 0.7 % of a run's sequences -- the rung changed nothing --, 0.05 drops 0-15 % and 0.02
        # 1-24 % (docs/results/opsm-masking.md); on-policy rollouts have a KL of 0 and are never masked.
        Rung(
            "off-policy rollouts: mask sequences the policy has drifted far from (off-policy sequence masking)",
            "[opsm] [ckpt]",
            rollback=True,
            knobs=(_set("off_policy_mask_threshold", 0.05),),
        ),
        Rung(
            "ratio drift persists: stricter masking, tighter clip range",
            "[opsm] [clip]",
            rollback=True,
            knobs=(_set("off_policy_mask_threshold", 0.02), _scale("epsilon", 0.5, abs_bounds=(0.02, 0.3))),
        ),
        HALT,
    ),
    "degeneration": (
        Rung(
            "repetition loops: restore repetition penalty and EOS",
            "[rep]",
            rollback=True,
            knobs=(
                _restore("repetition_penalty", fallback_value=1.1, abs_bounds=(1.0, 1.3), direction="up"),
                _restore("eos_bias", fallback_value=0.0, abs_bounds=(0.0, 2.0), direction="up"),
            ),
        ),
        Rung(
            "still degenerate: mild repetition penalty, mask truncated completions",
            "[rep] [dapo]",
            rollback=True,
            knobs=(_set("repetition_penalty", 1.1), _set("mask_truncated_completions", True)),
        ),
        HALT,
    ),
    # --- OD -------------------------------------------------------------------------------
    "lr_high": (
        Rung(
            "learning rate too high: roll back and cut it",
            "[ckpt]",
            rollback=True,
            knobs=(_restore("learning_rate", fallback_factor=0.1, rel_bounds=LR_BOUNDS, direction="down"),),
        ),
        Rung(
            "still unstable: cut the learning rate again",
            "[ckpt]",
            rollback=True,
            knobs=(_scale("learning_rate", 0.1, rel_bounds=LR_BOUNDS),),
        ),
        HALT,
    ),
    "lr_low": (  # every raise stops at the LR the user configured (the controller's ceiling)
        Rung(
            "learning rate too low: raise it (steps since the onset were wasted: roll back)",
            "[ckpt]",
            rollback=True,
            knobs=(_restore("learning_rate", fallback_factor=30.0, rel_bounds=LR_LOW_BOUNDS, direction="up"),),
        ),
        Rung(
            "still stalled: raise it again", "[ckpt]", knobs=(_scale("learning_rate", 10.0, rel_bounds=LR_LOW_BOUNDS),)
        ),
        Rung(
            "still stalled: raise it once more",
            "[ckpt]",
            knobs=(_scale("learning_rate", 3.0, rel_bounds=LR_LOW_BOUNDS),),
        ),
        HALT,
    ),
    "kl_misconfig": (
        Rung(
            "KL coefficient far too large: restore it (steps since the onset were wasted: roll back)",
            "[kl] [ckpt]",
            rollback=True,
            knobs=(_restore("beta", fallback_factor=0.1, abs_bounds=(0.0, 0.5), direction="down"),),
        ),
        Rung("KL still pins the policy: cut beta", "[kl]", knobs=(_scale("beta", 0.1, abs_bounds=(0.0, 0.5)),)),
        HALT,
    ),
    # --- CA -------------------------------------------------------------------------------
    "advantage_sign": (HALT,),
    "zero_variance": (
        # no rollback: the steps under the fault learned less but did no harm
        Rung(
            "most groups carry no signal: DAPO dynamic sampling, resample the prompts of all-zero-advantage "
            "groups (up to 16 extra rounds)",
            "[dapo]",
            knobs=(_set("dynamic_sampling_rounds", 16),),
        ),
        Rung(
            "still too few informative groups: more resampling rounds",
            "[dapo]",
            knobs=(_scale("dynamic_sampling_rounds", 2.0, abs_bounds=(0, 32)),),
        ),
        HALT,
    ),
    "advantage_normalization": (HALT,),
    # --- TE -------------------------------------------------------------------------------
    "tool_failure": (
        Rung("tool sandbox failing: switch to the registered backup tool", "[ckpt]", rollback=True, backup="tool"),
        Rung(
            "transient tool failures: retry failed calls (steps that taught the policy to avoid the tool: roll back)",
            "[retry] [ckpt]",
            rollback=True,
            knobs=(_restore("tool_retries", fallback_value=3, abs_bounds=(0, 10), direction="up"),),
        ),
        Rung("calls still failing: more retries", "[retry]", knobs=(_scale("tool_retries", 3.0, abs_bounds=(0, 10)),)),
        HALT,
    ),
    "tool_corruption": (
        Rung(
            "tool returns wrong results: switch to the registered backup tool", "[ckpt]", rollback=True, backup="tool"
        ),
        HALT,
    ),
    # --- extension: failures reported in the wild ------------------------------------------
    "reward_none": (
        # no rollback: completions without a reward only taught nothing
        Rung(
            "verifier returns None for some completions: call it again and average the calls that answer",
            "[retry] [ens]",
            knobs=(_restore("reward_samples", fallback_value=4, abs_bounds=(1, 16), direction="up"),),
        ),
        Rung(
            "still unanswered: twice the verifier calls",
            "[retry] [ens]",
            knobs=(_scale("reward_samples", 2.0, abs_bounds=(1, 16)),),
        ),
        # a verifier that gives up on 60 % of calls leaves 0.6^8 = 1.7 % of completions unscored after 8 calls, so
        # most batches of 64 still hold one; 16 calls leave 0.03 %
        Rung(
            "still unanswered: twice the verifier calls again (at most 16)",
            "[retry] [ens]",
            knobs=(_scale("reward_samples", 2.0, abs_bounds=(1, 16)),),
        ),
        HALT,
    ),
    "length_clip_all": (
        # no rollback: clipped steps carried no gradient, so they did no harm
        Rung(
            "every completion clipped: restore the length limit",
            "[dapo]",
            knobs=(_restore("max_completion_length", fallback_factor=4.0, abs_bounds=(4, 32), direction="up"),),
        ),
        Rung(
            "still clipped: double the length limit",
            "[dapo]",
            knobs=(_scale("max_completion_length", 2.0, abs_bounds=(4, 32)),),
        ),
        HALT,
    ),
    "numerical_blowup": (HALT,),
    "kl_dropped": (HALT,),
    "entropy_collapse": (
        Rung(
            "entropy collapsing under an entropy penalty: roll back and restore the entropy coefficient",
            "[ent] [ckpt]",
            rollback=True,
            knobs=(_restore("entropy_coef", fallback_value=0.0, abs_bounds=(0.0, 0.1), direction="up"),),
        ),
        Rung(
            "entropy still collapsing: a small entropy bonus",
            "[ent] [ckpt]",
            rollback=True,
            knobs=(_set("entropy_coef", 0.01),),
        ),
        HALT,
    ),
}

_SAMPLE_SHAPE = names(group=("length", "sampling", "tool"), feature=True)  # what a sample looks like ...
_SAMPLE_LEVEL = _SAMPLE_SHAPE + names(group="entropy", feature=True)  # ... and the policy's entropy over it
_REWARD_LEVEL = names(group="reward")

#: Signals a successful knob repair cannot bring back because the fault's source sits upstream
#: of the trainer (the reward function, the tool sandbox, the grouping, the rollout engine) and
#: keeps acting. After a rung for that type was applied, an alarm whose evidence lies *only* in
#: these signals is recorded as explained by the diagnosed cause, and not acted on again; any
#: other deviating signal (eval accuracy, KL, grad norm, and for most types entropy and lengths) still counts.
UPSTREAM_SIGNALS: dict[str, tuple[str, ...]] = {
    "reward_noise": _REWARD_LEVEL + ("traj_advantage_std", "traj_advantage_absmax", "frac_zero_std_groups"),
    "reward_scale": _REWARD_LEVEL,
    # stale rollout weights shape every sample statistic; the trainer-side signals (eval accuracy,
    # KL, loss, grad norm) are what a repair must bring back
    "rollout_mismatch": _REWARD_LEVEL
    + _SAMPLE_LEVEL
    + ("clip_ratio_region", "frac_zero_std_groups", "traj_advantage_std"),
    # the repair (dynamic sampling) trains on a filtered batch, refilled with groups that carry signal: the batch's
    # reward, length and tool statistics and the policy loss's level move because of the repair itself
    "zero_variance": _REWARD_LEVEL
    + _SAMPLE_SHAPE
    + ("frac_zero_std_groups", "traj_advantage_zeroed", "traj_advantage_std", "traj_advantage_absmax", "grad_norm",
       "policy_loss"),
    "tool_failure": _REWARD_LEVEL + ("tool_failure_frequency", "traj_tool_error_rate"),
    # asking the verifier again scores more completions, so the batch's reward statistics move because of the repair,
    # and a verifier that answers only sometimes still scores identical completions apart
    "reward_none": _REWARD_LEVEL,
}

#: What the controller does for an alarm the diagnoser cannot explain (abstention).
UNKNOWN_LADDER: tuple[Rung, ...] = (
    Rung(
        "unexplained anomaly: roll back and undo every knob change since the healthy checkpoint "
        "(if nothing changed, halve the learning rate)",
        "[ckpt]",
        rollback=True,
        restore_drifted=True,
        knobs=(_scale("learning_rate", 0.5, rel_bounds=LR_BOUNDS),),
    ),
    HALT,
)

#: First rung of any new incident when a knob changed since the last healthy checkpoint
#: (a configuration push is the most common cause of a sudden change): undo the change.
DRIFT_RUNG = Rung(
    "a trainer knob changed since the last healthy checkpoint: roll back and undo the change",
    "[ckpt]",
    rollback=True,
    restore_drifted=True,
)

#: The generic baseline: the same rung for every alarm, whatever the diagnosis.
GENERIC_LADDER: tuple[Rung, ...] = (
    Rung(
        "generic: roll back and halve the learning rate",
        "[ckpt]",
        rollback=True,
        knobs=(_scale("learning_rate", 0.5, rel_bounds=LR_BOUNDS),),
    ),
)


def ladder(fault_type: str | None) -> tuple[Rung, ...]:
    """The ladder for ``fault_type`` (``None`` or unknown: :data:`UNKNOWN_LADDER`)."""
    return PLAYBOOK.get(fault_type or "", UNKNOWN_LADDER)


def ends_in_halt_only(fault_type: str) -> bool:
    """True when no knob rung exists: the ladder is backups (if registered) then halt."""
    return not any(r.knobs for r in PLAYBOOK[fault_type])


def describe_rung(rung: Rung) -> str:
    """One line: what a rung does, e.g. ``rollback + learning_rate restore (fallback x0.1)``."""
    parts = [f"backup {rung.backup}"] if rung.backup else []
    parts += ["rollback"] if rung.rollback else []
    for k in rung.knobs:
        if k.op == "set":
            parts.append(f"{k.knob} = {k.value}")
        elif k.op == "scale":
            parts.append(f"{k.knob} x{k.factor:g}")
        else:
            fb = f"x{k.fallback_factor:g}" if k.fallback_factor is not None else f"= {k.fallback_value}"
            parts.append(f"{k.knob} restore{' ' + k.direction if k.direction else ''} (else {fb})")
    parts += ["halt"] if rung.halt else []
    if rung.restore_drifted:
        parts.insert(1 if rung.rollback else 0, "restore drifted knobs (else:")
        parts[-1] += ")"
    return " + ".join(parts)


def check_playbook() -> list[str]:
    """Problems with the playbook (empty when consistent with the taxonomy and the knobs)."""
    problems = [f"no ladder for {t}" for t in FAULT_TYPES if t not in PLAYBOOK]
    problems += [f"ladder for unknown type {t}" for t in PLAYBOOK if t not in FAULT_TYPES]
    problems += [
        f"upstream signals for a halt-only type {t}" for t in UPSTREAM_SIGNALS if not FAULT_TYPES[t].knob_repairable
    ]
    for name, rungs in PLAYBOOK.items():
        if not rungs or not rungs[-1].halt:
            problems.append(f"{name}: ladder must end in halt")
        for rung in rungs:
            problems += [f"{name}: unknown knob {k.knob}" for k in rung.knobs if k.knob not in KNOBS]
        if not FAULT_TYPES.get(name, None) or FAULT_TYPES[name].knob_repairable:
            continue
        if any(r.knobs for r in rungs):
            problems.append(f"{name}: not knob-repairable but its ladder turns knobs")
    return problems


__all__ = [
    "DRIFT_RUNG",
    "UPSTREAM_SIGNALS",
    "GENERIC_LADDER",
    "HALT",
    "describe_rung",
    "KnobChange",
    "PLAYBOOK",
    "Rung",
    "UNKNOWN_LADDER",
    "check_playbook",
    "ends_in_halt_only",
    "ladder",
]
