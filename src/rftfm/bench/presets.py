"""Benchmark presets: which runs RFT-FaultBench generates.

Design rules (so no detector can score by spotting a configuration):

* every fault type at both strengths, with onset at step 1 (published protocol) and
  mid-run (so delay and rollback can be measured; spread over 20-70 % of the run);
* beside every hard faulty run, an un-injected *control* run with the same configuration
  (and the same onset, as a label) in the same group directory;
* *normal* runs on every configuration that faulty runs use;
* every run has its own seed, so a held-out-seed split never shares a seed.

``mini``, ``full`` and ``wide`` draw a pool of training configurations from the configuration
space (:mod:`rftfm.bench.config_space`: task groups, model families and sizes, optimiser, loss
and sampling settings, logging cadence, run length) and place the runs on it; the pool covers
every task group with both model families and both KL regimes. Types marked as the wild
extension are included. ``classic`` and ``classic-mini`` are the published benchmark's
configuration (three task groups, two GPT-2 sizes, 28 / 16 steps of 8 x 8 trajectories, the
16 published types) -- the runs the remediation evaluation and the demo were measured on.
"""

from __future__ import annotations

import itertools
import math
import random
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rftfm.bench.config_space import GROUP_SHAPES, RUN_LENGTHS, TrainingConfig, draw_config
from rftfm.bench.runner import with_defaults
from rftfm.engine.model import MODEL_FAMILIES, SIZES
from rftfm.engine.tasks import CLASSIC_TASKS, TASK_GROUPS
from rftfm.faults.taxonomy import FAULT_TYPES, NORMAL_GROUP, PUBLISHED_TYPES, STRENGTHS, group_dir
from rftfm.records import RunInfo

if TYPE_CHECKING:
    import polars as pl


@dataclass(frozen=True)
class ClassicPreset:
    """The published benchmark's configuration: (task group, GPT-2 size) pairs, fixed run length."""

    name: str
    runs_per_type_strength: int  # faulty runs for each (type, strength)
    normal_per_config: int  # normal runs for each (task group, model size)
    num_steps: int
    mid_onset: int  # the mid-run onset step


@dataclass(frozen=True)
class SpacePreset:
    """Runs placed on a pool of configurations drawn from the configuration space."""

    name: str
    configs: int  # configurations drawn (task group and family rotate, so all are covered)
    runs_per_type_strength: int  # faulty runs for each (type, strength), published and wild
    normal_runs: int  # spread round-robin over the configurations
    #: (num_steps, weight) of the configurations' run lengths
    run_lengths: tuple[tuple[int, float], ...] = tuple((n, 1.0) for n in RUN_LENGTHS)
    group_shapes: tuple[tuple[int, int], ...] = GROUP_SHAPES
    #: the costlier sizes get their own run lengths and group shapes (a preset's time budget)
    large_sizes: tuple[str, ...] = ()
    large_run_lengths: tuple[tuple[int, float], ...] = ()
    large_group_shapes: tuple[tuple[int, int], ...] = ()
    salt: int = 0  # which pool of configurations (a different salt draws a different pool)
    seed_offset: int = 0  # first run seed - 1
    description: str = field(default="", compare=False)


#: Run lengths and group shapes of the full and wide presets, sized from the measured generator throughput
#: (``benchmarks/bench_generate.py``: a GPT-2 ``l`` step costs about 4x an ``xs`` one): 20 to 200 steps on
#: the two small sizes, up to 60 steps of 32 trajectories on the two large ones.
FULL_RUN_LENGTHS = ((20, 0.2), (30, 0.25), (40, 0.2), (60, 0.15), (100, 0.12), (200, 0.08))
LARGE_SIZES = ("m", "l")
LARGE_RUN_LENGTHS = ((20, 0.3), (30, 0.3), (40, 0.25), (60, 0.15))
LARGE_GROUP_SHAPES = ((4, 8), (8, 4), (16, 2))

PRESETS: dict[str, ClassicPreset | SpacePreset] = {
    "mini": SpacePreset("mini", configs=8, runs_per_type_strength=1, normal_runs=8, run_lengths=((8, 1.0),),
                        group_shapes=((4, 2), (8, 2), (16, 1)), salt=1, seed_offset=100_000,
                        description="every task group, family, size, KL regime and fault type; 8-step runs"),
    "full": SpacePreset("full", configs=64, runs_per_type_strength=16, normal_runs=192, run_lengths=FULL_RUN_LENGTHS,
                        large_sizes=LARGE_SIZES, large_run_lengths=LARGE_RUN_LENGTHS,
                        large_group_shapes=LARGE_GROUP_SHAPES, salt=2, seed_offset=200_000,
                        description="1,200 runs over 64 configurations (every task x family x size), 20-200 steps"),
    "wide": SpacePreset("wide", configs=384, runs_per_type_strength=140, normal_runs=1_300,
                        run_lengths=FULL_RUN_LENGTHS,
                        large_sizes=LARGE_SIZES, large_run_lengths=LARGE_RUN_LENGTHS,
                        large_group_shapes=LARGE_GROUP_SHAPES, salt=3, seed_offset=1_000_000,
                        description="10,120 runs over 384 configurations, for a Ray cluster"),
    "classic-mini": ClassicPreset("classic-mini", runs_per_type_strength=1, normal_per_config=1, num_steps=16,
                                  mid_onset=6),
    "classic": ClassicPreset("classic", runs_per_type_strength=24, normal_per_config=8, num_steps=28, mid_onset=10),
}
CLASSIC_SIZES = ("xs", "s")


def preset_runs(name: str) -> list[RunInfo]:
    """All runs of preset ``name``, in a deterministic, balanced order (a partial generation is usable)."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
    preset = PRESETS[name]
    if isinstance(preset, ClassicPreset):
        return _classic_runs(preset)
    return _space_runs(preset)


def preset_configs(preset: SpacePreset) -> list[TrainingConfig]:
    """The configuration pool. Task group, family and size rotate so that every 64 consecutive
    configurations hold each (task, family, size) once (8 hold every task, both families, every size);
    the KL regime alternates so that every task and every model meets both. The other axes are drawn."""
    tasks, families, sizes = list(TASK_GROUPS), list(MODEL_FAMILIES), list(SIZES)
    n = len(tasks)
    pool = []
    for i in range(preset.configs):
        size = sizes[(i // 2 + i // (2 * n)) % len(sizes)]
        large = size in preset.large_sizes
        pool.append(draw_config(
            preset.salt * 1_000_003 + i,
            task_groups=[tasks[i % n]],
            families=[families[(i + i // n) % len(families)]],
            sizes={size: 1.0},
            run_lengths=preset.large_run_lengths if large else preset.run_lengths,
            group_shapes=preset.large_group_shapes if large else preset.group_shapes,
            beta_zero=((i // 2) + (i // n)) % 2 == 1,
        ))
    return pool


def mid_onset(num_steps: int, seed: int) -> int:
    """A mid-run onset, uniform over 20-70 % of the run (at least step 2)."""
    rng = random.Random(zlib.crc32(f"onset-{seed}".encode()))
    return max(2, rng.randint(math.ceil(0.2 * num_steps), max(math.ceil(0.2 * num_steps), int(0.7 * num_steps))))


def _space_runs(preset: SpacePreset) -> list[RunInfo]:
    pool = preset_configs(preset)
    seed = itertools.count(preset.seed_offset + 1)
    faulty: list[tuple[tuple[str, str, int], RunInfo]] = []
    for t_index, ftype in enumerate(FAULT_TYPES.values()):
        eligible = [c for c in pool if ftype.applies_to(c.task_group, c.beta)]
        if not eligible:
            raise ValueError(f"preset {preset.name}: no configuration can host {ftype.name}")
        for strength in STRENGTHS:
            group = group_dir(ftype.family, strength)
            for i in range(preset.runs_per_type_strength):
                # rotate through the eligible configurations, each (type, strength) from its own offset
                config = eligible[(i + 2 * t_index + (strength == "hard")) % len(eligible)]
                s = next(seed)
                onset = 1 if (i + t_index) % 2 == 0 else mid_onset(config.num_steps, s)
                label = dict(group=group, onset_step=onset, fault_family=ftype.family)
                faulty.append(((strength, ftype.name, i), config.run(
                    run_id=f"{ftype.name}-{strength}-{config.config_id}-o{onset}-s{s}", seed=s,
                    control_or_fault="fault", fault_type=ftype.name, fault_strength=strength, **label)))
                if strength == "hard":
                    c = next(seed)
                    faulty.append((("control", ftype.name, i), config.run(
                        run_id=f"control-{ftype.name}-{config.config_id}-o{onset}-s{c}", seed=c,
                        control_or_fault="control", **label)))
    normal = []
    for j in range(preset.normal_runs):
        config, s = pool[j % len(pool)], next(seed)
        normal.append(config.run(run_id=f"normal-{config.config_id}-s{s}", group=NORMAL_GROUP, seed=s,
                                 control_or_fault="normal"))
    # normal runs first, then round-robin over (setting, type): every prefix is balanced
    ranked = sorted(faulty, key=lambda item: (item[0][2], item[0][0], list(FAULT_TYPES).index(item[0][1])))
    return normal + [run for _, run in ranked]


def _classic_runs(preset: ClassicPreset) -> list[RunInfo]:
    runs: list[RunInfo] = []
    seed = itertools.count(1)
    for ftype in PUBLISHED_TYPES.values():
        tasks = [t for t in ftype.task_groups or CLASSIC_TASKS if t in CLASSIC_TASKS]
        configs = list(itertools.product(tasks, CLASSIC_SIZES, (1, preset.mid_onset)))
        for strength in STRENGTHS:
            group = group_dir(ftype.family, strength)
            for i in range(preset.runs_per_type_strength):
                # rotate through configurations so every preset size covers them evenly
                offset = (list(PUBLISHED_TYPES).index(ftype.name) + (strength == "hard")) % len(configs)
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
    for task, size in itertools.product(CLASSIC_TASKS, CLASSIC_SIZES):
        for _ in range(preset.normal_per_config):
            s = next(seed)
            runs.append(RunInfo(
                run_id=f"normal-{task}-{size}-s{s}", group=NORMAL_GROUP, task_group=task, model_size=size,
                seed=s, control_or_fault="normal", num_steps=preset.num_steps,
            ))
    return [_classic_config_id(with_defaults(r)) for r in _balanced_order(runs)]


def _classic_config_id(info: RunInfo) -> RunInfo:
    return info.model_copy(update={"config_id": f"classic-{info.task_group}-gpt2-{info.model_size}-{info.num_steps}"})


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
