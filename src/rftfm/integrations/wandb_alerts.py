"""Forward rftfm alarms and diagnoses to Weights & Biases with ``wandb.alert`` (optional).

Used only when ``wandb`` is importable AND a run is active in this process (``wandb.run``) or
wandb is configured for this machine (``WANDB_API_KEY`` set, or ``WANDB_MODE`` offline/disabled
for local tests), in which case a small ``rftfm-watch`` run is started to carry the alerts.
wandb is never a dependency of rftfm; every failure here is reported once and swallowed, so an
alert that cannot be delivered never stops the monitor.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Any

from rftfm.fm.types import Episode


def wandb_available() -> bool:
    return importlib.util.find_spec("wandb") is not None


def _configured() -> bool:
    return bool(os.environ.get("WANDB_API_KEY")) or os.environ.get("WANDB_MODE") in ("offline", "disabled")


class WandbAlerter:
    """Sends one ``wandb.alert`` per alarm episode and per change of its diagnosis. Build it with :meth:`create`."""

    def __init__(self, wandb_module: Any, owns_run: bool = False):
        self.wandb = wandb_module
        self.owns_run = owns_run
        self.sent = 0
        self.failed: str | None = None

    @classmethod
    def create(cls, run_id: str) -> tuple["WandbAlerter | None", str]:
        """(alerter or None, a one-line status message for the user)."""
        if not wandb_available():
            return None, "wandb is not installed: alerts are not forwarded"
        try:
            wandb = importlib.import_module("wandb")
        except Exception as exc:  # a broken install must not break the monitor
            return None, f"wandb cannot be imported ({exc}): alerts are not forwarded"
        if getattr(wandb, "run", None) is not None:
            return cls(wandb), "forwarding alerts to the active wandb run"
        if not _configured():
            return (
                None,
                "wandb is installed but not configured (no WANDB_API_KEY, no active run): alerts are not forwarded",
            )
        try:
            wandb.init(
                project=os.environ.get("WANDB_PROJECT", "rftfm"), name=f"rftfm-watch-{run_id}", job_type="rftfm-watch"
            )
        except Exception as exc:
            return None, f"wandb.init failed ({exc}): alerts are not forwarded"
        return cls(wandb, owns_run=True), "forwarding alerts to wandb"

    def _level(self, name: str) -> Any:
        levels = getattr(self.wandb, "AlertLevel", None)
        return getattr(levels, name, name) if levels is not None else name

    def alert(self, episode: Episode, change: str = "start") -> bool:
        """Send one alert for an episode that started or changed diagnosis; returns whether it was delivered."""
        if self.failed:
            return False
        from rftfm.report.console import diagnosis_text, evidence_line

        what = "diagnosis changed" if change == "diagnosis" else "alarm"
        title = f"rftfm {what}: {episode.run_id} from step {episode.start_step}"
        lines = [f"anomaly score {episode.peak_score:.3g}; {evidence_line(episode.evidence, 5)}"]
        diagnosis = episode.diagnosis
        if diagnosis is not None:
            lines.append(diagnosis.summary or f"diagnosis: {diagnosis_text(diagnosis)}")
        try:
            self.wandb.alert(title=title[:64], text="\n".join(lines), level=self._level("WARN"))
        except Exception as exc:
            self.failed = str(exc)
            return False
        self.sent += 1
        return True

    def close(self) -> None:
        if self.owns_run:
            try:
                self.wandb.finish()
            except Exception:  # pragma: no cover
                pass
