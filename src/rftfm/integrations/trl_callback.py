"""``RFTFMCallback``: the RFT-FM closed loop inside a TRL ``GRPOTrainer``, in one line.

    trainer = GRPOTrainer(..., callbacks=[RFTFMCallback(incidents="incidents.db")])
    # or, which also lets the loop turn every GRPO knob (temperature, beta, length limit, ...):
    RFTFMCallback.attach(trainer, incidents="incidents.db")

Each ``on_log`` dict becomes a :class:`~rftfm.records.StepRecord` (TRL key mapping
:data:`rftfm.io.adapters.TRL_STEP_KEYS`) and goes through the :class:`~rftfm.fm.loop.Controller`
(detect -> diagnose -> remediate -> revalidate). When the trainer is the embedded
:class:`~rftfm.engine.trainer.RecordingGRPOTrainer`, the callback instead listens on the
trainer's sinks, which also carry the step's trajectories and eval accuracy.

Added with ``callbacks=[...]`` the callback only sees what TRL hands to callbacks (model,
optimiser, scheduler, control): it can roll back, change the learning rate and halt.
Through :meth:`RFTFMCallback.attach` it gets the trainer and all of its knobs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from transformers import TrainerCallback

from rftfm.fm.checkpoint import Checkpointer
from rftfm.fm.handle import TrainerHandle
from rftfm.fm.incidents import MemoryIncidentStore
from rftfm.fm.loop import Controller
from rftfm.fm.policy import ControllerConfig
from rftfm.fm.remediate import Remediator
from rftfm.integrations.batch_replay import BatchReplayMixin
from rftfm.io.adapters import map_metrics
from rftfm.records import StepRecord

__all__ = ["BatchReplayMixin", "RFTFMCallback", "step_record_from_logs"]


def step_record_from_logs(run_id: str, step: int, logs: dict[str, Any]) -> StepRecord:
    """A StepRecord from one TRL ``on_log`` dict (the TRL key table of :mod:`rftfm.io.adapters`; unknown
    numeric keys go to ``extra``)."""
    fields, extra = map_metrics("trl", logs)
    return StepRecord(run_id=run_id, step=max(0, int(step)), extra=extra, **fields)


def default_detector() -> Any:
    from rftfm.fm.detect import Detector

    return Detector.load_default()


def default_diagnoser() -> Any:
    from rftfm.fm.diagnose import Diagnoser

    return Diagnoser.load_default()


class RFTFMCallback(TrainerCallback):
    """Runs the RFT-FM loop live in a Hugging Face / TRL trainer."""

    def __init__(
        self,
        detector: Any = None,
        diagnoser: Any = None,
        remediator: Remediator | None = None,
        incidents: str | Path | Any = None,
        checkpoint_dir: str | Path | None = None,
        run_id: str | None = None,
        task_group: str | None = None,
        model_size: str | None = None,
        remediate: bool = True,
        config: ControllerConfig | None = None,
        backup_verifier: Callable[..., list[float]] | None = None,
        backup_tool: Callable[..., Any] | None = None,
    ):
        self._detector, self._diagnoser = detector, diagnoser
        self._store_arg = incidents
        self._own_store = False
        self.remediator = remediator or Remediator()
        self.checkpointer = Checkpointer(checkpoint_dir, keep=(config or ControllerConfig()).keep_checkpoints)
        self.run_id, self.task_group, self.model_size = run_id, task_group, model_size
        self.config = config or ControllerConfig(remediate=remediate)
        if config is not None and not remediate:
            self.config.remediate = False
        self.backup_verifier, self.backup_tool = backup_verifier, backup_tool
        self.trainer: Any = None
        self.controller: Controller | None = None
        self._uses_sink = False
        self._initial_checkpoint_due = False
        self.setup_error: str | None = None

    # --- wiring ------------------------------------------------------------------------------
    @classmethod
    def attach(cls, trainer: Any, **kwargs: Any) -> "RFTFMCallback":
        """Create the callback, add it to ``trainer`` and give it the trainer's knobs."""
        callback = cls(**kwargs)
        callback.bind(trainer)
        trainer.add_callback(callback)
        return callback

    def bind(self, trainer: Any) -> None:
        self.trainer = trainer
        run = getattr(trainer, "run", None)
        if run is not None:
            self.run_id = self.run_id or run.run_id
            self.task_group = self.task_group or run.task_group
            self.model_size = self.model_size or run.model_size
        sinks = getattr(trainer, "sinks", None)
        if isinstance(sinks, list):
            sinks.append(self._sink)
            self._uses_sink = True

    @property
    def store(self) -> Any:
        return self.controller.store if self.controller is not None else None

    def _make_store(self) -> Any:
        arg = self._store_arg
        if arg is None:
            return MemoryIncidentStore()
        if isinstance(arg, (str, Path)):
            from rftfm.fm.incidents import IncidentStore

            self._own_store = True
            return IncidentStore(arg)
        return arg

    def _build(self, args: Any) -> Controller:
        store = self._make_store()
        run_id = self.run_id or Path(getattr(args, "output_dir", "run") or "run").name
        detector, diagnoser = self._detector, self._diagnoser
        errors = []
        if detector is None:
            try:
                detector = default_detector()
            except Exception as exc:  # no trained detector: the loop cannot watch
                errors.append(f"detector: {type(exc).__name__}: {exc}")
                detector = _NullDetector()
        if diagnoser is None:
            try:
                diagnoser = default_diagnoser()
            except Exception as exc:  # no diagnoser: alarms get the unknown ladder
                errors.append(f"diagnoser: {type(exc).__name__}: {exc}")
        controller = Controller(detector, diagnoser, self.remediator, store, self.checkpointer, run_id=run_id,
                                task_group=self.task_group, model_size=self.model_size, config=self.config)
        for message in errors:
            controller.journal.record("error", 0, {"stage": "setup", "error": message})
        self.setup_error = "; ".join(errors) or None
        return controller

    # --- TrainerCallback -----------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        try:
            self.controller = self._build(args)
            handle = TrainerHandle(self.trainer, model=model, optimizer=optimizer, scheduler=lr_scheduler, control=control,
                                   state=state, backup_verifier=self.backup_verifier, backup_tool=self.backup_tool)
            # the initial checkpoint waits for the first step: the data loader has drawn its order by
            # then, so its RNG state is the one right before the first rollouts, like every later one's
            self.controller.start(handle, step=state.global_step, checkpoint=False, max_steps=state.max_steps or None)
            self._initial_checkpoint_due = True
        except Exception as exc:  # never break the trainer
            self.setup_error = f"{type(exc).__name__}: {exc}"
            self.controller = None

    def on_step_begin(self, args, state, control, **kwargs):
        if self.controller is not None and self._initial_checkpoint_due:
            self._initial_checkpoint_due = False
            self.controller.initial_checkpoint(state.global_step)

    def on_step_end(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        if self.controller is not None and self.controller.handle is not None:
            self.controller.handle.update(model=model, optimizer=optimizer, scheduler=lr_scheduler, control=control, state=state)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._uses_sink or self.controller is None or not logs or "loss" not in logs:
            return
        try:
            record = step_record_from_logs(self.controller.run_id, state.global_step, logs)
        except Exception as exc:
            self.controller._error("records", state.global_step, exc)
            return
        self.controller.observe(record, [])

    def _sink(self, record: StepRecord, trajectories: list) -> None:
        if self.controller is not None:
            self.controller.observe(record, trajectories)

    def on_train_end(self, args, state, control, **kwargs):
        if self.controller is None:
            return
        try:
            self.summary = self.controller.finish()
        except Exception:
            pass
        self.checkpointer.cleanup()
        if self._own_store:
            try:
                self.controller.store.close()
            except Exception:
                pass


class _NullDetector:
    """Stand-in when no detector could be loaded: never alarms (the setup error is recorded)."""

    def reset(self, run_id: str, task_group: str | None = None, model_size: str | None = None) -> None:
        pass

    def observe(self, step_record: Any, trajectories: Any) -> None:
        return None
