"""``RFTFMCallback``: the RFT-FM closed loop inside a TRL ``GRPOTrainer``, in one line.

    trainer = GRPOTrainer(..., callbacks=[RFTFMCallback(incidents="incidents.db")])
    # or, which also lets the loop turn every GRPO knob (temperature, beta, length limit, ...):
    RFTFMCallback.attach(trainer, incidents="incidents.db")
    # alert-only: detect, diagnose and record, never act on the trainer
    RFTFMCallback.attach(trainer, remediate=False)
    # with a held-out evaluation for the loop's rollback and halt decisions (every 10 steps):
    RFTFMCallback.attach(trainer, eval_fn=RewardEval.from_trainer(trainer, threshold=1.0), eval_every=10)

Each ``on_log`` dict becomes a :class:`~rftfm.records.StepRecord` (one TRL parser per run,
:class:`rftfm.io.adapters.StepParser`) and goes through the :class:`~rftfm.fm.loop.Controller`
(detect -> diagnose -> remediate -> revalidate). When the trainer is the embedded
:class:`~rftfm.engine.trainer.RecordingGRPOTrainer`, the callback instead listens on the
trainer's sinks, which also carry the step's trajectories and eval accuracy.

Added with ``callbacks=[...]`` the callback only sees what TRL hands to callbacks (model,
optimiser, scheduler, control): it can roll back, change the learning rate and halt.
Through :meth:`RFTFMCallback.attach` it gets the trainer and all of its knobs. Under
``torchrun`` / ``accelerate launch`` (DDP) the main process decides and every rank acts
(:mod:`rftfm.integrations.distributed`). At the end of training the main process prints what
happened, in words (:func:`rftfm.fm.narrative.narrate`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from rftfm.fm import kl_coefficient, on_policy, repeat_rewards, reward_identity, schedule, unscored
from rftfm.fm.checkpoint import Checkpointer
from rftfm.fm.handle import TrainerHandle
from rftfm.fm.incidents import MemoryIncidentStore
from rftfm.fm.loop import Controller
from rftfm.fm.narrative import narrate
from rftfm.fm.policy import ControllerConfig
from rftfm.fm.remediate import Remediator
from rftfm.integrations import distributed, trl_advantages
from rftfm.integrations.batch_replay import BatchReplayMixin
from rftfm.io.adapters import StepParser, step_record
from rftfm.records import StepRecord

__all__ = ["BatchReplayMixin", "RFTFMCallback", "step_record_from_logs"]


def step_record_from_logs(run_id: str, step: int, logs: dict[str, Any]) -> StepRecord:
    """A StepRecord from one TRL ``on_log`` dict (an empty one for a log that is not a training step)."""
    step = max(0, int(step))
    return step_record("trl", logs, step, run_id) or StepRecord(run_id=run_id, step=step)


def default_detector() -> Any:
    from rftfm.fm.detect import Detector

    return Detector.load_default()


def default_diagnoser() -> Any:
    from rftfm.fm.diagnose import Diagnoser

    return Diagnoser.load_default()


class RFTFMCallback(TrainerCallback):
    """Runs the RFT-FM loop live in a Hugging Face / TRL trainer.

    ``remediate=False``: alert-only (no checkpoint, rollback, knob change or halt). ``eval_fn(model)
    -> float`` in [0, 1]: a held-out evaluation the loop runs at the start, every ``eval_every`` steps and
    when a decision needs the current accuracy (:class:`rftfm.integrations.trl_eval.RewardEval` builds
    one from TRL's ``eval_dataset``); without it, the loop decides from train-side metrics alone.
    ``report``: print the narrative of the incident log at the end of training. ``stochastic_reward``: the reward
    is meant to score one completion differently from call to call (a judge sampled at a temperature), so identical
    completions scored differently are no symptom (:mod:`rftfm.fm.repeat_rewards`).
    """

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
        eval_fn: Callable[[Any], float] | None = None,
        eval_every: int | None = None,
        report: bool = True,
        stochastic_reward: bool = False,
    ):
        self._detector, self._diagnoser = detector, diagnoser
        self._store_arg = incidents
        self._own_store = False
        self.remediator = remediator or Remediator()
        self.config = config or ControllerConfig(remediate=remediate)
        if config is not None and not remediate:
            self.config.remediate = False
        if eval_every is not None:
            self.config.eval_every = eval_every
        self._checkpoint_dir = checkpoint_dir
        self.checkpointer = Checkpointer(checkpoint_dir, keep=self.config.keep_checkpoints)
        self.run_id, self.task_group, self.model_size = run_id, task_group, model_size
        self.backup_verifier, self.backup_tool = backup_verifier, backup_tool
        self.eval_fn, self.report = eval_fn, report
        self.stochastic_reward = stochastic_reward
        self.trainer: Any = None
        self.controller: Controller | None = None
        self.handle: TrainerHandle | None = None  # this rank's (the controller's on the main process)
        self.rank, self.world = 0, 1
        self.synced: list[tuple[int, list[Any]]] = []  # (step, changes every rank made) in a multi-process run
        self.summary: dict[str, Any] | None = None
        self.narrative: str | None = None
        self.setup_error: str | None = None
        self._parser: StepParser | None = None
        self._uses_sink = False
        self._invariants: str | None = None  # "on" / "off" once the trainer has been looked at
        self._refused: str | None = None
        self._initial_checkpoint_due = False
        self._t0 = time.perf_counter()

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
            except Exception as exc:  # no diagnoser: alarms stay unexplained (reported, not acted on)
                errors.append(f"diagnoser: {type(exc).__name__}: {exc}")
        controller = Controller(
            detector,
            diagnoser,
            self.remediator,
            store,
            self.checkpointer,
            run_id=run_id,
            task_group=self.task_group,
            model_size=self.model_size,
            config=self.config,
            eval_fn=self.eval_fn,
        )
        for message in errors:
            controller.journal.record("error", 0, {"stage": "setup", "error": message})
        self.setup_error = "; ".join(errors) or None
        self._parser = StepParser("trl", run_id)
        return controller

    def _prepare_processes(self, args: Any) -> None:
        """Rank and world size; a DeepSpeed / FSDP run is watched alert-only (its state is sharded)."""
        self.rank, self.world = distributed.process_rank(args)
        self._refused = distributed.unsupported_parallelism(args, self.trainer)
        if self._refused is not None:
            self.config.remediate = False
            if self.rank == 0:
                print(f"rftfm: {self._refused}", file=sys.stderr)
        if self.world > 1 and self._checkpoint_dir is not None:  # every rank keeps its own checkpoints
            self.checkpointer = Checkpointer(
                Path(self._checkpoint_dir) / f"rank-{self.rank}", keep=self.config.keep_checkpoints
            )

    # --- TrainerCallback -----------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        self._t0 = time.perf_counter()
        try:
            self._prepare_processes(args)
            handle_cls = distributed.RecordingHandle if self.world > 1 else TrainerHandle
            self.handle = handle_cls(
                self.trainer,
                model=model,
                optimizer=optimizer,
                scheduler=lr_scheduler,
                control=control,
                state=state,
                backup_verifier=self.backup_verifier,
                backup_tool=self.backup_tool,
            )
            if self.rank == 0:
                self.controller = self._build(args)
                if self._refused is not None:
                    self.controller.journal.record(
                        "error", state.global_step, {"stage": "setup", "error": self._refused}
                    )
                    self.setup_error = "; ".join(e for e in (self.setup_error, self._refused) if e)
                # the initial checkpoint waits for the first step: the data loader has drawn its order by
                # then, so its RNG state is the one right before the first rollouts, like every later one's
                self.controller.start(
                    self.handle, step=state.global_step, checkpoint=False, max_steps=state.max_steps or None
                )
                self._check_schedule(args, state.global_step)
                self._check_on_policy(state.global_step)
                self.controller.sensing.know_stochastic_reward(self.stochastic_reward)
                self.controller.journal.record("run", state.global_step, {
                    "event": "repeated completions", "judged": not self.stochastic_reward,
                })
                self._check_reward_weights(state.global_step)
                self._check_kl_coefficient(state.global_step)
            self._initial_checkpoint_due = True
        except Exception as exc:  # never break the trainer
            self.setup_error = f"{type(exc).__name__}: {exc}"
            self.controller = None

    def on_step_begin(self, args, state, control, **kwargs):
        if not self._initial_checkpoint_due:
            return
        self._initial_checkpoint_due = False
        if self.controller is not None:
            self.controller.initial_checkpoint(state.global_step)
            if isinstance(self.handle, distributed.RecordingHandle):
                self.handle.take_ops()  # every rank takes its own initial checkpoint, just below
        elif self.handle is not None and self.config.remediate:
            try:
                self.handle.save(self.checkpointer, state.global_step)
            except Exception as exc:  # a follower without its checkpoint will refuse the rollback later
                print(f"rftfm (rank {self.rank}): initial checkpoint failed: {exc}", file=sys.stderr)

    def on_step_end(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        if self.handle is not None:
            self.handle.update(model=model, optimizer=optimizer, scheduler=lr_scheduler, control=control, state=state)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._uses_sink or not logs or "loss" not in logs:
            return
        if self.controller is not None:
            self._observe(state, logs)
        if self.world > 1 and self.handle is not None:
            self._sync(state.global_step, control)

    def _observe(self, state: Any, logs: dict[str, Any]) -> None:
        assert self.controller is not None
        try:
            assert self._parser is not None
            record = self._parser.parse_obj({**logs, "step": state.global_step})
        except Exception as exc:
            self.controller._error("records", state.global_step, exc)
            return
        if record is not None:
            self._add_invariants(record, state.global_step)
            self._add_verifier_checks(record, state.global_step)
            self.controller.observe(record, [])

    def _check_schedule(self, args: Any, step: int) -> None:
        """A scheduler that jumps by design (restarts, reduce-on-plateau) silences the detector's schedule channel;
        recorded in the incident log."""
        assert self.controller is not None
        scheduler = getattr(args, "lr_scheduler_type", None)
        jumps = schedule.jumps_by_design(scheduler)
        self.controller.sensing.know_schedule(jumps)
        name = str(getattr(scheduler, "value", scheduler))
        self.controller.journal.record("run", step, {"event": "learning-rate schedule", "scheduler": name,
                                                     "jumps_judged": not jumps})

    def _check_on_policy(self, step: int) -> None:
        """An attached GRPOTrainer that trains every optimiser step on fresh rollouts clips nothing: a clip ratio above
        0 then alarms (:mod:`rftfm.fm.on_policy`); recorded in the incident log."""
        assert self.controller is not None
        known = self.trainer is not None and on_policy.trl_on_policy(self.trainer)
        self.controller.sensing.know_on_policy(known)
        self.controller.journal.record("run", step, {"event": "on-policy check", "read": known})

    def _check_reward_weights(self, step: int) -> None:
        """An attached trainer's reward weights by function name (TRL: ``reward_func_names``, ``reward_weights``) arm
        the reward identity from the first record (:mod:`rftfm.fm.reward_identity`); recorded in the incident log."""
        assert self.controller is not None
        weights = reward_identity.trainer_weights(self.trainer)
        self.controller.sensing.know_reward_weights(weights)
        self.controller.journal.record("run", step, {"event": "reward weights", "read": weights})

    def _check_kl_coefficient(self, step: int) -> None:
        """An attached trainer's KL coefficient (TRL: ``beta``, with ``loss_type`` and ``max_completion_length``): a
        loss that carries much less of it than configured alarms (:mod:`rftfm.fm.kl_coefficient`); recorded in the
        incident log."""
        assert self.controller is not None
        configured = kl_coefficient.Configured.of_trainer(self.trainer) if self.trainer is not None else None
        self.controller.sensing.know_kl_coefficient(configured)
        read = None if configured is None else {"beta": configured.beta, "length": configured.max_completion_length}
        self.controller.journal.record("run", step, {"event": "KL coefficient", "read": read})

    def _estimator_checked(self, step: int) -> bool:
        """Whether the trainer's estimator makes the advantage invariants hold, decided once (recorded in the
        incident log); when it does, they are armed from the first record."""
        assert self.controller is not None
        if self._invariants is None:
            try:
                reason = trl_advantages.unsupported(self.trainer)
            except Exception as exc:  # counted, never raised: the steps are still observed, without them
                self._invariant_error(step, exc)
                reason = f"the trainer could not be checked ({type(exc).__name__})"
            self._invariants = "off" if reason else "on"
            self.controller.journal.record(
                "run", step, {"event": "advantage invariants", "read": reason is None, "reason": reason}
            )
            if reason is None:  # the estimator makes them hold: armed from the first record
                self.controller.sensing.know_invariants(True)
        return self._invariants == "on"

    def _invariant_error(self, step: int, exc: Exception) -> None:
        """A failure reading the advantage invariants, recorded in the incident log (never raised)."""
        assert self.controller is not None
        self.controller.journal.record(
            "error", step, {"stage": "advantage invariants", "error": f"{type(exc).__name__}: {exc}"}
        )

    def _add_invariants(self, record: StepRecord, step: int) -> None:
        """The advantage invariants of the trainer's latest generation batch, into ``record.extra`` (attached
        trainers only; whether they can be read is recorded once in the incident log, a failure as an error)."""
        assert self.controller is not None
        if self.trainer is None or self._invariants == "off":
            return
        try:
            if not self._estimator_checked(step):
                return
            values = trl_advantages.advantage_invariants(self.trainer)
            record.extra.update({k: v for k, v in values.items() if v is not None})
        except Exception as exc:  # counted, never raised; the step is still observed without them
            self._invariant_error(step, exc)

    def _add_verifier_checks(self, record: StepRecord, step: int) -> None:
        """The share of the trainer's latest batch that no reward function scored and its repeated completions scored
        differently, into ``record.extra`` (attached trainers only; a failure is recorded as an error, never raised)."""
        assert self.controller is not None
        if self.trainer is None:
            return
        checks = (
            (unscored.SIGNAL, "unscored completions", trl_advantages.unscored_share),
            (repeat_rewards.SIGNAL, "repeated completions", trl_advantages.repeat_disagreements),
        )
        for key, stage, read in checks:
            try:
                value = read(self.trainer)
            except Exception as exc:  # counted, never raised; the step is still observed without it
                self.controller.journal.record("error", step, {"stage": stage, "error": f"{type(exc).__name__}: {exc}"})
                continue
            if value is not None:
                record.extra[key] = value

    def _sync(self, step: int, control: Any) -> None:
        """Every rank makes the changes the main process just made (same step); if one rank cannot,
        every rank stops."""
        ops = self.handle.take_ops() if self.rank == 0 else None  # type: ignore[union-attr]
        ops = distributed.broadcast(ops)
        if not ops:
            return
        self.synced.append((step, ops))
        ok = True
        if self.rank != 0:
            try:
                distributed.replay(ops, self.handle, self.checkpointer)  # type: ignore[arg-type]
            except Exception as exc:
                ok = False
                print(f"rftfm (rank {self.rank}): could not follow {ops}: {exc}", file=sys.stderr)
        if not distributed.all_ranks_ok(ok):
            control.should_training_stop = True
            if self.controller is not None:
                self.controller._error(
                    "distributed",
                    self.controller.last_step,
                    RuntimeError(
                        "a rank could not make the main process's changes: training "
                        "stopped on every rank (replicas must not differ)"
                    ),
                )

    def _sink(self, record: StepRecord, trajectories: list) -> None:
        """A recording trainer's step with its trajectories (their advantages are the invariants' input)."""
        if self.controller is None:
            return
        if self.trainer is not None:
            self._estimator_checked(record.step)  # decided at the first step (never raises)
        self.controller.observe(record, trajectories)

    def on_train_end(self, args, state, control, **kwargs):
        if self.controller is not None:
            try:
                self.summary = self.controller.finish(wall_seconds=round(time.perf_counter() - self._t0, 3))
                self.narrative = narrate(self.controller.store.events(run_id=self.controller.run_id))
                if self.report:
                    print(self.narrative, file=sys.stderr)
            except Exception:
                pass
            if self._own_store:
                try:
                    self.controller.store.close()
                except Exception:
                    pass
        self.checkpointer.cleanup()


class _NullDetector:
    """Stand-in when no detector could be loaded: never alarms (the setup error is recorded)."""

    def reset(self, run_id: str, task_group: str | None = None, model_size: str | None = None) -> None:
        pass

    def observe(self, step_record: Any, trajectories: Any) -> None:
        return None
