"""TRL ``GRPOTrainer`` with fault-injection hooks and live recording of steps and trajectories.

The subclass adds three things to TRL's loop and nothing else:

* it asks the run's injector to act where the fault lives (configuration at onset, the
  reward / tool sandbox through the reward function, the rollout policy, the advantages);
* it records one :class:`~rftfm.records.TrajectoryRecord` per completion and one
  :class:`~rftfm.records.StepRecord` per logging step, from what the trainer logged (with
  ``logging_steps > 1`` the metrics are TRL's averages over the window, as a user's log has them);
* it hands every record to its sinks (files, a live monitor) as soon as the step ends.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import Sampler
from trl import GRPOTrainer

from rftfm.engine.hooks import Injector
from rftfm.engine.policy_eval import eval_accuracy
from rftfm.engine.tasks import SHAPING_REWARDS, Problem, TaskGroup, calculator, with_retries
from rftfm.integrations.batch_replay import BatchReplay
from rftfm.io.adapters import TRL_STEP_KEYS as ADAPTER_TRL_KEYS
from rftfm.records import FaultInjection, RunInfo, StepRecord, TrajectoryFlags, TrajectoryRecord

StepSink = Callable[[StepRecord, list[TrajectoryRecord]], None]

#: TRL log key -> StepRecord field: the TRL adapter's table, less the two fields this trainer
#: measures itself (zero-advantage groups after any credit fault, step time without eval).
TRL_STEP_KEYS: dict[str, str] = {
    key: field for key, field in ADAPTER_TRL_KEYS.items() if field not in ("frac_zero_std_groups", "step_time_s")
}


def repetition_stats(text: str) -> tuple[float, float]:
    """(repetition ratio, unique-token ratio) of a character completion."""
    if not text:
        return 0.0, 0.0
    repeats = sum(a == b for a, b in zip(text, text[1:]))
    return repeats / max(len(text) - 1, 1), len(set(text)) / len(text)


class PlannedThenSpare(Sampler[int]):
    """Two samplers one after the other, the second's indices shifted by ``offset``.

    With TRL's ``RepeatSampler`` over the planned prompts first, a run trains on exactly the batches
    it would have without spare prompts; only a run extended past its planned steps (a replay after
    a rollback) reaches the spare ones. Written here because neither TRL nor torch chains samplers.
    """

    def __init__(self, first: Sampler[int], second: Sampler[int], offset: int):
        self.first, self.second, self.offset = first, second, offset

    def __iter__(self) -> Iterator[int]:
        yield from self.first
        for index in self.second:
            yield index + self.offset

    def __len__(self) -> int:
        return len(self.first) + len(self.second)  # type: ignore[arg-type]


class RecordingGRPOTrainer(GRPOTrainer):
    """A ``GRPOTrainer`` that injects one fault and records what happened."""

    def __init__(
        self,
        *args: Any,
        run: RunInfo,
        task: TaskGroup,
        injector: Injector,
        sinks: list[StepSink],
        eval_problems: list[Problem],
        planned_prompts: int | None = None,
        **kwargs: Any,
    ):
        self.run = run
        self.task = task
        self.injector = injector
        self.sinks = sinks
        self.eval_problems = eval_problems
        self.planned_prompts = planned_prompts  # the dataset's first prompts are the planned run, the rest spare
        self._pending: list[TrajectoryRecord] = []  # trajectories since the last logged step
        self._outcomes: list[tuple[float, int, int]] = []  # (reward as TRL combines it, tool calls, tool errors)
        self._shaping_outputs: dict[str, list[float]] = {}
        self._frac_zero_adv: list[float] = []  # one per step since the last logged step
        self._last_log_time = time.perf_counter()
        self._last_log_step = 0
        self._logs_written = 0
        self._eval_time = 0.0
        self.tool_retries = 0  # knob: retries of a tool call that raised
        self.reward_samples = 1  # knob: verifier calls averaged per completion (for a stochastic verifier)
        self.dynamic_sampling_rounds = 0  # knob: extra generation rounds that refill all-zero-advantage groups (DAPO)
        self.batch_replay = BatchReplay()  # what a rollback trains again (see replay_last_batches)
        # the verifier first (a backup verifier replaces reward_funcs[0]), then the task's shaping rewards
        super().__init__(*args, reward_funcs=[self.verifier_reward, *map(self._shaping_reward, task.shaping)], **kwargs)

    def _get_train_sampler(self, dataset: Any = None) -> Sampler[int]:
        """TRL's sampler over the planned prompts, then over the spare ones (see :class:`PlannedThenSpare`)."""
        dataset = self.train_dataset if dataset is None else dataset
        planned = self.planned_prompts
        if planned is None or not 0 < planned < len(dataset):
            return super()._get_train_sampler(dataset)
        return PlannedThenSpare(super()._get_train_sampler(range(planned)),
                                super()._get_train_sampler(range(len(dataset) - planned)), offset=planned)

    # --- the reward functions TRL calls ----------------------------------------------
    def verifier_reward(self, prompts: list[str], completions: list[str], answer: list[int], prompt_id: list[str],
                        **_: Any) -> list[float | None]:
        step = self.state.global_step + 1
        tool = with_retries(self.injector.tool(calculator, step), self.tool_retries)
        problems = [Problem(p, int(a), pid) for p, a, pid in zip(prompts, answer, prompt_id)]
        outcomes = [self.task.verify(c, q, tool) for c, q in zip(completions, problems)]
        verified = np.array([o.reward for o in outcomes])
        # each of the ``reward_samples`` verifier calls goes through the (possibly faulty) reward path;
        # a call that returned None (NaN) does not count, as a retried verifier call would not
        samples = np.array([self.injector.rewards(verified.copy(), list(completions), problems, step)
                            for _ in range(max(self.reward_samples, 1))])
        rewards = _mean_of_answered(samples)
        self._outcomes = [(float(r), o.tool_calls, o.tool_errors) for r, o in zip(rewards, outcomes)]
        return [None if math.isnan(r) else float(r) for r in rewards]

    def _shaping_reward(self, name: str) -> Callable[..., list[float]]:
        """The task's shaping reward ``name`` as a TRL reward function (TRL logs it as ``rewards/<name>/mean``)."""
        score = SHAPING_REWARDS[name]

        def reward(prompts: list[str], completions: list[str], answer: list[int], **_: Any) -> list[float]:
            values = [score(c, Problem(p, int(a), ""), self.max_completion_length)
                      for p, c, a in zip(prompts, completions, answer)]
            self._shaping_outputs[name] = values
            return values

        reward.__name__ = name
        return reward

    def _calculate_rewards(self, inputs: Any, prompts: Any, completions: Any, completion_ids_list: Any) -> torch.Tensor:
        """TRL's per-function rewards; the recorded reward of a completion is their weighted sum, as TRL forms
        it (nansum; NaN when every function returned None)."""
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        if self.task.shaping:
            weights = self.reward_weights.tolist()
            columns = [[r for r, _, _ in self._outcomes]] + [self._shaping_outputs[n] for n in self.task.shaping]
            per_completion = np.array(columns, dtype=float).T * np.array(weights)
            combined = np.where(np.isnan(per_completion).all(axis=1), np.nan, np.nansum(per_completion, axis=1))
            self._outcomes = [(float(r), calls, errors) for r, (_, calls, errors) in zip(combined, self._outcomes)]
        return rewards_per_func

    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        with self.injector.loss_scope(self, self.state.global_step + 1):
            return super()._compute_loss(model, inputs)

    # --- rollout ----------------------------------------------------------------------
    def _generate_single_turn(self, *args: Any, **kwargs: Any):
        with self.injector.rollout_policy(self.model, self.state.global_step + 1):
            return super()._generate_single_turn(*args, **kwargs)

    def replay_last_batches(self, steps: int) -> int:
        """After a rollback of ``steps`` steps: their prompt batches come again before any new one,
        as when resuming from a checkpoint (see :class:`BatchReplay`). Returns the batches queued."""
        return self.batch_replay.rewind(steps)

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        step = self.state.global_step + 1
        inputs = self.batch_replay.next(inputs)
        self.injector.before_rollout(self, step)
        out = self._scored_batch(inputs, step)
        for _ in range(self.dynamic_sampling_rounds):
            if not self._refill_zero_advantage_groups(out, inputs, step):
                break
        if self.task.uses_tool:
            self._log_tool_metrics()
        ids, mask = out["completion_ids"], out["completion_mask"]
        lengths = mask.sum(dim=1)
        if self.injector.uses_rollout_policy(step):
            # Behaviour-policy log-probs, as an asynchronous rollout engine reports them.
            full_ids = torch.cat([out["prompt_ids"], ids], dim=1)
            full_mask = torch.cat([out["prompt_mask"], mask], dim=1)
            with torch.no_grad(), self.injector.rollout_policy(self.model, step):
                out["old_per_token_logps"], _, _ = self._get_per_token_logps_and_entropies(
                    self.model, full_ids, full_mask, ids.size(1), batch_size=self.args.per_device_train_batch_size
                )
        self._record_trajectories(inputs, ids, lengths, out["advantages"], step)
        return out

    def _log_tool_metrics(self) -> None:
        """TRL's ``tools/call_frequency`` (calls per completion) and ``tools/failure_frequency`` (failed calls per
        call, 0 without calls), as its GRPOTrainer logs them for a trainer with ``tools``: this engine's calculator
        runs inside the verifier rather than through TRL's tool loop, so it logs them itself, once per trained
        batch (TRL averages them over a logging window)."""
        calls = sum(c for _, c, _ in self._outcomes)
        errors = sum(e for _, _, e in self._outcomes)
        metrics = self._metrics["train" if self.model.training else "eval"]
        metrics["tools/call_frequency"].append(calls / max(len(self._outcomes), 1))
        metrics["tools/failure_frequency"].append(errors / calls if calls else 0.0)

    def _scored_batch(self, inputs: list[dict[str, Any]], step: int) -> dict[str, Any]:
        """One TRL generation + scoring round, with the (possibly faulty) advantage computation applied."""
        out = super()._generate_and_score_completions(inputs)
        lengths = out["completion_mask"].sum(dim=1)
        out["advantages"] = self.injector.advantages(out["advantages"], lengths, self.num_generations, step)
        return out

    def _refill_zero_advantage_groups(self, out: dict[str, Any], inputs: list[dict[str, Any]], step: int) -> bool:
        """DAPO dynamic sampling, one round: sample the same prompts again and swap every group whose
        advantages are all zero for its new sample when that one carries signal. TRL has no refill
        (its generation batch is fixed), so it is written here. Returns False when no group needs one."""
        g = self.num_generations
        empty = out["advantages"].view(-1, g).abs().amax(dim=1) == 0
        if not bool(empty.any()):
            return False
        outcomes = list(self._outcomes)
        new = self._scored_batch(inputs, step)
        swap = empty & (new["advantages"].view(-1, g).abs().amax(dim=1) > 0)
        if bool(swap.any()):
            rows = swap.repeat_interleave(g)
            for key, value in out.items():
                other = new.get(key)
                both = torch.is_tensor(value) and torch.is_tensor(other)
                if not both or value.dim() == 0 or value.size(0) != rows.numel():
                    continue
                if value.dim() >= 2 and value.size(1) != other.size(1):  # completions are padded per round
                    width = max(value.size(1), other.size(1))
                    pad_value = self.processing_class.pad_token_id if key == "completion_ids" else 0
                    value = torch.nn.functional.pad(value, (0, width - value.size(1)), value=pad_value)
                    other = torch.nn.functional.pad(other, (0, width - other.size(1)), value=pad_value)
                out[key] = torch.where(rows.view(-1, *([1] * (value.dim() - 1))), other, value)
            mask = out["completion_mask"] * out["tool_mask"] if "tool_mask" in out else out["completion_mask"]
            if "num_items_in_batch" in out:
                out["num_items_in_batch"] = mask.sum().to(out["num_items_in_batch"].dtype)
            self._outcomes = [n if bool(r) else o for o, n, r in zip(outcomes, self._outcomes, rows)]
        else:
            self._outcomes = outcomes
        return True

    def _record_trajectories(self, inputs, ids, lengths, advantages, step: int) -> None:
        eos = self.processing_class.eos_token_id
        limit = self.max_completion_length
        texts = self.processing_class.batch_decode(ids, skip_special_tokens=True)
        adv = advantages.detach().float()
        groups = adv.view(-1, self.num_generations)
        self._frac_zero_adv.append(float((groups.abs().amax(dim=1) < 1e-6).float().mean()))
        label = self._label(step)
        records = []
        for i, (example, text) in enumerate(zip(inputs, texts)):
            n = int(lengths[i])
            has_eos = n > 0 and int(ids[i, n - 1]) == eos
            visible = n - int(has_eos)
            reward, tool_calls, tool_errors = self._outcomes[i] if i < len(self._outcomes) else (float("nan"), 0, 0)
            reward = None if math.isnan(reward) else reward  # no reward function answered: missing, not a number
            rep, uniq = repetition_stats(text)
            records.append(
                TrajectoryRecord(
                    run_id=self.run.run_id,
                    rollout_step=step,
                    prompt_id=example["prompt_id"],
                    group_id=i // self.num_generations,
                    reward=reward,
                    response_length=visible,
                    advantage=float(adv[i]),
                    ret=reward,
                    repetition_ratio=rep,
                    unique_token_ratio=uniq,
                    tool_call_count=tool_calls,
                    tool_error_count=tool_errors,
                    flags=TrajectoryFlags(
                        empty_response=visible == 0,
                        short_response=visible <= 1,
                        long_response=n >= limit,
                        truncated=not has_eos,
                    ),
                    completion=text,
                    fault_injection=label,
                )
            )
        self._pending.extend(records)

    def _label(self, step: int) -> FaultInjection | None:
        if self.run.control_or_fault != "fault":
            return None
        return FaultInjection(
            fault_injection_type=self.run.fault_type,
            fault_injection_strength=self.run.fault_strength,
            active=self.injector.is_active(step),
        )

    # --- step records -------------------------------------------------------------------
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """One StepRecord per logging step: TRL's metrics (averaged over the window when
        ``logging_steps > 1``), with every trajectory sampled since the last logged step."""
        super().log(logs, start_time)  # merges TRL's averaged metrics into ``logs``
        if "loss" not in logs or not self.model.training:
            return
        step = self.state.global_step
        steps_in_window = max(step - self._last_log_step, 1)
        now = time.perf_counter()
        step_time = (now - self._last_log_time - self._eval_time) / steps_in_window
        accuracy = None
        t0 = time.perf_counter()
        if step % (self.run.eval_every or 1) == 0 or self._logs_written == 0:  # eval_every: in train steps
            accuracy = eval_accuracy(self.model, self.task, self.eval_problems)
        self._eval_time = time.perf_counter() - t0
        fields = {field: logs.get(key) for key, field in TRL_STEP_KEYS.items()}
        known = set(TRL_STEP_KEYS) | {"epoch", "step"}
        extra = {k: float(v) for k, v in logs.items() if k not in known and isinstance(v, (int, float))}
        frac_zero = float(np.mean(self._frac_zero_adv)) if self._frac_zero_adv else float("nan")
        record = StepRecord(
            run_id=self.run.run_id,
            step=step,
            eval_accuracy=accuracy,
            frac_zero_std_groups=frac_zero,
            step_time_s=step_time,
            extra=extra,
            fault_injection=self._label(step),
            **fields,
        )
        self._last_log_time, self._last_log_step = now, step
        self._logs_written += 1
        trajectories, self._pending, self._frac_zero_adv = self._pending, [], []
        for sink in self.sinks:
            sink(record, trajectories)


def _mean_of_answered(samples: np.ndarray) -> np.ndarray:
    """Per completion, the mean over the verifier calls that returned a reward (NaN when none did)."""
    if not np.isnan(samples).any():
        return np.mean(samples, axis=0)
    answered = ~np.isnan(samples)
    total = np.where(answered, samples, 0.0).sum(axis=0)
    count = answered.sum(axis=0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)
