"""The closed loop in a user's own trainer: a plain TRL ``GRPOTrainer`` subclass (:mod:`rftfm.testing.user_run`,
a tiny Llama counting letters -- a model, size and task the benchmark does not contain) with ``RFTFMCallback``.

* healthy runs (``--healthy`` seeds): alert-only, the loop from train-side metrics, the loop with an eval callable
  (``RewardEval`` on held-out prompts every ``eval_every`` steps); interventions, halts, final accuracy against the
  run without the loop (the same seed trains the same run), wall time;
* learning-rate spike runs (``--spike`` seeds, the LR x30 from ``--onset``): clean, no loop, loop, loop + eval;
  repaired = anomaly cleared without a halt and final accuracy >= 0.9 x the clean run's (the benchmark's rule);
* knob-push runs (``--push KNOB=VALUE``, ``--push-runs`` seeds each, the knob set from ``--onset`` as a user's
  edited config would set it): the same arms and rule as the spike runs;
* advantage sign-bug runs (``--sign-bug`` seeds, TRL's advantages flipped from ``--onset``): clean, alert-only and
  the loop;
  caught = a diagnosis of the credit-assignment family at or after the onset (halted or alerted, the target's rule).

Usage: ``python scripts/user_run_loop.py [--healthy 4] [--spike 4] [--sign-bug 0] [--push KNOB=VALUE ...]
[--push-runs 5] [--steps 80] [--logging-steps 1] [--lr-scheduler constant] [--markdown PATH]``;
``--logging-steps 10 --lr-scheduler linear`` are TRL's ``GRPOConfig`` defaults (a record every 10 steps, averaged over
them; the learning rate decaying linearly to 0).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from rftfm.bench.eval_remediation import (
    TOLERANCE,
    PlainRun,
    load_components,
    repaired,
    run_plain_arm,
    wilson_interval,
)
from rftfm.bench.runner import quiet


def _healthy(seeds: range, steps: int, components, **trl) -> tuple[list[str], list[float], int]:
    rows, deltas, calm = [], [], 0
    for seed in seeds:
        run = PlainRun(run_id=f"healthy-{seed}", seed=seed, steps=steps, **trl)
        base, _ = run_plain_arm(run, "none", components)
        for arm in ("loop", "loop+eval"):
            r, _ = run_plain_arm(run, arm, components)
            deltas.append(r.final_accuracy - base.final_accuracy)
            calm += r.interventions == 0 and not r.halted
            rows.append(
                f"| {run.run_id} | {arm} | {base.alarms} | {r.interventions} | {'yes' if r.halted else 'no'} | "
                f"{base.final_accuracy:.3f} | {r.final_accuracy:.3f} | {100 * (r.wall_s / base.wall_s - 1):+.0f} % |"
            )
            print(rows[-1], flush=True)
    return rows, deltas, calm


def _spike(seeds: range, steps: int, onset: int, components, **trl) -> tuple[list[str], dict[str, list[bool]]]:
    runs = [PlainRun(run_id=f"spike-{seed}", seed=seed, steps=steps, spike_onset=onset, **trl) for seed in seeds]
    return _repairs(runs, components)


def _push(knob: str, value: float, seeds: range, steps: int, onset: int, components,
          **trl) -> tuple[list[str], dict[str, list[bool]]]:
    runs = [PlainRun(run_id=f"{knob}-{seed}", seed=seed, steps=steps, push=(onset, knob, value), **trl)
            for seed in seeds]
    return _repairs(runs, components)


def _repairs(runs: list[PlainRun], components) -> tuple[list[str], dict[str, list[bool]]]:
    """Each faulty run's clean twin, then its arms without the loop, with it, and with it and an eval callable."""
    rows, outcomes = [], {"none": [], "loop": [], "loop+eval": []}
    for run in runs:
        clean, _ = run_plain_arm(run, "clean", components)
        for arm in ("none", "loop", "loop+eval"):
            r, _ = run_plain_arm(run, arm, components)
            if arm == "none":  # nothing to clear: only the accuracy
                ok = r.final_accuracy >= TOLERANCE * clean.final_accuracy
            else:
                ok = repaired(r.cleared, r.final_accuracy, clean.final_accuracy)
            outcomes[arm].append(ok)
            rows.append(
                f"| {run.run_id} | {arm} | {r.first_alarm_step if r.first_alarm_step is not None else '-'} | "
                f"{', '.join(r.actions) or '-'} | {'yes' if r.halted else 'no'} | {clean.final_accuracy:.3f} | "
                f"{r.final_accuracy:.3f} | {'yes' if ok else 'no'} |"
            )
            print(rows[-1], flush=True)
    return rows, outcomes


def _sign_bug(seeds: range, steps: int, onset: int, components, **trl) -> tuple[list[str], list[bool]]:
    rows, caught = [], []
    for seed in seeds:
        run = PlainRun(run_id=f"sign-bug-{seed}", seed=seed, steps=steps, sign_bug_onset=onset, **trl)
        clean, _ = run_plain_arm(run, "clean", components)
        for arm in ("none", "loop"):
            r, callback = run_plain_arm(run, arm, components)
            events = callback.controller.store.events(run_id=run.run_id)
            alarms = [e for e in events if e["kind"] == "alarm" and e["step"] >= onset]
            led = bool(alarms) and (alarms[0]["payload"].get("evidence") or [{}])[0].get("signal", "").startswith(
                "traj_advantage"
            )
            found = [
                e["payload"]["ranked"][0] for e in events
                if e["kind"] == "diagnosis" and e["step"] >= onset and e["payload"].get("ranked")
                and not e["payload"].get("unknown")
            ]
            ok = any(h["family"] == "ca" for h in found)
            caught.append(ok)
            top = found[0] if found else None
            first = f"{top['fault_type']} ({top['family']}, p {top['probability']:.2f})" if top else "-"
            rows.append(
                f"| {run.run_id} | {arm} | {alarms[0]['step'] if alarms else '-'} | {'yes' if led else 'no'} | "
                f"{first} | {', '.join(r.actions) or '-'} | {'yes' if r.halted else 'no'} | {r.steps} | "
                f"{clean.final_accuracy:.3f} | {r.final_accuracy:.3f} | {'yes' if ok else 'no'} |"
            )
            print(rows[-1], flush=True)
    return rows, caught


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--healthy", type=int, default=4)
    parser.add_argument("--spike", type=int, default=4)
    parser.add_argument("--sign-bug", type=int, default=0)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--onset", type=int, default=40)
    parser.add_argument("--logging-steps", type=int, default=1, help="TRL's logging_steps (GRPOConfig's default: 10)")
    parser.add_argument("--lr-scheduler", default="constant",
                        help="TRL's lr_scheduler_type (GRPOConfig's default: linear)")
    parser.add_argument("--push", action="append", default=[], metavar="KNOB=VALUE",
                        help="runs with a trainer knob set mid-run (rftfm.knobs), e.g. temperature=3.0; repeatable")
    parser.add_argument("--push-runs", type=int, default=5, help="seeds per --push")
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    quiet()
    components = load_components(None, None)
    trl = {"logging_steps": args.logging_steps, "lr_scheduler": args.lr_scheduler}
    healthy_rows, deltas, calm = _healthy(range(args.healthy), args.steps, components, **trl)
    spike_rows, outcomes = _spike(range(100, 100 + args.spike), args.steps, args.onset, components, **trl)
    bug_rows, caught = _sign_bug(range(200, 200 + args.sign_bug), args.steps, args.onset, components, **trl)
    pushes = []
    for spec in args.push:
        knob, _, text = spec.partition("=")
        seeds = range(400, 400 + args.push_runs)
        pushes.append((knob, float(text), *_push(knob, float(text), seeds, args.steps, args.onset, components, **trl)))
    trl_args = "".join(
        f" --{flag} {value}" for flag, value, default in
        (("logging-steps", args.logging_steps, 1), ("lr-scheduler", args.lr_scheduler, "constant")) if value != default
    )
    lines = [
        f"Written by `python scripts/user_run_loop.py --healthy {args.healthy} --spike {args.spike} "
        + (f"--sign-bug {args.sign_bug} " if args.sign_bug else "")
        + "".join(f"--push {spec} " for spec in args.push)
        + (f"--push-runs {args.push_runs} " if args.push else "")
        + f"--steps {args.steps} --onset {args.onset}{trl_args}` with the shipped detector and diagnoser "
        f"(TRL logging_steps {args.logging_steps}, lr_scheduler_type {args.lr_scheduler}).",
    ]
    if deltas:
        lines += _healthy_section(healthy_rows, deltas, calm)
    if spike_rows:
        lines += _spike_section(spike_rows, outcomes, f"**Learning-rate spike (x30 from step {args.onset})**")
    if bug_rows:
        lines += _sign_bug_section(bug_rows, caught, args.onset)
    for knob, value, rows, outcomes in pushes:
        lines += _spike_section(rows, outcomes, f"**`{knob}` set to {value:g} from step {args.onset}**")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        args.markdown.write_text(text, encoding="utf-8")


def _healthy_section(rows: list[str], deltas: list[float], calm: int) -> list[str]:
    return [
        "",
        f"**Healthy runs**: {calm} of {len(deltas)} loop arms made no intervention and none halted "
        f"(interval {_interval(calm, len(deltas))}); final accuracy, loop on minus off: mean "
        f"{statistics.mean(deltas):+.3f} (min {min(deltas):+.3f}, max {max(deltas):+.3f}).",
        "",
        "| run | arm | alarms (alert-only) | interventions | halted | accuracy, loop off | accuracy, loop on | wall |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
    ]


def _spike_section(rows: list[str], outcomes: dict[str, list[bool]], title: str) -> list[str]:
    return [
        "",
        f"{title}: repaired "
        + ", ".join(f"{arm} {sum(v)}/{len(v)}" for arm, v in outcomes.items())
        + f" (rule: anomaly cleared without a halt, final accuracy >= {TOLERANCE} x clean; `none` needs only the "
        "accuracy).",
        "",
        "| run | arm | first alarm | actions | halted | accuracy, clean | accuracy | repaired |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
    ]


def _sign_bug_section(rows: list[str], caught: list[bool], onset: int) -> list[str]:
    return [
        "",
        f"**Advantage sign bug (TRL's advantages flipped from step {onset})**: caught (a diagnosis of the "
        f"credit-assignment family at or after the onset) in {sum(caught)} of {len(caught)} arms "
        f"(interval {_interval(sum(caught), len(caught))}). `none` is alert-only; a halted run keeps the weights "
        "of the checkpoint it rolled back to.",
        "",
        "| run | arm | first alarm from onset | led by an advantage invariant | first diagnosis from onset | "
        "actions | halted | steps | accuracy, clean | accuracy | caught |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]


def _interval(successes: int, trials: int) -> str:
    low, high = wilson_interval(successes, trials)
    return f"{low:.0f}-{high:.0f} %"


if __name__ == "__main__":
    main()
