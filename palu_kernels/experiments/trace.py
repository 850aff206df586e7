"""The per-step trace of a harness run (``RunSpec.trace_every``): a ``TrainerCallback`` that
measures the forget answers' probability while the model unlearns."""

from __future__ import annotations

from typing import List

__all__ = ["forget_trace"]


def forget_trace(pairs, pad_id: int, every: int):
    """A ``TrainerCallback`` that records the mean length-normalised forget answer
    probability of ``pairs`` (encoded prompt/answer pairs) every ``every`` optimizer steps
    (and at step 0) in its ``points``: ``[{"step", "forget_probability"}]``."""
    from transformers import TrainerCallback

    from ..eval.metrics import normalised_probability, score_answers

    class Trace(TrainerCallback):
        def __init__(self):
            self.points: List[dict] = []

        def _measure(self, model, step):
            was = model.training
            model.eval()
            try:
                s = score_answers(model, pairs, pad_token_id=pad_id, batch_size=16,
                                  progress=False)
            finally:
                model.train(was)
            p = sum(normalised_probability(x.avg_nll) for x in s) / len(s)
            self.points.append({"step": step, "forget_probability": p})

        def on_train_begin(self, args, state, control, model=None, **kw):
            self._measure(model, 0)

        def on_step_end(self, args, state, control, model=None, **kw):
            if state.global_step % every == 0 or state.global_step == state.max_steps:
                self._measure(model, state.global_step)

    return Trace()
