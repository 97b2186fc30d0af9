"""Which logged key fills which :class:`~rftfm.records.StepRecord` field: one table per framework and version.

Each framework has its tables newest first; within a table, keys are in order of preference.
The candidates of a field are the keys of every table of its framework in that order, then the
field's own name (our plain JSONL layout). :class:`rftfm.io.fields.FieldResolver` picks one
candidate per field once per run, so a field never changes meaning half-way through a log.
Keys no table maps are kept in ``StepRecord.extra`` under their logged name.

Besides exact keys a table may hold a :class:`Pattern`: a regular expression that stands for a
key when exactly one logged key matches it (TRL's per-function ``rewards/<name>/mean`` is the
reward when no total ``reward`` is logged and there is one reward function; with several, their
weighted sum is not in the log and the reward stays missing).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rftfm.io.loader import STEP_ALIASES
from rftfm.records import STEP_METRICS

FRAMEWORKS: tuple[str, ...] = ("openrlhf", "verl", "trl", "jsonl")


@dataclass(frozen=True)
class Pattern:
    """A key pattern: it maps when exactly one logged key matches (``first=True``: the first, sorted)."""

    regex: str
    label: str  # how the summary names it, e.g. ``rewards/*/mean``
    first: bool = False
    prefixes: tuple[str, ...] = ("",)  # every match starts with one of these (a cheap filter first)

    def match(self, keys: list[str]) -> str | None:
        compiled = re.compile(self.regex)  # re caches compiled patterns
        found = sorted(k for k in keys if k.startswith(self.prefixes) and compiled.fullmatch(k))
        if len(found) == 1 or (found and self.first):
            return found[0]
        return None


Candidate = str | Pattern


@dataclass(frozen=True)
class KeyTable:
    """One framework version's logged names -> StepRecord fields."""

    framework: str
    version: str
    keys: dict[str, Candidate | tuple[Candidate, ...]]  # field -> its key(s), best first


# --- TRL ----------------------------------------------------------------------------------------

#: TRL GRPOTrainer since the ``completions/*`` and ``rewards/<name>/mean`` renames (TRL >= 0.17).
TRL_CURRENT = KeyTable(
    "trl",
    "GRPOTrainer, TRL >= 0.17",
    {
        "reward_mean": ("reward", Pattern(r"rewards/[^/]+/mean", "rewards/*/mean", prefixes=("rewards/",))),
        "reward_std": "reward_std",
        "kl": "kl",
        "entropy": "entropy",
        "policy_loss": "loss",
        "grad_norm": "grad_norm",
        "learning_rate": "learning_rate",
        "clip_ratio_low": "clip_ratio/low_mean",
        "clip_ratio_high": "clip_ratio/high_mean",
        "clip_ratio_region": "clip_ratio/region_mean",
        "completion_length_mean": "completions/mean_length",
        "completion_length_max": "completions/max_length",
        "truncated_ratio": "completions/clipped_ratio",
        "frac_zero_std_groups": "frac_reward_zero_std",
        "tool_call_frequency": "tools/call_frequency",  # logged only when the trainer has tools
        "tool_failure_frequency": "tools/failure_frequency",
        "step_time_s": "step_time",
    },
)
#: TRL GRPOTrainer before those renames (0.14 - 0.16): ``completion_length``, ``rewards/<name>``, one ``clip_ratio``.
TRL_LEGACY = KeyTable(
    "trl",
    "GRPOTrainer, TRL 0.14 - 0.16",
    {
        "reward_mean": Pattern(r"rewards/[^/]+", "rewards/*", prefixes=("rewards/",)),
        "completion_length_mean": "completion_length",
        "clip_ratio_region": "clip_ratio",
    },
)
#: TRL's on-policy trainers (PPOTrainer / RLOOTrainer, TRL >= 0.11): ``objective/*``, ``policy/*``.
TRL_ONPOLICY = KeyTable(
    "trl",
    "PPOTrainer / RLOOTrainer, TRL >= 0.11",
    {
        "reward_mean": "objective/scores",  # the reward model's score, before the KL penalty
        "kl": "objective/kl",
        "entropy": "objective/entropy",
        "policy_loss": "loss/policy_avg",
        "clip_ratio_region": "policy/clipfrac_avg",
        "learning_rate": "lr",
    },
)

# --- verl ---------------------------------------------------------------------------------------

#: verl ``RayPPOTrainer`` (``verl/trainer/ppo/metric_utils.py`` and the actor workers), 0.3 onwards.
VERL_CURRENT = KeyTable(
    "verl",
    "RayPPOTrainer, verl >= 0.3",
    {
        # the verifier score; critic/rewards/mean includes an in-reward KL penalty and is used only
        # when a run logs no score at all
        "reward_mean": ("critic/score/mean", "critic/rewards/mean"),
        # KL to the reference policy: as a loss term (use_kl_loss) or as a penalty in the reward
        # (use_kl_in_reward, logged as actor/reward_kl_penalty; critic/kl in older versions).
        # actor/ppo_kl is the old/new policy KL of the PPO step, not this: it stays in extra.
        "kl": ("actor/kl_loss", "actor/reward_kl_penalty", "critic/kl"),
        "entropy": ("actor/entropy", "actor/entropy_loss"),  # older versions log the entropy as entropy_loss
        "policy_loss": "actor/pg_loss",
        "grad_norm": "actor/grad_norm",
        "learning_rate": "actor/lr",
        "clip_ratio_low": "actor/pg_clipfrac_lower",
        "clip_ratio_region": "actor/pg_clipfrac",
        "completion_length_mean": "response_length/mean",
        "completion_length_max": "response_length/max",
        "truncated_ratio": "response_length/clip_ratio",
        "step_time_s": "timing_s/step",
        "eval_accuracy": Pattern(
            r"val-core/.+/(acc|reward|score)/mean@1|val/test_score/.+",
            "val-core/*/acc/mean@1",
            first=True,
            prefixes=("val-core/", "val/test_score/"),
        ),
    },
)

# --- OpenRLHF -----------------------------------------------------------------------------------

_OPENRLHF_NAMES: dict[str, str] = {
    **{key: name for key, name in STEP_ALIASES.items() if name in STEP_METRICS},
    "policy_entropy": "entropy",
    "actor_lr": "learning_rate",
}


def _by_field(names: dict[str, str], prefixes: tuple[str, ...] = ("",)) -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for prefix in prefixes:
        for key, name in names.items():
            out[name] = out.get(name, ()) + (prefix + key,)
    return out


#: OpenRLHF: the published benchmark's names (the loader's table), also under OpenRLHF's wandb /
#: TensorBoard prefix ``train/<key>`` (its trainers log ``{"train/%s" % k: v}`` of their status dict).
OPENRLHF_CURRENT = KeyTable(
    "openrlhf", "PPOTrainer status dict, OpenRLHF >= 0.4", _by_field(_OPENRLHF_NAMES, ("", "train/"))
)

#: Plain JSONL / CSV: our own field names and the loader's aliases.
JSONL_TABLE = KeyTable(
    "jsonl", "rftfm StepRecord names", _by_field({k: v for k, v in STEP_ALIASES.items() if v in STEP_METRICS})
)

TABLES: dict[str, tuple[KeyTable, ...]] = {
    "trl": (TRL_CURRENT, TRL_LEGACY, TRL_ONPOLICY),
    "verl": (VERL_CURRENT,),
    "openrlhf": (OPENRLHF_CURRENT,),
    "jsonl": (JSONL_TABLE,),
}


def candidates(framework: str, own_names: bool = True) -> dict[str, tuple[Candidate, ...]]:
    """field -> every key that may fill it in this framework, best first (with ``own_names``: the field's name last)."""
    out: dict[str, tuple[Candidate, ...]] = {name: () for name in STEP_METRICS}
    for table in TABLES[framework]:
        for name, keys in table.keys.items():
            keys = keys if isinstance(keys, tuple) else (keys,)
            out[name] += tuple(k for k in keys if k not in out[name])
    if own_names:
        for name in STEP_METRICS:
            if name not in out[name]:
                out[name] += (name,)
    return out


def flat_table(framework: str) -> dict[str, str]:
    """Exact logged key -> field for one framework (every version; the patterns left out)."""
    return {key: name for name, keys in candidates(framework).items() for key in keys if isinstance(key, str)}


def current_keys(table: KeyTable) -> dict[str, str]:
    """One exact key per field: the table's first (what a trainer of that version logs)."""
    out = {}
    for name, keys in table.keys.items():
        first = next((k for k in (keys if isinstance(keys, tuple) else (keys,)) if isinstance(k, str)), None)
        if first is not None:
            out[first] = name
    return out


#: TRL GRPOTrainer's current names, one key per field (the embedded engine logs these).
TRL_STEP_KEYS: dict[str, str] = current_keys(TRL_CURRENT)
VERL_STEP_KEYS: dict[str, str] = flat_table("verl")
OPENRLHF_STEP_KEYS: dict[str, str] = flat_table("openrlhf")
JSONL_STEP_KEYS: dict[str, str] = flat_table("jsonl")

#: Fields that alone do not make a log line an RL training step: a supervised fine-tuning run
#: logs them too. Its ``loss`` counts as the policy loss only beside an RL signal.
NOT_RL_EVIDENCE: frozenset[str] = frozenset({"learning_rate", "step_time_s", "grad_norm", "entropy", "eval_accuracy"})
#: Logged keys that fill an RL field but are generic trainer names (SFT logs them as well).
GENERIC_KEYS: frozenset[str] = frozenset({"loss", "train/loss", "lr"})

#: Keys that name the step counter, in order of preference.
STEP_NUMBER_KEYS: tuple[str, ...] = (
    "step",
    "global_step",
    "training/global_step",
    "train/global_step",
    "_step",
    "iteration",
)
#: Logged keys that are never metrics.
IGNORED_KEYS: frozenset[str] = frozenset(
    {
        "epoch",
        "train/epoch",
        "run_id",
        "time",
        "timestamp",
        "elapsed_seconds",
        "schema_version",
        "_runtime",
        "_timestamp",
    }
    | set(STEP_NUMBER_KEYS)
)


#: Why a framework may log no key for a field at all (said next to "missing at N of N steps").
MISSING_HINTS: dict[tuple[str, str], str] = {
    ("trl", "kl"): "TRL logs no KL when beta = 0",
    ("verl", "kl"): "verl logs it with use_kl_loss or use_kl_in_reward",
}


def coverage(fmt: str) -> dict[str, bool]:
    """Which :data:`~rftfm.records.STEP_METRICS` a format's tables can fill (the rest stay missing)."""
    if fmt in ("jsonl", "openrlhf"):
        return {name: True for name in STEP_METRICS}  # these layouts log our own names
    filled = {name for table in TABLES[fmt] for name in table.keys}
    return {name: name in filled for name in STEP_METRICS}


# --- which framework a set of keys comes from ---------------------------------------------------

_VERL_PREFIXES = (
    "critic/",
    "actor/",
    "response_length/",
    "timing_s/",
    "perf/",
    "global_seqlen/",
    "prompt_length/",
    "val-core/",
    "val-aux/",
    "training/",
)
_TRL_KEYS = {"frac_reward_zero_std", "reward_std", "num_tokens", "completion_length", "log_history"}
_TRL_PREFIXES = ("completions/", "rewards/", "clip_ratio/", "objective/", "policy/", "loss/")
_OPENRLHF_KEYS = {
    "policy_loss",
    "actor_lr",
    "policy_entropy",
    "response_length",
    "total_length",
    "return",
    "actor_loss",
}
#: The prefix TRL's wandb / TensorBoard callbacks (transformers) and OpenRLHF put on training metrics.
TRAIN_PREFIX = "train/"


@dataclass(frozen=True)
class Sniffed:
    """A guess of the framework behind a set of keys; ``strong`` when framework-specific keys decided it."""

    framework: str
    strong: bool
    prefix: str = ""  # stripped from every key before mapping (``train/`` of a TRL wandb export)


def sniff_keys(keys: set[str]) -> Sniffed | None:
    """The framework whose key names these are, or None when they do not tell."""
    if any(k.startswith(_VERL_PREFIXES) for k in keys):
        return Sniffed("verl", True)
    if keys & _TRL_KEYS or any(k.startswith(_TRL_PREFIXES) for k in keys):
        return Sniffed("trl", True)
    stripped = {k[len(TRAIN_PREFIX) :] for k in keys if k.startswith(TRAIN_PREFIX)}
    if stripped:
        if stripped & _OPENRLHF_KEYS:
            return Sniffed("openrlhf", True)
        if stripped & _TRL_KEYS or any(k.startswith(_TRL_PREFIXES) for k in stripped):
            return Sniffed("trl", True, TRAIN_PREFIX)
    if keys & _OPENRLHF_KEYS - {"response_length"}:
        return Sniffed("openrlhf", True)
    if keys & set(STEP_METRICS):
        return Sniffed("jsonl", False)
    if keys & {"reward", "kl", "rewards", "response_length"}:
        return Sniffed("jsonl", False)
    if keys & {"loss", "learning_rate", "epoch", "grad_norm"}:
        return Sniffed("trl", False)
    return None
