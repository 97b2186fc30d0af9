"""The fault taxonomy: the one registry of fault families, types and strengths.

Every other module (injectors, benchmark presets, detector evaluation, diagnoser labels,
remediation playbook) reads fault names from here; no second list exists. The published
benchmark's 16 types are :data:`PUBLISHED_TYPES`; the failures users report most in framework
issue trackers are the extension (``extension=True``, :data:`WILD_TYPES`).

``params`` are interpreted by the injector of the family (``rftfm.faults.injectors``);
``easy`` is the strong setting, ``hard`` the subtle one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from rftfm.knobs import KNOBS

Strength = Literal["easy", "hard"]
Direction = Literal["up", "down"]
STRENGTHS: tuple[Strength, ...] = ("easy", "hard")


@dataclass(frozen=True)
class FaultFamily:
    code: str  # two-letter code used in group directory names (rf, pg, od, ca, te)
    name: str
    description: str


@dataclass(frozen=True)
class FaultType:
    name: str
    family: str  # FaultFamily.code
    injected_as: str
    fingerprint: str
    params: dict[Strength, dict[str, Any]]
    task_groups: tuple[str, ...] | None = None  # None: every task group
    knob_repairable: bool = True  # False: a code bug no trainer knob fixes (halt + rollback)
    #: expected fingerprint: (feature name from rftfm.fm.features, "up" | "down") vs a matched clean run,
    #: most characteristic first; read by the fingerprint tests and the expert-rule baseline
    signals: tuple[tuple[str, Direction], ...] = field(default_factory=tuple)
    #: beyond the published 16: a failure users report in framework issue trackers (the "wild" extension)
    extension: bool = False
    #: the fault needs a KL term (``beta > 0``, so a reference model) to act on
    needs_kl: bool = False
    #: the fault makes the policy's own numbers (loss, grad norm, KL, entropy) non-finite (:mod:`rftfm.fm.non_finite`)
    non_finite: bool = False
    #: the fault makes the logged reward leave its functions' weighted means (:mod:`rftfm.fm.reward_identity`)
    reward_identity: bool = False
    #: the fault makes a reward function whose scores were 0 or 1 leave {0, 1}, or leave some completions unscored
    #: (:mod:`rftfm.fm.binary_reward`)
    binary_reward: bool = False
    #: the fault leaves completions that no reward function scored (:mod:`rftfm.fm.unscored`)
    leaves_unscored: bool = False
    #: the fault makes the reward no function of the completion, so identical completions of one prompt can be scored
    #: differently (:mod:`rftfm.fm.repeat_rewards`): noise, a stochastic shortcut, a verifier that gives up on some
    #: calls while another function scores them, a tool that fails or lies now and then
    scores_repeats_apart: bool = False
    #: the fault gives some advantages the other sign from their reward's deviation (:mod:`rftfm.fm.advantage_signs`)
    flips_advantage_signs: bool = False
    #: the fault lifts the policy term of the logged loss out of the scale a healthy one keeps: advantages that stop
    #: summing to 0 in a group, or scaled up where the loss's weighting leaves a covariance (:mod:`rftfm.fm.loss_scale`)
    lifts_policy_term: bool = False
    #: the fault leaves the policy no gradient: a length limit that clips every completion (masked as truncated, or
    #: all scored alike) -- where the gradient flows it is not acting
    #: (:meth:`rftfm.fm.diagnose.Diagnoser.apply_gradient`)
    stops_gradient: bool = False

    @property
    def learning_rate_push(self) -> Direction | None:
        """Which way the fault moves the learning rate in use at some strength ("up", "down"; None: it does not)."""
        factors = [p["lr_multiplier"] for p in self.params.values() if p.get("lr_multiplier", 1.0) != 1.0]
        return None if not factors else "up" if factors[0] > 1.0 else "down"

    @property
    def penalty_term(self) -> str | None:
        """The term of the loss the trainer logs that the fault turns into a penalty (a KL coefficient pushed up:
        ``"kl"``; an entropy bonus turned into a penalty: ``"entropy"``; :mod:`rftfm.fm.loss_penalty`), or None."""
        if any("beta" in p for p in self.params.values()):
            return "kl"
        return "entropy" if any(p.get("entropy_coef", 0.0) < 0.0 for p in self.params.values()) else None

    @property
    def kl_coefficient_move(self) -> Direction | None:
        """Which way the fault moves the KL coefficient the logged loss carries (:mod:`rftfm.fm.kl_coefficient`): a beta
        pushed up (``"up"``), one that stops reaching the loss (``"down"``), or None."""
        if any("beta" in p for p in self.params.values()):
            return "up"
        return "down" if any(p.get("beta_factor", 1.0) < 1.0 for p in self.params.values()) else None

    @property
    def pushed_knobs(self) -> tuple[str, ...]:
        """The trainer knobs the fault sets at its onset (its parameters that name one, :data:`rftfm.knobs.KNOBS`:
        a configuration pushed mid-run), in a fixed order; empty where it sets none."""
        return tuple(k for k in KNOBS if any(k in p for p in self.params.values()))

    @property
    def length_limited(self) -> bool:
        """Whether the fault is a length limit: its fingerprint leads with the truncated ratio going up."""
        return self.signals[:1] == (("truncated_ratio", "up"),)

    @property
    def loss_penalty(self) -> bool:
        """Whether the fault adds a penalty to the loss the trainer logs (:attr:`penalty_term`)."""
        return self.penalty_term is not None

    @property
    def lifts_loss(self) -> bool:
        """Whether the fault lifts the loss the trainer logs out of its scale: a penalty added
        (:attr:`loss_penalty`) or the policy term lifted (:attr:`lifts_policy_term`)."""
        return self.loss_penalty or self.lifts_policy_term

    def applies_to(self, task_group: str, beta: float) -> bool:
        """Whether this fault can be injected into a run of ``task_group`` with KL coefficient ``beta``."""
        return (self.task_groups is None or task_group in self.task_groups) and (beta > 0 or not self.needs_kl)


FAMILIES: dict[str, FaultFamily] = {
    f.code: f
    for f in (
        FaultFamily("rf", "reward", "the reward function or verifier is wrong"),
        FaultFamily("pg", "generation", "the rollout / sampling process is wrong"),
        FaultFamily("od", "optimisation", "the optimiser configuration is wrong"),
        FaultFamily("ca", "credit assignment", "the advantage computation is wrong"),
        FaultFamily("te", "tool environment", "the tool sandbox misbehaves"),
    )
}

#: the task groups whose policy calls a tool (the TE family needs one)
_TOOL_ONLY = ("tool", "tool_sub")

FAULT_TYPES: dict[str, FaultType] = {
    t.name: t
    for t in (
        # --- RF: reward ---------------------------------------------------------------
        FaultType(
            "reward_noise", "rf",
            "zero-mean Gaussian noise added to every verifier reward",
            "reward sd up, slower learning",
            {"easy": {"noise_sd": 1.0}, "hard": {"noise_sd": 0.35}},
            signals=(("reward_std", "up"), ("frac_zero_std_groups", "down")),
            binary_reward=True,
            scores_repeats_apart=True,
        ),
        FaultType(
            "reward_hacking", "rf",
            "lenient verifier also accepts any direct answer whose first digit is right (prefix shortcut)",
            "train reward up while eval accuracy stalls or falls (reward / accuracy gap)",
            {"easy": {"prefix_chars": 1, "accept_prob": 1.0}, "hard": {"prefix_chars": 1, "accept_prob": 0.4}},
            knob_repairable=False,
            signals=(("reward_mean", "up"), ("eval_accuracy", "down")),
            scores_repeats_apart=True,  # (where the shortcut is accepted only sometimes)
        ),
        FaultType(
            "reward_scale", "rf",
            "rewards scaled and offset while group normalisation is off",
            "loss and grad-norm magnitude jump, KL up",
            {"easy": {"scale": 25.0, "offset": 5.0}, "hard": {"scale": 5.0, "offset": 1.0}},
            signals=(("reward_mean", "up"), ("grad_norm", "up"), ("traj_advantage_std", "up")),
            lifts_policy_term=True,
            binary_reward=True,
        ),
        FaultType(
            "reward_inversion", "rf",
            "reward r -> 1 - r on a fixed subset of prompts (systematic sign flip)",
            "eval accuracy falls while train reward rises (wrong answers are rewarded)",
            {"easy": {"prompt_fraction": 0.7}, "hard": {"prompt_fraction": 0.35}},
            knob_repairable=False,
            signals=(("eval_accuracy", "down"), ("reward_mean", "up")),
        ),
        # --- PG: generation ------------------------------------------------------------
        FaultType(
            "sampling_temperature", "pg",
            "rollout temperature far too high",
            "entropy and unique-token ratio shift, more wrong samples",
            {"easy": {"temperature": 2.2}, "hard": {"temperature": 1.5}},
            signals=(("reward_mean", "down"), ("kl", "up"), ("frac_zero_std_groups", "up")),
        ),
        FaultType(
            "length_truncation", "pg",
            "max completion length too short",
            "truncated ratio and long flags up, reward down",
            {"easy": {"max_completion_length": 2}, "hard": {"max_completion_length": 3}},
            signals=(("truncated_ratio", "up"), ("completion_length_mean", "down")),
        ),
        FaultType(
            "rollout_mismatch", "pg",
            "rollouts come from a stale, perturbed copy of the policy (weights re-synced every k steps)",
            "clip ratio and importance-ratio drift",
            {"easy": {"sync_every": 8, "weight_noise": 0.08}, "hard": {"sync_every": 4, "weight_noise": 0.03}},
            signals=(("clip_ratio_region", "up"),),
        ),
        FaultType(
            "degeneration", "pg",
            "repetition penalty below 1 and EOS logit pushed down at sampling time",
            "repetition up, unique tokens down, long outputs",
            {"easy": {"repetition_penalty": 0.5, "eos_bias": -4.0},
             "hard": {"repetition_penalty": 0.8, "eos_bias": -1.5}},
            signals=(("traj_repetition_mean", "up"), ("traj_unique_mean", "down"), ("completion_length_mean", "up")),
        ),
        # --- OD: optimisation ----------------------------------------------------------
        FaultType(
            "lr_high", "od",
            "learning rate far too high",
            "grad-norm and loss spikes, entropy collapse, KL up",
            {"easy": {"lr_multiplier": 30.0}, "hard": {"lr_multiplier": 6.0}},
            signals=(("kl", "up"), ("eval_accuracy", "down")),
        ),
        FaultType(
            "lr_low", "od",
            "learning rate far too low",
            "flat reward, KL near 0",
            {"easy": {"lr_multiplier": 0.003}, "hard": {"lr_multiplier": 0.1}},
            signals=(("kl", "down"),),
        ),
        FaultType(
            "kl_misconfig", "od",
            "KL coefficient orders of magnitude too large",
            "KL pinned near 0 with no learning",
            {"easy": {"beta": 5.0}, "hard": {"beta": 1.0}},
            signals=(("kl", "down"), ("grad_norm", "up")),
            needs_kl=True,
        ),
        # --- CA: credit assignment -----------------------------------------------------
        FaultType(
            "advantage_sign", "ca",
            "advantage sign flipped on a random fraction of trajectories",
            "reward falls steadily",
            {"easy": {"flip_fraction": 0.85}, "hard": {"flip_fraction": 0.45}},
            knob_repairable=False,
            signals=(("traj_advantage_residual", "up"), ("reward_mean", "down"), ("eval_accuracy", "down")),
            lifts_policy_term=True,
            flips_advantage_signs=True,
        ),
        FaultType(
            "zero_variance", "ca",
            "a fraction of groups get all-zero advantages (degenerate grouping)",
            "fraction of zero-std groups up, grad-norm down, stall",
            {"easy": {"zero_fraction": 0.9}, "hard": {"zero_fraction": 0.5}},
            signals=(("traj_advantage_zeroed", "up"), ("frac_zero_std_groups", "up"), ("grad_norm", "down")),
        ),
        FaultType(
            "advantage_normalization", "ca",
            "broken normalisation: advantages scaled up and biased by completion length",
            "advantage sd explodes, grad spikes, length drift",
            {"easy": {"scale": 12.0, "length_power": 2.0}, "hard": {"scale": 3.0, "length_power": 1.0}},
            signals=(("traj_advantage_residual", "up"), ("traj_advantage_std", "up"), ("grad_norm", "up")),
            # a bug in the advantage code after TRL's own normalisation (like advantage_sign): no knob
            # undoes a length-dependent rescaling, so the remedy is halt + rollback, not a knob ladder
            knob_repairable=False,
            lifts_policy_term=True,
        ),
        # --- TE: tool environment ------------------------------------------------------
        FaultType(
            "tool_failure", "te",
            "tool sandbox raises errors / time-outs; failed calls score 0",
            "tool errors up, reward down with no policy change",
            {"easy": {"failure_prob": 0.6}, "hard": {"failure_prob": 0.25}},
            task_groups=_TOOL_ONLY,
            signals=(("tool_failure_frequency", "up"), ("traj_tool_error_rate", "up"), ("reward_mean", "down")),
            scores_repeats_apart=True,
        ),
        FaultType(
            "tool_corruption", "te",
            "tool returns a wrong result without an error",
            "tool calls succeed but reward falls, tool use drops",
            {"easy": {"corrupt_prob": 0.7}, "hard": {"corrupt_prob": 0.3}},
            task_groups=_TOOL_ONLY,
            knob_repairable=False,
            signals=(("reward_mean", "down"), ("tool_call_frequency", "down")),
            scores_repeats_apart=True,
        ),
        # --- extension: failures reported in the wild (TRL / verl / OpenRLHF issue trackers) ----------
        FaultType(
            "reward_none", "rf",
            "the verifier returns None (NaN) for a random fraction of completions (a time-out it swallows)",
            "fewer completions carry signal (TRL zeroes their advantage; beside a format reward, nansum scores them 0)",
            {"easy": {"none_fraction": 0.6}, "hard": {"none_fraction": 0.25}},
            signals=(("traj_advantage_std", "down"), ("grad_norm", "down")),
            extension=True,
            reward_identity=True,
            binary_reward=True,
            leaves_unscored=True,
            scores_repeats_apart=True,  # (beside a function that scores every completion)
        ),
        FaultType(
            "length_clip_all", "pg",
            "length limit that clips every completion (hard: every completion masked as truncated)",
            "truncated ratio pinned at 1, zero gradient, no learning",
            {"easy": {"max_completion_length": 1},
             "hard": {"max_completion_length": 2, "mask_truncated_completions": True}},
            signals=(("truncated_ratio", "up"), ("grad_norm", "down")),
            extension=True,
            stops_gradient=True,
        ),
        FaultType(
            "numerical_blowup", "od",
            "policy weights and Adam moments switched to float16 without loss scaling (easy: and the LR pushed up)",
            "loss / KL / grad norm non-finite, the policy emits one repeated character, then noise; reward to 0",
            {"easy": {"dtype": "float16", "lr_multiplier": 30.0}, "hard": {"dtype": "float16", "lr_multiplier": 1.0}},
            knob_repairable=False,
            signals=(("reward_mean", "down"), ("eval_accuracy", "down")),
            extension=True,
            non_finite=True,
        ),
        FaultType(
            "kl_dropped", "od",
            "the configured KL coefficient never reaches the loss (the loss sees beta x beta_factor)",
            "KL grows unchecked while the configured beta looks right",
            {"easy": {"beta_factor": 0.01}, "hard": {"beta_factor": 0.2}},
            knob_repairable=False,
            signals=(("kl", "up"),),
            extension=True,
            needs_kl=True,
        ),
        FaultType(
            "entropy_collapse", "od",
            "entropy regularisation with the wrong sign: a penalty where a bonus was meant (TRL entropy_coef < 0)",
            "entropy falls while KL and grad norm rise (the penalty's gradient), held-out accuracy drifts down",
            {"easy": {"entropy_coef": -3.0}, "hard": {"entropy_coef": -0.5}},
            signals=(("entropy", "down"), ("kl", "up"), ("grad_norm", "up")),
            extension=True,
        ),
    )
}


def fault_type(name: str) -> FaultType:
    try:
        return FAULT_TYPES[name]
    except KeyError:
        raise KeyError(f"unknown fault type {name!r}; known: {sorted(FAULT_TYPES)}") from None


#: the published benchmark's 16 types (5 families); :data:`WILD_TYPES` are the extension
PUBLISHED_TYPES: dict[str, FaultType] = {n: t for n, t in FAULT_TYPES.items() if not t.extension}
WILD_TYPES: dict[str, FaultType] = {n: t for n, t in FAULT_TYPES.items() if t.extension}


def group_dir(family: str, strength: Strength) -> str:
    """Published group directory name, e.g. ``rf_easy_fault``."""
    return f"{family}_{strength}_fault"


NORMAL_GROUP = "normal"


def taxonomy_markdown() -> str:
    """The registry as a markdown table (docs/results/taxonomy.md is written from this)."""

    def fmt(params: dict[str, Any]) -> str:
        return ", ".join(f"{k}={v}" for k, v in params.items())

    lines = [
        "# Fault taxonomy (generated from `rftfm.faults.taxonomy` by `rftfm bench taxonomy --markdown <this file>`)",
        "",
        "Types marked *wild* are the extension beyond the published 16 (failures users report in framework issue",
        "trackers); `needs KL` types are injected only into runs with `beta > 0`.",
        "",
        "| family | type | injected as | easy | hard | task groups "
        "| expected fingerprint vs matched clean run | knob-repairable |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in FAULT_TYPES.values():
        signals = ", ".join(f"{name} {direction}" for name, direction in t.signals)
        lines.append(
            f"| {t.family} ({FAMILIES[t.family].name}) | `{t.name}`{' (wild)' if t.extension else ''} "
            f"| {t.injected_as} "
            f"| {fmt(t.params['easy'])} | {fmt(t.params['hard'])} "
            f"| {', '.join(t.task_groups) if t.task_groups else 'all'}{' (needs KL)' if t.needs_kl else ''} "
            f"| {signals} "
            f"| {'yes' if t.knob_repairable else 'no: halt + rollback'} |"
        )
    return "\n".join(lines) + "\n"
