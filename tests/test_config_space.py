"""The configuration space: deterministic draws, every axis a RunInfo field, ranges as documented."""

from __future__ import annotations

import math

from rftfm.bench.config_space import CONFIG_AXES, LR_RANGE, RUN_LENGTHS, draw_config, with_length
from rftfm.engine.tasks import TASK_GROUPS, task_group
from rftfm.records import RunInfo


def test_a_configuration_is_a_function_of_its_seed_and_a_valid_run() -> None:
    assert draw_config(7) == draw_config(7) and draw_config(7).config_id == draw_config(7).config_id
    configs = [draw_config(seed) for seed in range(300)]
    assert len({c.config_id for c in configs}) == len(configs)
    for c in configs:
        assert c.max_completion_length >= task_group(c.task_group).min_completion_length
        assert c.num_steps % c.logging_steps == 0 and c.eval_every % c.logging_steps == 0
        assert LR_RANGE[0] * 0.99 <= c.learning_rate <= LR_RANGE[1] * 1.01
        assert c.epsilon_high >= c.epsilon and 4 <= c.num_generations <= 16
        info = c.run(run_id="r", group="normal", seed=1)
        assert isinstance(info, RunInfo) and all(getattr(info, axis) == getattr(c, axis) for axis in CONFIG_AXES)
        assert info.config_id == c.config_id
    assert {c.task_group for c in configs} == set(TASK_GROUPS)
    assert {c.beta == 0 for c in configs} == {True, False}
    assert {c.lr_scheduler for c in configs} == {"constant", "linear", "cosine"}
    assert math.log10(LR_RANGE[1] / LR_RANGE[0]) >= 1.5 and min(RUN_LENGTHS) <= 20 and max(RUN_LENGTHS) >= 200


def test_narrowed_axes_and_run_length_changes() -> None:
    c = draw_config(3, task_groups=["tool_sub"], families=["qwen2"], sizes={"l": 1.0}, beta_zero=True,
                    run_lengths=[(200, 1.0)])
    assert (c.task_group, c.model_family, c.model_size, c.beta) == ("tool_sub", "qwen2", "l", 0.0)
    assert c.num_steps == 200 and c.eval_every * 40 >= 200
    short = with_length(c, 21)
    assert short.num_steps % short.logging_steps == 0 and short.config_id != c.config_id
