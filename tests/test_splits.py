"""Leave-configuration-out folds and the seed / task / size splits."""

from __future__ import annotations

import polars as pl
import pytest

from rftfm.bench.presets import preset_runs_table
from rftfm.bench.splits import config_folds, folds, split_runs


def test_config_folds_hold_out_whole_configurations_without_sharing_seeds() -> None:
    runs = preset_runs_table("full")
    result = {name: (train, test) for name, train, test in config_folds(runs)}
    for name in ("task=fmt_sub", "task=tool_sub", "family=qwen2", "family=gpt2", "size=l", "size=xs", "beta=0",
                 "schedule=cosine", "logging_steps>1", "num_steps>=100"):
        assert name in result, name
    for name, (train, test) in result.items():
        assert train.height + test.height == runs.height, name
        assert not set(train["seed"]) & set(test["seed"]), name
        assert set(test["control_or_fault"]) >= {"normal", "fault"}, name  # normal and faulty runs held out alike
    train, test = result["family=qwen2"]
    assert set(test["model_family"]) == {"qwen2"} and "qwen2" not in set(train["model_family"])
    train, test = result["beta=0"]
    assert (test["beta"] == 0).all() and (train["beta"] > 0).all()
    shapes = [(name, train.height, test.height) for name, (train, test) in result.items()]
    assert [(name, train.height, test.height) for name, train, test in folds(runs, "config")] == shapes
    assert len(folds(runs, "seed")) == 1


def test_split_runs_keeps_the_seed_task_and_size_splits() -> None:
    runs = preset_runs_table("classic")
    for split in ("seed", "task", "size"):
        train, test = split_runs(runs, split)
        assert train.height + test.height == runs.height and test.height and train.height
    assert set(split_runs(runs, "task")[1]["task_group"]) == {"arith_b"}
    with pytest.raises(ValueError):
        split_runs(runs, "config")
    published = pl.DataFrame({"run_id": ["a", "b", "c"], "task_group": ["arith_a"] * 3})
    assert [name for name, _, _ in config_folds(published)] == []  # no axis varies: no fold


def test_held_out_config_folds_for_artifacts_and_a_later_evaluation() -> None:
    from rftfm.bench.splits import held_out

    runs = preset_runs_table("mini")
    names = [name for name, _, _ in config_folds(runs)]
    train, test = held_out(runs, "config", f"{names[0]},{names[-1]}")
    assert train.height + test.height == runs.height
    assert not set(train["run_id"].to_list()) & set(test["run_id"].to_list())
    for name, _, fold_test in config_folds(runs):
        if name in (names[0], names[-1]):
            assert set(fold_test["run_id"].to_list()) <= set(test["run_id"].to_list())
    with pytest.raises(ValueError, match="needs --fold"):
        held_out(runs, "config", "task=nonexistent")
    assert held_out(runs, "seed")[1].height == split_runs(runs, "seed")[1].height


def test_listed_split_holds_out_exactly_the_listed_runs(tmp_path) -> None:
    runs = preset_runs_table("mini")
    listed = runs["run_id"].to_list()[::3]
    path = tmp_path / "later.txt"
    path.write_text("\n".join(listed) + "\n")
    train, test = split_runs(runs, f"listed:{path}")
    assert sorted(test["run_id"]) == sorted(listed) and train.height + test.height == runs.height
    assert not set(train["run_id"]) & set(listed)
    path.write_text("no-such-run\n")
    with pytest.raises(ValueError, match="not in the data"):
        split_runs(runs, f"listed:{path}")
    with pytest.raises(ValueError, match="cannot read"):
        split_runs(runs, f"listed:{tmp_path / 'missing.txt'}")
