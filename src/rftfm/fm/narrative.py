"""The incident log of one run, told in words: what was seen, what was done, what it cost, what to look at.

:func:`narrate` reads the events of one run as the incident stores give them back (dicts with ``kind``,
``step`` and ``payload``) and writes a few short paragraphs; the closed loop prints it at the end of
training and ``rftfm report`` can show it. It reads events only, so it also tells a run recorded by
another process or an earlier version.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from rftfm.fm import repeat_rewards, unscored
from rftfm.fm.policy import CHECKPOINT_BUDGET, ControllerConfig, checkpoint_every_within

#: A diagnosis at least this sure names where to look even when the loop did nothing (the loop's own bar for a halt:
#: a rule saw the cause -- a verifier that stopped answering, a broken advantage invariant -- rather than guessed it).
SURE = ControllerConfig().halt_confidence

#: Where a diagnosed family's cause usually lives in a user's setup.
LOOK_AT: dict[str, str] = {
    "rf": "the reward function or verifier (what it accepts, its scale and sign, how noisy it is)",
    "pg": "the generation settings (temperature, max_completion_length, repetition penalty and EOS handling) "
    "and whether rollouts come from the weights being trained",
    "od": "the optimiser settings: learning rate and its schedule, beta (the KL coefficient)",
    "ca": "the advantage computation: group size, reward variance within groups, normalisation",
    "te": "the tool or sandbox the completions call (errors, timeouts, wrong results)",
}


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _top(diagnosis: dict[str, Any]) -> dict[str, Any] | None:
    ranked = diagnosis.get("ranked") or []
    return None if diagnosis.get("unknown") or not ranked else ranked[0]


def _ruled_family(diagnosis: dict[str, Any]) -> tuple[str, float]:
    """Where a reward rule leads the diagnosis's evidence (a fact seen in the log, not a model's guess: completions
    unscored or scored apart, a broken reward identity, a 0 / 1 reward no longer so), the family with the most
    probability in its ranking and that probability; else ("", 0)."""
    evidence = diagnosis.get("evidence") or [{}]
    first = evidence[0]
    ruled = first.get("signal") in (unscored.SIGNAL, repeat_rewards.SIGNAL) or first.get("reward_identity") or (
        first.get("binary_mean") is not None
    )
    mass: Counter = Counter()
    for h in (diagnosis.get("ranked") or []) if ruled and not diagnosis.get("unknown") else []:
        mass[h.get("family", "")] += h.get("probability", 0.0)
    return mass.most_common(1)[0] if mass else ("", 0.0)


def _seen(alarms: list[dict[str, Any]], diagnoses: list[dict[str, Any]]) -> str:
    if not alarms:
        return "Seen: no alarm; the run looked healthy throughout."
    acted_on = [a for a in alarms if not a["payload"].get("explanation")]
    signals = Counter(
        f"{e['signal']} {e['direction']}" for a in acted_on or alarms for e in a["payload"].get("evidence", [])
    )
    text = f"Seen: {len(alarms)} alarm(s) from step {alarms[0]['step']} to {alarms[-1]['step']}"
    if signals:
        text += " (" + ", ".join(name for name, _ in signals.most_common(3)) + ")"
    explained = len(alarms) - len(acted_on)
    if explained:
        text += f"; {explained} of them explained by a repair already made"
    tops = [(d["step"], _top(d["payload"]), d["payload"]) for d in diagnoses]
    named = [(s, t, p) for s, t, p in tops if t is not None]
    if named:
        step, top, payload = named[-1]
        text += f". Diagnosis at step {step}: {top['fault_type']} (p={top['probability']:.2f})"
        if payload.get("summary"):
            text += f": {payload['summary']}"
    elif tops:
        text += ". The diagnoser could not name a known fault"
    return text + "."


def _action_text(action: dict[str, Any]) -> str:
    p = action["payload"]
    detail = str(p.get("detail", ""))
    if p.get("kind") == "rollback":
        return (
            "kept the weights (eval accuracy had not fallen)"
            if detail.startswith("skipped")
            else f"rolled back {detail}"
        )
    if p.get("kind") == "set_knob":
        return f"set {p.get('knob')} {_fmt(p.get('previous'))} -> {_fmt(p.get('value'))}"
    if p.get("kind") == "halt":
        return "stopped training"
    return f"{p.get('kind')} ({detail})" if detail else str(p.get("kind"))


def _done(
    actions: list[dict[str, Any]], outcomes: list[dict[str, Any]], acting: bool, alarms: list[dict[str, Any]]
) -> str:
    if not actions:
        held = [o for o in outcomes if o["payload"].get("result") == "failed"]
        if held:
            why = held[-1]["payload"]["action"].get("reason", "")
            return f"Done: nothing; the alarms were reported, not acted on ({why})."
        if not acting:
            return "Done: nothing (alert-only: the loop does not act on this run)."
        if any(not a["payload"].get("explanation") for a in alarms):
            return (
                "Done: nothing; the alarms were reported, not acted on (a weak alarm waits for a second, one the "
                "diagnoser cannot name until it persists)."
            )
        return "Done: nothing."
    by_step: dict[int, list[str]] = {}
    for action in actions:
        by_step.setdefault(action["step"], []).append(_action_text(action))
    parts = [f"at step {step}: " + ", ".join(texts) for step, texts in by_step.items()]
    results = [
        f"{o['payload']['result']} at step {o['step']} ({o['payload'].get('detail', '')})"
        for o in outcomes
        if o["payload"].get("result") in ("kept", "escalated", "reverted", "halted")
    ]
    text = "Done: " + "; ".join(parts) + "." + (" Outcome: " + "; ".join(results) + "." if results else "")
    held = [o for o in outcomes if o["payload"].get("result") == "failed" and o["step"] < actions[0]["step"]]
    if held:  # the loop stood down first (and acted once the evidence settled): say why it had waited
        why = held[0]["payload"]["action"].get("reason", "")
        text += f" Earlier, at step {held[0]['step']}, an alarm was reported, not acted on ({why})."
    return text


def _cost(end: dict[str, Any]) -> str:
    parts = []
    if end.get("replayed"):
        parts.append(f"{end['replayed']} step(s) trained again after rollbacks")
    if end.get("monitor_seconds") is not None:
        share = ""
        if end.get("wall_seconds"):
            percent = 100 * end["monitor_seconds"] / max(end["wall_seconds"], 1e-9)
            share = f" ({percent:.1f} % of {end['wall_seconds']:.0f} s)"
        parts.append(f"the loop's own time {end['monitor_seconds']:.1f} s{share}")
        if end.get("checkpoints") and end.get("checkpoint_seconds") is not None:
            parts[-1] += f", of it {end['checkpoints']} checkpoint(s) {end['checkpoint_seconds']:.1f} s"
    if end.get("evaluations"):
        parts.append(f"{end['evaluations']} held-out evaluation(s) taking {end.get('eval_seconds', 0.0):.1f} s")
    return "Cost: " + "; ".join(parts) + "." if parts else ""


def _look_at(
    actions: list[dict[str, Any]], diagnoses: list[dict[str, Any]], end: dict[str, Any], errors: list[dict[str, Any]]
) -> str:
    hints = []
    pushes = [
        a["payload"]
        for a in actions
        if a["payload"].get("kind") == "set_knob" and "changed since" in str(a["payload"].get("reason", ""))
    ]
    for p in pushes:
        hints.append(
            f"{p['knob']} was changed to {_fmt(p.get('previous'))} by something other than the loop "
            f"(a configuration push, a callback, a schedule): find what set it; the loop set it back to "
            f"{_fmt(p.get('value'))}"
        )
    named = [t for t in (_top(d["payload"]) for d in diagnoses) if t is not None]
    family, mass = _ruled_family(diagnoses[-1]["payload"]) if diagnoses else ("", 0.0)
    if named and not actions and named[-1]["probability"] < SURE and mass >= SURE and family in LOOK_AT:
        hints.append(  # the type is not sure, its family is: a reward rule saw the fault's kind
            f"for a fault of the {family} family (closest: {named[-1]['fault_type']}, "
            f"p={named[-1]['probability']:.2f}): {LOOK_AT[family]}"
        )
    elif named and not actions and named[-1]["probability"] < SURE:
        hints.append(
            f"nothing needs fixing unless the signals above look wrong to you (closest known fault: "
            f"{named[-1]['fault_type']}, p={named[-1]['probability']:.2f})"
        )
    elif named and not pushes:
        family = named[-1].get("family", "")
        hints.append(
            f"for {named[-1]['fault_type']}: {LOOK_AT.get(family, 'the part of the setup the diagnosis names')}"
        )
    elif diagnoses and not named and not pushes and actions:
        hints.append("the signals listed above: the diagnoser knows no fault that fits them")
    if end.get("mode") == "halted":
        hints.append("training was stopped on the restored weights: fix the cause before resuming")
    hints += _checkpoint_hint(end)
    if errors:
        hints.append(
            f"{len(errors)} internal error(s) in the loop (first: {errors[0]['payload'].get('error')}); "
            "it stopped acting after the first"
        )
    return "Look at: " + "; ".join(hints) + "." if hints else ""


def _checkpoint_hint(end: dict[str, Any]) -> list[str]:
    every = end.get("checkpoint_every")
    wider = checkpoint_every_within(end.get("checkpoint_seconds"), end.get("wall_seconds"), every or 0)
    if not every or wider is None:
        return []
    share = 100 * end["checkpoint_seconds"] / end["wall_seconds"]
    return [
        f"checkpoints took {share:.0f} % of the run's wall time: ControllerConfig(checkpoint_every={wider}) "
        f"would keep them near {100 * CHECKPOINT_BUDGET:.0f} % "
        f"(a rollback may then discard up to {wider - every} more step(s))"
    ]


def _evidence(end: dict[str, Any], start: dict[str, Any]) -> str:
    if end.get("accuracy_steps") or start.get("eval_every"):
        every = f", every {start['eval_every']} steps" if start.get("eval_every") else ""
        return f"Decisions used held-out eval accuracy ({end.get('accuracy_steps', 0)} step(s) with one{every})."
    return (
        "Decisions came from train-side metrics alone (no held-out eval accuracy): the loop rolled back only "
        "on a diagnosed or pushed-knob incident and never halted a knob-repairable run; pass eval_fn= to let it "
        "check accuracy before it acts."
    )


def _event(runs: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    """The payload of the run's first ``name`` event (what the callback checked once at the start)."""
    return next((r["payload"] for r in runs if r["payload"].get("event") == name), None)


def _invariants(runs: list[dict[str, Any]]) -> str:
    read = _event(runs, "advantage invariants")
    if read is None:
        return ""
    if read.get("read"):
        return "The trainer's per-completion rewards and advantages were checked at every logged step."
    return f"The trainer's advantages were not checked: {read.get('reason')}."


def _on_policy(runs: list[dict[str, Any]]) -> str:
    read = _event(runs, "on-policy check")
    if read is None or not read.get("read"):
        return ""
    return "Every optimiser step trained on fresh rollouts, so any clip ratio above 0 was flagged."


def _schedule(runs: list[dict[str, Any]]) -> str:
    read = _event(runs, "learning-rate schedule")
    if read is None:
        return ""
    if read.get("jumps_judged"):
        return "Each logged learning rate was checked for a jump no schedule makes."
    return f"Learning-rate jumps were not judged: the {read.get('scheduler')} scheduler jumps by design."


def _reward_weights(runs: list[dict[str, Any]]) -> str:
    read = _event(runs, "reward weights")
    if read is None or not read.get("read"):
        return ""
    weights = ", ".join(f"{name} x{w:g}" for name, w in read["read"].items())
    return f"The logged reward was checked at every step against its functions' weighted means ({weights})."


def narrate(events: Iterable[dict[str, Any]], run_id: str | None = None) -> str:
    """What happened in one run, in words (the events of ``run_id``, or of the only run in ``events``)."""
    rows = [e for e in events if run_id is None or e.get("run_id") == run_id]
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for e in rows:
        by_kind.setdefault(e["kind"], []).append(e)
    runs = by_kind.get("run", [])
    start = next((r["payload"] for r in runs if r["payload"].get("event") == "start"), {})
    end = next((r["payload"] for r in reversed(runs) if r["payload"].get("event") == "end"), {})
    name = run_id or (rows[0]["run_id"] if rows else "?")
    head = f"rftfm: run {name}" + (f", {end.get('mode')} at the end" if end.get("mode") else "")
    paragraphs = [
        head,
        _seen(by_kind.get("alarm", []), by_kind.get("diagnosis", [])),
        _done(
            by_kind.get("action", []), by_kind.get("outcome", []), start.get("mode") != "alert_only",
            by_kind.get("alarm", []),
        ),
        _cost(end),
        _look_at(by_kind.get("action", []), by_kind.get("diagnosis", []), end, by_kind.get("error", [])),
        _evidence(end, start),
        _invariants(runs),
        _schedule(runs),
        _on_policy(runs),
        _reward_weights(runs),
    ]
    return "\n".join(p for p in paragraphs if p)
