"""Benchmark presets: which runs RFT-FaultBench generates.

Design rules (so no detector can score by spotting a configuration):

* every fault type at both strengths, with onset at step 1 (published protocol) and
  mid-run (so delay and rollback can be measured);
* beside every hard faulty run, an un-injected *control* run with the same configuration
  (task group, model size, onset, hyper-parameters) in the same group directory;
* *normal* runs over every (task group, model size) that faulty runs use;
* every run has its own seed, so a held-out-seed split never shares a seed.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rftfm.engine.model import MODEL_SIZES
from rftfm.bench.runner import with_defaults
from rftfm.engine.tasks import TASK_GROUPS
from rftfm.faults.taxonomy import FAULT_TYPES, NORMAL_GROUP, STRENGTHS, group_dir
from rftfm.records import RunInfo

if TYPE_CHECKING:
    import polars as pl


@dataclass(frozen=True)
class Preset:
    name: str
    runs_per_type_strength: int  # faulty runs for each (type, strength)
    normal_per_config: int  # normal runs for each (task group, model size)
    num_steps: int
    mid_onset: int  # the mid-run onset step


PRESETS: dict[str, Preset] = {
    "mini": Preset("mini", runs_per_type_strength=1, normal_per_config=1, num_steps=16, mid_onset=6),
    "full": Preset("full", runs_per_type_strength=24, normal_per_config=8, num_steps=28, mid_onset=10),
}


def preset_runs(name: str) -> list[RunInfo]:
    """All runs of preset ``name``, in a deterministic order."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
    preset = PRESETS[name]
    runs: list[RunInfo] = []
    seed = itertools.count(1)
    sizes = list(MODEL_SIZES)
    for ftype in FAULT_TYPES.values():
        tasks = list(ftype.task_groups or TASK_GROUPS)
        configs = list(itertools.product(tasks, sizes, (1, preset.mid_onset)))
        for strength in STRENGTHS:
            group = group_dir(ftype.family, strength)
            for i in range(preset.runs_per_type_strength):
                # rotate through configurations so every preset size covers them evenly
                offset = (list(FAULT_TYPES).index(ftype.name) + (strength == "hard")) % len(configs)
                task, size, onset = configs[(i + offset) % len(configs)]
                common = dict(
                    group=group, task_group=task, model_size=size, onset_step=onset,
                    num_steps=preset.num_steps, fault_family=ftype.family,
                )
                s = next(seed)
                runs.append(RunInfo(
                    run_id=f"{ftype.name}-{strength}-{task}-{size}-o{onset}-s{s}", seed=s,
                    control_or_fault="fault", fault_type=ftype.name, fault_strength=strength, **common,
                ))
                if strength == "hard":
                    c = next(seed)
                    runs.append(RunInfo(
                        run_id=f"control-{ftype.name}-{task}-{size}-o{onset}-s{c}", seed=c,
                        control_or_fault="control", **common,
                    ))
    for task, size in itertools.product(TASK_GROUPS, sizes):
        for _ in range(preset.normal_per_config):
            s = next(seed)
            runs.append(RunInfo(
                run_id=f"normal-{task}-{size}-s{s}", group=NORMAL_GROUP, task_group=task, model_size=size,
                seed=s, control_or_fault="normal", num_steps=preset.num_steps,
            ))
    return [with_defaults(r) for r in _balanced_order(runs)]


def preset_runs_table(name: str) -> pl.DataFrame:
    """The runs table of preset ``name`` (what :func:`rftfm.io.loader.load_runs` gives for its
    generated data), without generating anything: what re-training evaluations need."""
    from rftfm.io.loader import runs_table

    return runs_table(preset_runs(name))


def _balanced_order(runs: list[RunInfo]) -> list[RunInfo]:
    """Normal runs first, then round-robin over (type, strength), so a partly generated
    benchmark is already balanced (seeds were assigned above and do not change)."""
    normal = [r for r in runs if r.control_or_fault == "normal"]
    rank: dict[tuple, int] = {}
    keyed = []
    for r in runs:
        if r.control_or_fault == "normal":
            continue
        key = (r.group, r.run_id.split("-")[1] if r.control_or_fault == "control" else r.fault_type)
        rank[key] = rank.get(key, -1) + (r.control_or_fault == "fault")
        keyed.append((rank[key], r))
    return normal + [r for _, r in sorted(keyed, key=lambda x: x[0])]
