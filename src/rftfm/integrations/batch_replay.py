"""Batch replay: after a rollback, the discarded steps' prompt batches come again before new ones.

That is what ``Trainer.resume_from_checkpoint`` does (the data loader is fast-forwarded to the
checkpoint), and what makes a rollback a true resume: a configuration push undone by a rollback
then trains exactly like the run without it. TRL cannot rewind a live data loader, so the swap
happens where a GRPO step receives its batch; written here because neither TRL nor
transformers offers it.

    class MyTrainer(BatchReplayMixin, GRPOTrainer): ...
"""

from __future__ import annotations

from collections import deque
from typing import Any

#: Prompt batches of this many recent steps are remembered, so a rollback can train them again.
REPLAY_MEMORY = 256


class BatchReplay:
    """The effective run's recent prompt batches, and the ones a rollback queued to train again.

    :meth:`rewind` after a rollback of ``k`` steps queues the last ``k`` batches; :meth:`next` then
    hands them out, oldest first, each fresh batch of the data loader waiting behind them: the
    batches come in the planned order, delayed by ``k``.
    """

    def __init__(self, memory: int = REPLAY_MEMORY):
        self.recent: deque[Any] = deque(maxlen=memory)
        self.queue: deque[Any] = deque()

    def next(self, batch: Any) -> Any:
        """The batch to train now, given the data loader's next one."""
        if self.queue:
            self.queue.append(batch)
            batch = self.queue.popleft()
        self.recent.append(batch)
        return batch

    def rewind(self, steps: int) -> int:
        """Queue the last ``steps`` batches to come again (those still remembered); returns how many."""
        steps = max(0, min(steps, len(self.recent)))
        self.queue.extendleft([self.recent.pop() for _ in range(steps)])  # newest popped first; extendleft reverses
        return steps


class BatchReplayMixin:
    """Mix into your ``GRPOTrainer`` subclass so the loop's rollbacks resume exactly::

        class MyTrainer(BatchReplayMixin, GRPOTrainer): ...

    After a rollback the discarded steps' prompt batches come again before any new one, as with
    ``resume_from_checkpoint``; without it a plain ``GRPOTrainer`` goes on with its next batches.
    Hooks TRL's ``_generate_and_score_completions``, where a GRPO step receives its generation batch
    (once per optimiser step: TRL's default ``steps_per_generation`` equals the gradient accumulation
    steps). With ``num_iterations > 1`` one batch serves several optimiser steps; the replay then
    declines (returns 0) and the run goes on with its next batches.
    """

    def replay_last_batches(self, steps: int) -> int:
        if getattr(self, "num_iterations", 1) != 1:
            return 0
        return self._rftfm_batches().rewind(steps)

    def _generate_and_score_completions(self, inputs: Any) -> Any:
        if getattr(getattr(self, "model", None), "training", True):  # evaluation batches are not the run's
            inputs = self._rftfm_batches().next(inputs)
        return super()._generate_and_score_completions(inputs)  # type: ignore[misc]

    def _rftfm_batches(self) -> BatchReplay:
        replay = self.__dict__.get("_rftfm_batch_replay")
        if replay is None:
            replay = self.__dict__["_rftfm_batch_replay"] = BatchReplay()
        return replay
