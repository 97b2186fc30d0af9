"""Framework log adapters on logs of a real TRL run and on samples of each framework's documented keys."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from watch_fixtures import train_real_run, write_jsonl

from rftfm.engine.trainer import TRL_STEP_KEYS as ENGINE_TRL_KEYS
from rftfm.io.adapters import (
    OPENRLHF_STEP_KEYS,
    TRL_STEP_KEYS,
    FormatMismatch,
    LogSource,
    StepParser,
    coverage,
    read_log,
    sniff,
)
from rftfm.io.faultbench import STEP_FILE, TRAJ_FILE
from rftfm.io.loader import STEP_ALIASES
from rftfm.records import STEP_METRICS

SHARED = (
    "reward_mean",
    "reward_std",
    "kl",
    "entropy",
    "policy_loss",
    "grad_norm",
    "learning_rate",
    "clip_ratio_region",
    "completion_length_mean",
    "completion_length_max",
    "truncated_ratio",
)


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    return train_real_run(tmp_path_factory.mktemp("trl"), num_steps=6)


# --- logs of a real TRL run ---------------------------------------------------------------------


def test_trl_on_log_jsonl_matches_the_engine_records(real_run):
    events, stats = read_log(real_run.trl_jsonl)
    assert stats.format == "trl"
    assert [s.step for s, _ in events] == [1, 2, 3, 4, 5, 6]
    assert stats.non_step_lines == 1  # TRL's final train_runtime summary is not a step
    layout, _ = read_log(real_run.run_dir)
    for (trl_step, trajs), (ref, _) in zip(events, layout):
        assert trajs == []  # TRL metric logs carry no per-trajectory records
        for name in SHARED:
            a, b = getattr(trl_step, name), getattr(ref, name)
            assert (a is None and b is None) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12), name
        assert trl_step.frac_zero_std_groups is not None  # from frac_reward_zero_std
        assert trl_step.eval_accuracy is None  # TRL does not log it: missing, not invented
        assert "num_tokens" in trl_step.extra  # unknown numeric keys are kept


def test_trainer_state_log_history(real_run):
    events, stats = read_log(real_run.trainer_state)
    assert stats.format == "trl"
    by_jsonl, _ = read_log(real_run.trl_jsonl)
    assert [s.model_dump(exclude={"run_id"}) for s, _ in events] == [
        s.model_dump(exclude={"run_id"}) for s, _ in by_jsonl
    ]
    # a TRL output directory is found through its trainer_state.json too
    assert len(read_log(real_run.trainer_state.parent)[0]) in (6,)


def test_on_log_dicts_in_memory_parse_like_the_file(real_run):
    parser = StepParser("auto", run_id="x")
    records = [parser.parse_line(json.dumps(row)) for row in real_run.on_log]
    assert [r.step for r in records if r is not None] == [1, 2, 3, 4, 5, 6]
    assert parser.format == "trl"


def test_openrlhf_layout_run_directory(real_run):
    events, stats = read_log(real_run.run_dir)
    assert stats.format == "openrlhf"
    assert events[0][0].run_id == real_run.info.run_id
    assert len(events) == 6
    for step, trajs in events:
        assert len(trajs) == 64  # 8 prompts x 8 generations
        assert {t.rollout_step for t in trajs} == {step.step}
        assert all(t.completion is not None and t.fault_injection is None for t in trajs)
        assert step.fault_injection is None  # labels never reach the monitor
        assert step.eval_accuracy is not None and step.frac_zero_std_groups is not None


def test_openrlhf_layout_followed_while_it_grows(real_run, tmp_path):
    src = real_run.run_dir / "train"
    steps = (src / STEP_FILE).read_text().splitlines(keepends=True)
    trajs = (src / TRAJ_FILE).read_text().splitlines(keepends=True)
    dst = tmp_path / "live" / "train"
    dst.mkdir(parents=True)
    (dst / STEP_FILE).write_text("")
    (dst / TRAJ_FILE).write_text("")
    source = LogSource(dst.parent, "auto", run_id="live")
    released = []
    for i in range(3):
        with open(dst / STEP_FILE, "a") as f:
            f.write(steps[i])
        with open(dst / TRAJ_FILE, "a") as f:
            f.writelines(trajs[64 * i : 64 * i + 40])  # the step's trajectories, not all written yet
        released += source.poll()
        assert all(len(t) == 64 for _, t in released)  # a step is never released with part of its trajectories
        with open(dst / TRAJ_FILE, "a") as f:
            f.writelines(trajs[64 * i + 40 : 64 * (i + 1)])
    released += source.poll()
    released += source.poll()  # idle poll releases the last step
    assert [s.step for s, _ in released] == [1, 2, 3]
    assert all(len(t) == 64 for _, t in released)
    source.close()


# --- samples written from each framework's documented keys ---------------------------------------

VERL_ROW = {
    "critic/score/mean": 0.42,
    "critic/score/max": 1.0,
    "critic/rewards/mean": 0.40,
    "critic/advantages/mean": 0.0,
    "critic/returns/mean": 0.4,
    "actor/entropy": 0.81,
    "actor/ppo_kl": 0.002,
    "actor/kl_loss": 0.013,
    "actor/pg_clipfrac": 0.05,
    "actor/pg_clipfrac_lower": 0.01,
    "actor/pg_loss": -0.02,
    "actor/grad_norm": 0.9,
    "actor/lr": 1e-6,
    "response_length/mean": 310.5,
    "response_length/max": 1024.0,
    "response_length/clip_ratio": 0.03,
    "prompt_length/mean": 120.0,
    "timing_s/step": 55.0,
    "perf/throughput": 1500.0,
    "val-core/openai/gsm8k/acc/mean@1": 0.71,
    "training/global_step": 5,
}


def test_verl_file_logger_lines(tmp_path):
    rows = [{"step": s, "data": {**VERL_ROW, "actor/entropy": 0.8 - s / 100}} for s in (1, 2, 3)]
    events, stats = read_log(write_jsonl(tmp_path / "metrics.jsonl", rows))
    assert stats.format == "verl"
    step = events[0][0]
    assert step.step == 1
    assert step.reward_mean == 0.42  # the verifier score wins over the KL-shaped reward
    assert step.kl == 0.013  # KL to the reference (kl_loss), not the PPO old/new ratio KL
    assert step.entropy == pytest.approx(0.79)
    assert (step.policy_loss, step.grad_norm, step.learning_rate) == (-0.02, 0.9, 1e-6)
    assert (step.clip_ratio_region, step.clip_ratio_low) == (0.05, 0.01)
    assert (step.completion_length_mean, step.completion_length_max, step.truncated_ratio) == (310.5, 1024.0, 0.03)
    assert step.eval_accuracy == 0.71 and step.step_time_s == 55.0
    assert step.reward_std is None and step.frac_zero_std_groups is None  # verl does not log them
    assert step.extra["actor/ppo_kl"] == 0.002 and "perf/throughput" in step.extra


def test_verl_flat_dicts_and_fallbacks(tmp_path):
    row = {k: v for k, v in VERL_ROW.items() if k not in ("critic/score/mean", "actor/kl_loss")}
    row["critic/kl"] = 0.2
    events, _ = read_log(write_jsonl(tmp_path / "flat.jsonl", [row]), "verl")
    step = events[0][0]
    assert step.step == 5  # training/global_step
    assert step.reward_mean == 0.40 and step.kl == 0.2


def test_verl_console_log(tmp_path):
    lines = [
        "(TaskRunner pid=123) Training Progress:   0%|          | 0/3",
        "step:1 - actor/entropy:0.8 - critic/score/mean:0.25 - response_length/mean:100.0 "
        "- actor/pg_loss:np.float64(-0.01)",
        "(TaskRunner pid=123) step:2 - actor/entropy:0.7 - critic/score/mean:0.35 - response_length/mean:120.0",
        "some unrelated, comma, separated text",
    ]
    path = tmp_path / "verl.log"
    path.write_text("\n".join(lines) + "\n")
    events, stats = read_log(path)
    assert stats.format == "verl"
    assert [(s.step, s.reward_mean, s.entropy) for s, _ in events] == [(1, 0.25, 0.8), (2, 0.35, 0.7)]
    assert events[0][0].policy_loss == -0.01
    assert stats.non_step_lines == 2


def test_trl_documented_keys_sample(tmp_path):
    row = {
        "loss": 0.01,
        "grad_norm": 0.5,
        "learning_rate": 1e-6,
        "num_tokens": 5000.0,
        "completions/mean_length": 180.0,
        "completions/max_length": 256.0,
        "completions/clipped_ratio": 0.1,
        "rewards/accuracy_reward/mean": 0.3,
        "reward": 0.3,
        "reward_std": 0.4,
        "frac_reward_zero_std": 0.25,
        "kl": 0.01,
        "entropy": 0.6,
        "clip_ratio/low_mean": 0.0,
        "clip_ratio/high_mean": 0.01,
        "clip_ratio/region_mean": 0.01,
        "tools/call_frequency": 1.5,
        "tools/failure_frequency": 0.2,
        "epoch": 0.1,
        "step": 10,
    }
    eval_row = {"eval_loss": 0.2, "eval_reward": 0.4, "epoch": 0.1, "step": 10}
    events, stats = read_log(write_jsonl(tmp_path / "trl.jsonl", [row, eval_row]))
    step = events[0][0]
    assert stats.format == "trl" and len(events) == 1 and stats.non_step_lines == 1
    assert (step.reward_mean, step.reward_std, step.frac_zero_std_groups, step.truncated_ratio) == (0.3, 0.4, 0.25, 0.1)
    assert (step.clip_ratio_high, step.completion_length_max, step.policy_loss) == (0.01, 256.0, 0.01)
    assert (step.tool_call_frequency, step.tool_failure_frequency) == (1.5, 0.2)  # a trainer with ``tools``
    assert step.extra["rewards/accuracy_reward/mean"] == 0.3


def test_plain_jsonl_and_csv(tmp_path):
    rows = [{"step": i, "reward_mean": i / 10, "kl": 0.01 * i, "custom/thing": 7} for i in (1, 2)]
    events, stats = read_log(write_jsonl(tmp_path / "plain.jsonl", rows))
    assert stats.format == "jsonl"
    assert [(s.step, s.reward_mean, s.kl) for s, _ in events] == [(1, 0.1, 0.01), (2, 0.2, 0.02)]
    assert events[0][0].extra == {"custom/thing": 7.0}
    csv_path = tmp_path / "plain.csv"
    csv_path.write_text("step,reward_mean,entropy,grad_norm\n1,0.1,0.9,\n2,0.2,nan,1.5\n")
    events, stats = read_log(csv_path)
    assert stats.format == "jsonl"
    assert [(s.step, s.reward_mean, s.entropy, s.grad_norm) for s, _ in events] == [
        (1, 0.1, 0.9, None),
        (2, 0.2, None, 1.5),
    ]


def test_bad_input_is_counted_not_raised(tmp_path):
    path = tmp_path / "messy.jsonl"
    path.write_text(
        '{"step": 1, "reward": 0.1, "loss": 0.5}\n'
        "{not json\n"
        "[1, 2, 3]\n"
        '{"step": 2, "reward": NaN, "loss": Infinity, "kl": 0.2}\n'
        '{"step": 1, "reward": 0.3, "loss": 0.1}\n'  # goes back in time: counted, skipped
        '{"step": 3, "reward": "high", "loss": 0.2}\n'
        '{"step": 4, "reward": 0.4, "loss"'  # partial last line, never completed
    )
    events, stats = read_log(path, "trl")
    assert [s.step for s, _ in events] == [1, 2, 3]
    assert events[1][0].reward_mean is None and events[1][0].policy_loss is None  # NaN / inf -> missing
    assert events[2][0].reward_mean is None
    assert stats.malformed_lines == 3 and stats.out_of_order == 1


def test_unknown_format_and_directory_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown format"):
        StepParser("tensorboard")
    with pytest.raises(ValueError, match="without a known log"):
        LogSource(tmp_path)


def test_sniff():
    assert sniff({"metrics": {"reward": 1}}) == "openrlhf"
    assert sniff({"step": 1, "data": {"actor/entropy": 1}}) == "verl"
    assert sniff({"actor/entropy": 1}) == "verl"
    assert sniff({"frac_reward_zero_std": 0.1}) == "trl"
    assert sniff({"reward_mean": 0.1, "step": 1}) == "jsonl"
    assert sniff({"hello": 1}) is None
    assert sniff(None, "step:3 - actor/entropy:0.1") == "verl"


def test_tables_reuse_the_shared_names():
    shared = {k: v for k, v in STEP_ALIASES.items() if v in STEP_METRICS}
    assert shared and set(shared.items()) <= set(OPENRLHF_STEP_KEYS.items())  # the loader's table, reused
    assert set(ENGINE_TRL_KEYS.items()) <= set(TRL_STEP_KEYS.items())  # agrees with the embedded engine
    assert set(OPENRLHF_STEP_KEYS.values()) <= set(STEP_METRICS)
    cov = coverage("verl")
    assert not cov["reward_std"] and not cov["frac_zero_std_groups"] and cov["eval_accuracy"]
    assert not coverage("trl")["eval_accuracy"] and coverage("trl")["frac_zero_std_groups"]
    assert all(coverage("jsonl").values())


def test_trainer_state_rewritten_during_training(real_run, tmp_path):
    """TRL rewrites trainer_state.json at every save: only steps not seen before are released."""
    doc = json.loads(real_run.trainer_state.read_text())
    history = doc["log_history"]
    state = tmp_path / "trainer_state.json"
    state.write_text(json.dumps({**doc, "log_history": history[:3]}))
    source = LogSource(state)
    assert [s.step for s, _ in source.poll()] == [1, 2, 3]
    assert source.poll() == []
    import os
    import time as _time

    state.write_text(json.dumps({**doc, "log_history": history}))
    os.utime(state, (_time.time() + 5, _time.time() + 5))  # a later save
    assert [s.step for s, _ in source.poll()] == [4, 5, 6]
    assert source.finished  # TRL's end-of-training summary was in the history


def test_openrlhf_wandb_style_keys(tmp_path):
    rows = [
        {
            "train/policy_loss": 0.1,
            "train/kl": 0.01 * i,
            "train/reward": 0.5,
            "train/response_length": 200.0,
            "train/actor_lr": 1e-6,
            "train/policy_entropy": 0.7,
            "train/global_step": i,
            "train/total_length": 300.0,
        }
        for i in (1, 2)
    ]
    events, stats = read_log(write_jsonl(tmp_path / "openrlhf-wandb.jsonl", rows))
    assert stats.format == "openrlhf"
    step = events[1][0]
    assert (step.step, step.kl, step.reward_mean, step.entropy, step.learning_rate) == (2, 0.02, 0.5, 0.7, 1e-6)
    assert step.completion_length_mean == 200.0 and step.extra == {"train/total_length": 300.0}


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.integers(-(10**20), 10**20)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "step",
                    "reward",
                    "kl",
                    "metrics",
                    "data",
                    "rollout_step",
                    "group_id",
                    "response_length",
                    "metadata",
                    "flags",
                    "critic/score/mean",
                    "frac_reward_zero_std",
                    "train/kl",
                    "x",
                ]
            ),
            children,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(_json_values, max_size=6), fmt=st.sampled_from(["auto", "openrlhf", "verl", "trl", "jsonl"]))
def test_any_json_lines_never_raise(tmp_path, rows, fmt):
    """Whatever a log holds, the adapters count it and move on (the monitor never crashes on input)."""
    import uuid

    run = tmp_path / uuid.uuid4().hex / "train"
    run.mkdir(parents=True)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (run / STEP_FILE).write_text(text)
    (run / TRAJ_FILE).write_text(text)
    try:
        events, stats = read_log(run.parent, fmt)
    except FormatMismatch:  # an explicit format these keys contradict: refused, not scored
        assert fmt != "auto"
    else:
        assert stats.lines == len(rows)
        assert all(s.step >= 0 for s, _ in events)
    deep = "[" * 5000 + "]" * 5000 + "\n" + '{"a":' * 3000 + "1" + "}" * 3000 + "\n"
    (run / STEP_FILE).write_text(deep)
    assert read_log(run / STEP_FILE, fmt)[1].malformed_lines + read_log(run / STEP_FILE, fmt)[1].non_step_lines >= 1


def test_trl_output_directory_follows_new_checkpoints(real_run, tmp_path):
    doc = json.loads(real_run.trainer_state.read_text())
    history = [h for h in doc["log_history"] if "train_runtime" not in h]
    out = tmp_path / "out"
    (out / "checkpoint-2").mkdir(parents=True)
    (out / "checkpoint-2" / "trainer_state.json").write_text(json.dumps({**doc, "log_history": history[:2]}))
    source = LogSource(out)
    assert [s.step for s, _ in source.poll()] == [1, 2]
    (out / "checkpoint-10").mkdir()
    (out / "checkpoint-10" / "trainer_state.json").write_text(json.dumps({**doc, "log_history": history[:5]}))
    assert [s.step for s, _ in source.poll()] == [3, 4, 5]  # checkpoint-10 sorts after checkpoint-2 numerically


# --- logs as users have them: console output, exports, event files; no silent substitution ----------


def test_no_silent_substitution_within_a_run(tmp_path):
    """A NaN in the verifier score is counted, never replaced by the KL-shaped reward for that step."""
    rows = [{"step": s, "data": {**VERL_ROW, "critic/score/mean": float("nan") if s == 2 else 0.4}} for s in (1, 2, 3)]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))  # json writes NaN as NaN
    events, stats = read_log(path)
    assert [s.reward_mean for s, _ in events] == [0.4, None, 0.4]
    assert stats.fields["reward_mean"] == {
        "source": "critic/score/mean",
        "present": 2,
        "missing": 0,
        "null": 0,
        "nan": 1,
        "inf": 0,
        "not_number": 0,
    }
    assert "reward_mean NaN at 1 of 3 steps (key `critic/score/mean`) (first at step 2)" in stats.metric_problems
    assert events[1][0].extra["critic/rewards/mean"] == 0.40  # the other key is kept, under its own name


def test_a_null_is_counted_as_no_value_and_an_evaluation_every_few_steps_is_no_problem(tmp_path):
    """A key logged as JSON null carried no value: counted apart from a NaN or a string, and not a problem where the
    field is logged every few steps by design (a held-out accuracy written as null between evaluations)."""
    rows = [
        {"step": s, "reward": 0.5, "kl": None if s == 3 else 0.01, "eval_accuracy": 0.4 if s % 5 == 0 else None}
        for s in range(1, 11)
    ]
    events, stats = read_log(write_jsonl(tmp_path / "nulls.jsonl", rows), "jsonl")
    assert [s.kl for s, _ in events][1:4] == [0.01, None, 0.01]
    assert stats.fields["kl"]["null"] == 1 and stats.fields["kl"]["not_number"] == 0
    assert stats.fields["eval_accuracy"]["null"] == 8 and stats.fields["eval_accuracy"]["present"] == 2
    assert stats.metric_problems == ["kl null (no value) at 1 of 10 steps (key `kl`) (first at step 3)"]


def test_a_renamed_reward_key_is_counted_and_named(tmp_path):
    rows = [{"step": s, "loss": 0.1, "completions/mean_length": 50.0, "my_reward": 0.5} for s in range(1, 51)]
    events, stats = read_log(write_jsonl(tmp_path / "renamed.jsonl", rows), "trl")
    assert len(events) == 50 and all(s.reward_mean is None for s, _ in events)
    assert (
        "reward_mean missing at 50 of 50 steps: no key `reward`, `rewards/*/mean`, `rewards/*` or `objective/scores`"
        in stats.metric_problems
    )
    assert events[0][0].extra["my_reward"] == 0.5


def test_older_trl_keys_and_one_reward_function(tmp_path):
    rows = [
        {
            "step": s,
            "loss": 0.0,
            "completion_length": 120.0 + s,
            "rewards/accuracy_reward": 0.25 * s,
            "reward_std": 0.1,
            "kl": 0.001,
            "clip_ratio": 0.02,
        }
        for s in (1, 2)
    ]
    events, stats = read_log(write_jsonl(tmp_path / "trl014.jsonl", rows))
    step = events[1][0]
    assert (step.reward_mean, step.completion_length_mean, step.clip_ratio_region) == (0.5, 122.0, 0.02)
    assert stats.fields["reward_mean"]["source"] == "rewards/accuracy_reward"
    several = [{"step": 1, "loss": 0.0, "reward_std": 0.1, "rewards/a/mean": 0.2, "rewards/b/mean": 0.3}]
    events, stats = read_log(write_jsonl(tmp_path / "two_funcs.jsonl", several))
    assert events[0][0].reward_mean is None  # the weighted sum is not in the log: missing, not guessed
    assert events[0][0].extra == {"rewards/a/mean": 0.2, "rewards/b/mean": 0.3}


def test_trl_console_output_with_progress_bars(tmp_path):
    text = (
        "Loading checkpoint shards: 100%|##| 2/2 [00:00<00:00,  8.66it/s]\n"
        "  0%|          | 0/30 [00:00<?, ?it/s]"
        "\r  3%|3         | 1/30 [00:02<01:00,  2.0s/it]"
        "\r  7%|6         | 2/30 [00:04<01:00,  2.0s/it]\n"
        "{'loss': 0.01, 'grad_norm': nan, 'reward': np.float64(0.5), 'reward_std': 0.2, 'kl': inf,"
        " 'completions/mean_length': 40.0,"
        " 'entropy': tensor(0.7), 'epoch': 0.1}\n"
        "  7%|6         | 2/30 [00:04<01:00,  2.0s/it]"
        "\r 10%|#         | 3/30 [00:06<01:00,  2.0s/it]"
        "\r{'eval_loss': 0.3, 'epoch': 0.1}\n"
        " 13%|#3        | 4/30 [00:08<01:00,  2.0s/it]"
        "{'loss': 0.02, 'reward': 0.6, 'reward_std': 0.1, 'kl': 0.01, 'epoch': 0.2}\n"
        "{'train_runtime': 10.0, 'train_loss': 0.015, 'epoch': 0.2}\n"
    )
    path = tmp_path / "console.txt"
    path.write_text(text)
    events, stats = read_log(path)
    assert stats.described == "TRL console output (printed log dicts)"
    assert [(s.step, s.reward_mean, s.entropy) for s, _ in events] == [(2, 0.5, 0.7), (4, 0.6, None)]
    assert events[0][0].grad_norm is None and events[0][0].kl is None
    assert stats.fields["grad_norm"]["nan"] == 1 and stats.fields["kl"]["inf"] == 1
    assert stats.malformed_lines == 0


def test_verl_console_as_printed_through_ray(tmp_path):
    esc = "\x1b[36m(TaskRunner pid=14640)\x1b[0m "
    lines = [
        esc + "{'actor_rollout_ref': {'actor': {'checkpoint': {'contents': ['model',",
        esc
        + "step:1 - actor/entropy:np.float64(0.8) - critic/score/mean:0.25 - actor/reward_kl_penalty:0.5 "
        "- actor/lr(1e-4):0.01",
        esc + "[response] Let's break it down step by step:",
        "[2025-05-22 07:03:43] INFO worker.py: connected",
        esc + "step:2 - actor/entropy:0.7 - critic/score/mean:0.35 - actor/reward_kl_penalty:0.6 - actor/ppo_kl:0.001",
    ]
    path = tmp_path / "verl.log"
    path.write_text("\n".join(lines) + "\n")
    events, stats = read_log(path)
    assert stats.described == "verl console log"
    assert [(s.step, s.entropy, s.kl) for s, _ in events] == [(1, 0.8, 0.5), (2, 0.7, 0.6)]
    assert events[0][0].learning_rate == pytest.approx(1e-6)  # actor/lr(1e-4) is in units of 1e-4
    assert events[1][0].extra["actor/ppo_kl"] == 0.001 and stats.malformed_lines == 0


def test_openrlhf_console_progress_postfix(tmp_path):
    """OpenRLHF's PPO trainer shows its status dict as the episode bar's postfix (written from its source)."""
    bar = (
        "Episode [1/1]:  {p}%|##  | {n}/20 [00:{n}0<01:00, 10.0s/it, "
        "policy_loss=0.0{n}, kl=0.00{n}, reward=0.{n}, response_length=1{n}0, actor_lr=5e-07]"
    )
    lines = [bar.format(p=5 * n, n=n) for n in (1, 2, 3)] + [bar.format(p=15, n=3)]  # a redraw of step 3
    path = tmp_path / "openrlhf.log"
    path.write_text("\r".join(lines[:2]) + "\n" + "\n".join(lines[2:]) + "\n")
    events, stats = read_log(path)
    assert stats.format == "openrlhf" and "OpenRLHF console" in stats.described
    assert [(s.step, s.reward_mean, s.kl, s.learning_rate) for s, _ in events] == [
        (1, 0.1, 0.001, 5e-7),
        (2, 0.2, 0.002, 5e-7),
        (3, 0.3, 0.003, 5e-7),
    ]


def test_wandb_history_exports(tmp_path):
    csv_path = tmp_path / "wandb_export.csv"
    csv_path.write_text(
        "_step,_runtime,_timestamp,train/reward,train/reward_std,train/frac_reward_zero_std,train/loss,train/global_step,eval/loss\n"
        "0,10,1700000000,0.1,0.3,0.2,0.01,1,\n"
        "1,12,1700000002,,,,,,0.5\n"
        "2,20,1700000010,0.2,nan,0.1,0.02,2,\n"
    )
    events, stats = read_log(csv_path)
    assert stats.format == "trl" and stats.described == "W&B history export (CSV) (TRL keys)"
    assert [(s.step, s.reward_mean, s.reward_std, s.frac_zero_std_groups) for s, _ in events] == [
        (1, 0.1, 0.3, 0.2),
        (2, 0.2, None, 0.1),
    ]
    assert stats.fields["reward_std"]["nan"] == 1 and stats.non_step_lines == 1  # the eval row is not a step
    rows = [
        {
            "_step": i,
            "_runtime": i,
            "train/policy_loss": 0.1,
            "train/kl": 0.01 * i,
            "train/reward": 0.5,
            "train/global_step": i + 1,
        }
        for i in range(3)
    ]
    events, stats = read_log(write_jsonl(tmp_path / "wandb-history.jsonl", rows))
    assert stats.format == "openrlhf" and stats.container == "W&B history export (JSONL)"
    assert [s.step for s, _ in events] == [1, 2, 3] and events[2][0].kl == 0.02


def test_tensorboard_event_files(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    run = tmp_path / "out"
    writer = SummaryWriter(str(run / "runs" / "Dec01"))
    for step in (1, 2, 3):
        for tag, value in (
            ("train/reward", 0.1 * step),
            ("train/completions/mean_length", 100.0 + step),
            ("train/loss", 0.01),
            ("train/frac_reward_zero_std", 0.5),
        ):
            writer.add_scalar(tag, value, step)
    writer.close()
    events, stats = read_log(run)  # a TRL output dir holding only TensorBoard logs
    assert stats.format == "trl" and stats.container == "TensorBoard event file"
    assert [(s.step, s.completion_length_mean) for s, _ in events] == [(1, 101.0), (2, 102.0), (3, 103.0)]
    assert events[2][0].reward_mean == pytest.approx(0.3)
    with pytest.raises(FormatMismatch, match="--format trl"):
        read_log(next(run.rglob("events.out.tfevents.*")), "verl")


def test_step_record_is_the_one_route_from_a_log_dict():
    from rftfm.io.adapters import step_record

    record = step_record(
        "trl",
        {
            "loss": 0.1,
            "reward": 0.5,
            "kl": float("nan"),
            "completions/clipped_ratio": 0.25,
            "frac_reward_zero_std": 0.5,
            "custom": 2,
        },
        4,
        "r",
    )
    assert (record.step, record.run_id, record.policy_loss, record.reward_mean, record.kl) == (4, "r", 0.1, 0.5, None)
    assert record.truncated_ratio == 0.25 and record.frac_zero_std_groups == 0.5 and record.extra == {"custom": 2.0}
    assert step_record("trl", {"eval_loss": 0.2, "epoch": 1.0}, 5, "r") is None  # not a training step
    assert step_record("trl", {"loss": 0.3, "grad_norm": 1.0, "learning_rate": 1e-5}, 6, "r") is None  # SFT-only keys


def test_jsonl_log_callback_keeps_nan_apart_from_missing(tmp_path):
    from types import SimpleNamespace

    from rftfm.integrations.trl_log import JsonlLogCallback

    path = tmp_path / "run.jsonl"
    callback = JsonlLogCallback(path)
    state = SimpleNamespace(global_step=1, is_world_process_zero=True)
    callback.on_log(None, state, None, logs={"loss": 0.1, "reward": float("nan"), "kl": float("inf")})
    callback.on_train_end(None, state, None)
    events, stats = read_log(path, "trl")
    assert (
        events[0][0].reward_mean is None and stats.fields["reward_mean"]["nan"] == 1 and stats.fields["kl"]["inf"] == 1
    )
    assert stats.fields["reward_mean"]["missing"] == 0
