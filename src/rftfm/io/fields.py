"""One run's logged metrics -> StepRecord fields, with each field's source key chosen once per run.

A field is filled from the first of its candidate keys (:func:`rftfm.io.mapping.candidates`)
present at the first step that logs any of them, and from that key only for the rest of the
run: a NaN in ``critic/score/mean`` never makes ``critic/rewards/mean`` the reward for one step.
Every step at which the chosen key is absent, NaN, infinite or not a number is counted, so the
summary can say "reward_mean missing at 50 of 50 steps: no key `reward` or `rewards/*/mean`".
Values that are not finite reach the record as ``None`` (missing); the counts keep them apart.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from rftfm.io.mapping import (
    GENERIC_KEYS,
    IGNORED_KEYS,
    MISSING_HINTS,
    NOT_RL_EVIDENCE,
    Candidate,
    Pattern,
    candidates,
)
from rftfm.records import LABEL_FIELDS, STEP_METRICS, finite_or_none

#: A logged key with a scale in its name, e.g. verl's ``actor/lr(1e-4)``: the value is in units of the scale.
_SCALED = re.compile(r"^(?P<base>.+)\((?P<scale>\d+(?:\.\d+)?e[-+]?\d+)\)$")
#: Fields whose absence from a whole run is worth a sentence (a framework that never logs step
#: time or a validation score is not news).
SIGNAL_FIELDS = frozenset(
    {
        "reward_mean",
        "reward_std",
        "kl",
        "entropy",
        "policy_loss",
        "grad_norm",
        "completion_length_mean",
        "truncated_ratio",
        "frac_zero_std_groups",
    }
)
#: Fields logged only every few steps by design (validation): their gaps are not problems.
PERIODIC_FIELDS = frozenset({"eval_accuracy"})
#: Keys never kept in ``extra``: step counters, labels, our own field names.
_NOT_EXTRA = frozenset(IGNORED_KEYS | LABEL_FIELDS | set(STEP_METRICS))
#: At most this many step numbers are remembered per field and problem (the counts are exact).
KEEP_STEPS = 20


@dataclass
class FieldCount:
    """What one field's source gave over a run."""

    source: str | None = None  # the logged key chosen for this run
    present: int = 0  # steps with a finite value
    missing: int = 0  # steps without the key (or before any candidate was seen)
    null: int = 0  # steps with the key but no value (JSON null)
    nan: int = 0
    inf: int = 0
    not_number: int = 0
    first_bad_steps: list[int] = field(default_factory=list)

    def bad(self, step: int) -> None:
        if len(self.first_bad_steps) < KEEP_STEPS:
            self.first_bad_steps.append(step)

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "present": self.present,
            "missing": self.missing,
            "null": self.null,
            "nan": self.nan,
            "inf": self.inf,
            "not_number": self.not_number,
        }


def classify(value: Any) -> tuple[float | None, str]:
    """(finite value or None, 'ok' | 'null' | 'nan' | 'inf' | 'not_number')."""
    if value is None:  # the key logged without a value (JSON null; a table's empty cell)
        return None, "null"
    if isinstance(value, bool):
        return None, "not_number"
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None, "not_number"
    if math.isnan(number):
        return None, "nan"
    if math.isinf(number):
        return None, "inf"
    return number, "ok"


def _label(candidate: Candidate) -> str:
    return candidate.label if isinstance(candidate, Pattern) else candidate


def scaled(metrics: dict[str, Any]) -> dict[str, Any]:
    """``actor/lr(1e-4): 0.01`` -> also ``actor/lr: 1e-6`` (unless the plain key is logged)."""
    out = {}
    for key, value in metrics.items():
        match = _SCALED.match(key) if "(" in key else None
        if match and match["base"] not in metrics:
            number = finite_or_none(value)
            out[match["base"]] = number * float(match["scale"]) if number is not None else value
    return out


class FieldResolver:
    """Maps one run's flat metric dicts to StepRecord fields; counts what each field's source gave."""

    def __init__(self, framework: str, prefix: str = ""):
        self.framework, self.prefix = framework, prefix
        self.candidates = candidates(framework)
        self.table_keys = candidates(framework, own_names=False)
        self.counts: dict[str, FieldCount] = {name: FieldCount() for name in STEP_METRICS}
        self.steps = 0
        self._last_keys: Any = None

    def _strip(self, metrics: dict[str, Any]) -> dict[str, Any]:
        if not self.prefix:
            return metrics
        n = len(self.prefix)
        return {(k[n:] if isinstance(k, str) and k.startswith(self.prefix) else k): v for k, v in metrics.items()}

    def _find(self, name: str, keys: list[str], metrics: dict[str, Any]) -> str | None:
        for candidate in self.candidates[name]:
            if isinstance(candidate, Pattern):
                found = candidate.match(keys)
                if found is not None:
                    return found
            elif candidate in metrics:
                return candidate
        return None

    def prepare(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """One logged dict as the tables see it: the run's prefix stripped, scaled keys converted."""
        stripped = self._strip(metrics)
        extra = scaled(metrics)
        return {**stripped, **extra} if extra else stripped

    def is_rl_step(self, metrics: dict[str, Any]) -> bool:
        """The (prepared) line logs an RL signal (reward, KL, lengths, clipping, ...), not only what SFT logs too."""
        keys: list[str] | None = None
        for name in STEP_METRICS:
            if name in NOT_RL_EVIDENCE:
                continue
            source = self.counts[name].source
            if source is not None and source in metrics:
                key: str | None = source
            else:
                keys = keys if keys is not None else [k for k in metrics if isinstance(k, str)]
                key = self._find(name, keys, metrics)
            if key is not None and key not in GENERIC_KEYS:
                return True
        return False

    def map(self, metrics: dict[str, Any], step: int) -> tuple[dict[str, float | None], dict[str, float | None]]:
        """(fields, extra) of one (prepared) training step; fixes each field's source at its first appearance."""
        keys: list[str] | None = None
        self.steps += 1
        fields: dict[str, float | None] = {}
        used: set[str] = set()
        # a line with the same keys as the last one cannot give a field without a source one
        same_keys = metrics.keys() == self._last_keys
        self._last_keys = metrics.keys()
        for name in STEP_METRICS:
            count = self.counts[name]
            if count.source is None and not same_keys:
                keys = keys if keys is not None else [k for k in metrics if isinstance(k, str)]
                count.source = self._find(name, keys, metrics)
            if count.source is None or count.source not in metrics:
                count.missing += 1
                continue
            used.add(count.source)
            value, kind = classify(metrics[count.source])
            if kind == "ok":
                count.present += 1
                fields[name] = value
            else:
                setattr(count, kind, getattr(count, kind) + 1)
                count.bad(step)
        skip = used | _NOT_EXTRA
        extra: dict[str, float | None] = {}
        for key, value in metrics.items():
            if key in skip:
                continue
            kind = type(value)
            if kind is float:
                extra[str(key)] = value if math.isfinite(value) else None
            elif kind is int:
                extra[str(key)] = finite_or_none(value)
        return fields, extra

    def report(self) -> dict[str, dict[str, Any]]:
        """field -> its source and counts, for the fields this run logged or its framework may log."""
        out = {}
        for name, count in self.counts.items():
            if count.source is None and not self._expected(name):
                continue
            out[name] = count.as_dict()
        return out

    def _expected(self, name: str) -> bool:
        """A field the framework's tables map (not merely our own name, which every format accepts)."""
        return bool(self.table_keys[name]) and self.framework != "jsonl"

    def problems(self) -> list[str]:
        """One sentence per field that was absent, null, NaN, infinite or not a number at some step (a field logged
        every few steps by design, :data:`PERIODIC_FIELDS`, is not absent or null between)."""
        lines = []
        for name, count in self.counts.items():
            if not self.steps:
                break
            if count.source is None:
                if self._expected(name) and name in SIGNAL_FIELDS:
                    keys = [f"`{_label(c)}`" for c in self.table_keys[name]]
                    hint = MISSING_HINTS.get((self.framework, name))
                    lines.append(
                        f"{name} missing at {self.steps} of {self.steps} steps: no key {_or(keys)}"
                        + (f" ({hint})" if hint else "")
                    )
                continue
            where = f" (first at step {count.first_bad_steps[0]})" if count.first_bad_steps else ""
            for kind, label in (
                ("missing", "missing"),
                ("null", "null (no value)"),
                ("nan", "NaN"),
                ("inf", "infinite"),
                ("not_number", "not a number"),
            ):
                n = getattr(count, kind)
                if n and not (kind in ("missing", "null") and name in PERIODIC_FIELDS):
                    lines.append(
                        f"{name} {label} at {n} of {self.steps} steps (key `{count.source}`)"
                        + (where if kind != "missing" else "")
                    )
        return lines


def _or(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]
