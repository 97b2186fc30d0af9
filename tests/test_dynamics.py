"""Scale-free dynamics: features that do not depend on a configuration's units, healthy trends absorbed,
changes accumulated, accepted changes ending, rollbacks restoring state."""

from __future__ import annotations

import numpy as np

from rftfm.fm.dynamics import DynamicsTracker, TrackerConfig, feature_names

SIGNALS = ("kl", "reward_mean", "truncated_ratio")


def _series(n: int = 60, seed: int = 0, jump_at: int | None = None, jump: float = 0.0) -> np.ndarray:
    """(n, 3) raw values: KL growing geometrically with noise, reward rising linearly, a small truncated ratio."""
    rng = np.random.default_rng(seed)
    s = np.arange(n)
    kl = 0.001 * np.exp(0.05 * s) * np.exp(rng.normal(0, 0.1, n))
    reward = 0.2 + 0.005 * s + rng.normal(0, 0.03, n)
    trunc = np.clip(0.02 + rng.normal(0, 0.01, n), 0, 1)
    if jump_at is not None:
        kl[jump_at:] *= jump
    return np.stack([kl, reward, trunc], axis=1)


def _features(x: np.ndarray, tracker: DynamicsTracker | None = None) -> np.ndarray:
    tracker = tracker or DynamicsTracker(SIGNALS)
    return tracker.run_cube(x[None])[0]


def _col(name: str) -> int:
    return feature_names(SIGNALS).index(name)


def test_a_log_signal_in_other_units_gives_the_same_features():
    x = _series()
    y = x.copy()
    y[:, 0] *= 1000.0  # KL logged in other units: a ratio-scale signal must not notice
    a, b = _features(x), _features(y)
    kl_cols = [i for i, n in enumerate(feature_names(SIGNALS)) if n.startswith("kl:")]
    np.testing.assert_allclose(a[:, kl_cols], b[:, kl_cols], atol=1e-9, equal_nan=True)


def test_a_healthy_trend_does_not_accumulate_but_a_jump_does():
    healthy = _features(_series(seed=1))
    jumped = _features(_series(seed=1, jump_at=40, jump=8.0))
    up = _col("kl:cusum_up")
    assert np.nanmax(healthy[:, up]) < 6.0
    assert jumped[41, up] > 2 * np.nanmax(healthy[:, up])
    assert np.nanmax(np.abs(jumped[40:43, _col("kl:z")])) > 5.0


def test_a_persistent_change_is_accepted_so_the_episode_ends():
    cfg = TrackerConfig()
    f = _features(_series(seed=2, jump_at=30, jump=50.0))
    z = f[:, _col("kl:z")]
    assert np.abs(z[30]) >= cfg.huber
    assert np.all(np.abs(z[30 + cfg.adapt_after + 2 :]) < 4.0)  # the new level is the baseline now
    assert f[40, _col("kl:change0")] > 3.0  # but the drift from the run's own start still shows it


def test_fractions_keep_their_level_and_missing_values_carry_state():
    x = _series(seed=3)
    x[10:15, 2] = np.nan
    f = _features(x)
    level = f[:, _col("truncated_ratio:level")]
    assert np.isnan(level[12]) and np.isclose(level[20], x[20, 2])
    cusum = f[:, _col("truncated_ratio:cusum_up")]
    assert cusum[12] == cusum[9]  # carried over while missing


def test_a_kl_of_zero_at_the_first_step_is_not_comparable_yet():
    x = _series(seed=4)
    x[0, 0] = 0.0
    f = _features(x)
    assert np.isnan(f[0, _col("kl:change0")]) and np.isfinite(f[5, _col("kl:change0")])


def test_vectorised_runs_equal_runs_one_by_one_and_a_snapshot_restores_state():
    tracker = DynamicsTracker(SIGNALS)
    a, b = _series(n=40, seed=5), _series(n=25, seed=6)
    cube = np.full((2, 40, 3), np.nan)
    cube[0], cube[1, :25] = a, b
    together = tracker.run_cube(cube)
    np.testing.assert_allclose(together[0], _features(a, tracker), equal_nan=True)
    np.testing.assert_allclose(together[1, :25], _features(b, tracker), equal_nan=True)

    state = tracker.new_state()
    first = [tracker.update(state, a[i : i + 1]) for i in range(20)]
    saved = tracker.snapshot(state)
    [tracker.update(state, a[i : i + 1] * 3) for i in range(20, 25)]  # steps later rolled back
    again = [tracker.update(saved, a[i : i + 1]) for i in range(20, 25)]
    fresh = tracker.new_state()
    reference = [tracker.update(fresh, a[i : i + 1]) for i in range(25)]
    np.testing.assert_allclose(np.concatenate(first + again), np.concatenate(reference), equal_nan=True)


def test_a_prior_noise_judges_a_young_run():
    x = _series(seed=7, jump_at=2, jump=20.0)
    without = _features(x)
    with_prior = _features(x, DynamicsTracker(SIGNALS, np.array([0.1, np.nan, 0.01])))
    z = _col("kl:z")
    assert np.isnan(without[2, z])  # two values teach no noise
    assert with_prior[2, z] > 5.0


def test_a_sparse_reward_is_judged_at_its_resolution_not_at_zero_noise():
    # a mean of 32 verifier rewards: 0 for the first steps, then one or two completions right now and then
    rng = np.random.default_rng(8)
    reward = rng.binomial(32, 0.03, 60) / 32.0
    reward[:6] = 0.0
    x = np.stack([np.full(60, 0.01), reward, np.full(60, 0.02)], axis=1)
    f = _features(x)
    z = f[:, _col("reward_mean:z")]
    first_move = int(np.flatnonzero(reward)[0])
    assert np.all(np.isnan(z[: first_move + 1]))  # a signal that never moved has no known noise yet
    assert np.nanmax(np.abs(z)) < 5.0  # one completion more or less is a quantum, not twenty sigmas


def test_a_real_move_of_a_quantised_reward_still_stands_out():
    rng = np.random.default_rng(9)
    reward = rng.binomial(32, 0.5, 60) / 32.0
    reward[40:] = rng.binomial(32, 0.05, 20) / 32.0  # the verifier broke: most completions now fail
    x = np.stack([np.full(60, 0.01), reward, np.full(60, 0.02)], axis=1)
    z = _features(x)[:, _col("reward_mean:z")]
    assert z[40] < -3.0 and z[40] == np.nanmin(z)  # 0.45 against a binomial noise of 0.09 per step


def test_a_fraction_set_by_the_task_has_no_absolute_level_but_its_changes_count():
    # 90 % zero-variance groups is a healthy hard task; a truncated ratio of 0.9 is a run in trouble anywhere
    signals = ("frac_zero_std_groups", "truncated_ratio")
    x = np.column_stack([np.full(30, 0.9), np.full(30, 0.9)])
    x[20:, 0] = 0.3
    f = DynamicsTracker(signals).run_cube(x[None])[0]
    names = feature_names(signals)
    assert np.all(np.isnan(f[:, names.index("frac_zero_std_groups:level")]))
    assert np.allclose(f[:, names.index("truncated_ratio:level")], 0.9)
    assert f[25, names.index("frac_zero_std_groups:change0")] < -0.5
    # the diagnoser's tracker keeps it: which fault an alarm is, not whether there is one
    g = DynamicsTracker(signals, config=TrackerConfig(task_levels=True)).run_cube(x[None])[0]
    assert np.allclose(g[:, names.index("frac_zero_std_groups:level")], np.r_[np.full(20, 0.9), np.full(10, 0.3)])
    mask = np.array([not n.startswith("frac_zero_std_groups:level") for n in names])
    assert np.array_equal(f[:, mask], g[:, mask], equal_nan=True)


def test_a_frozen_state_keeps_its_values_while_the_tracker_moves_on():
    """The tracker binds new arrays and never writes into a state's (the detector's per-record snapshot relies on
    it): a frozen state taken at every record -- in the warm-up, past it, and across a run that ends early in a batch
    -- still holds exactly what a deep copy taken at the same moment holds."""
    tracker = DynamicsTracker(SIGNALS)
    state = tracker.new_state(1)
    taken = []
    for row in _series(20, jump_at=12, jump=30.0):
        taken.append((state.frozen(), state.copy()))
        tracker.update(state, row[None])
    batch = tracker.new_state(2)
    cube = np.stack([_series(12), np.vstack([_series(6, seed=1), np.full((6, 3), np.nan)])])
    taken.append((batch.frozen(), batch.copy()))
    tracker.extend(batch, cube)  # the second run ends after 6 records: its state is kept as it was
    for frozen, copy in taken:
        for name in frozen.__dataclass_fields__:
            np.testing.assert_array_equal(getattr(frozen, name), getattr(copy, name), err_msg=name)
