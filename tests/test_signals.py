"""The signal registry is the one list of metrics: every metric name the library names is registered."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import rftfm
from rftfm.fm.cube import CUBE_SIGNALS
from rftfm.fm.features import FEATURES
from rftfm.records import STEP_METRICS, RunInfo, StepRecord, TrajectoryRecord
from rftfm.signals import SIGNALS, is_reward_component, label, names

SRC = Path(rftfm.__file__).parent
#: What a metric name looks like in this code base: snake case naming a training quantity.
METRIC_LIKE = re.compile(r"^(traj_[a-z_]+|[a-z_]*(reward|kl|entropy|policy|grad|clip|completion|truncat|zero_std|advantage|"
                         r"repetition|unique|tool|eval)[a-z_]*_(mean|std|ratio|rate|norm|loss|groups|accuracy|absmax|"
                         r"excess|steps|max|region|low|high))$")
#: The modules that treat metrics specially (framework adapters in ``io`` map foreign names on purpose).
SCANNED = ("fm", "bench/baselines", "report", "integrations")
SCHEMA_FIELDS = set(StepRecord.model_fields) | set(TrajectoryRecord.model_fields) | set(RunInfo.model_fields)


def _string_constants(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)}


def test_every_metric_name_in_the_library_is_registered_or_a_schema_field():
    unknown: dict[str, set[str]] = {}
    for path in (p for folder in SCANNED for p in (SRC / folder).rglob("*.py")):
        for text in _string_constants(path):
            if METRIC_LIKE.match(text) and text not in SIGNALS and text not in SCHEMA_FIELDS:
                unknown.setdefault(text, set()).add(str(path.relative_to(SRC)))
    assert not unknown, f"metric names not in rftfm.signals: {unknown}"


def test_the_schema_and_the_features_follow_the_registry():
    assert names(source="step") == STEP_METRICS
    assert set(FEATURES) == set(names(source="step", feature=True)) | set(names(source="trajectory"))
    assert set(CUBE_SIGNALS) == set(FEATURES) | set(names(source="derived"))
    for name in FEATURES:
        assert SIGNALS[name].feature
    for sig in SIGNALS.values():
        assert sig.duplicates is None or sig.duplicates in SIGNALS


def test_labels_and_reward_components():
    assert label("kl") == "KL"
    assert label("rewards/format_reward/mean") == "reward 'format_reward'"
    assert is_reward_component("rewards/accuracy/mean") and is_reward_component("rewards/accuracy")
    assert not is_reward_component("rewards/accuracy/std") and not is_reward_component("reward")
