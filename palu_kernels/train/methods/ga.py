"""GA, gradient ascent on the forget NLL: ``L = gamma * sum logp(y|x) / sum |y|`` (no retain
term; defaults as in open-unlearning, ``gamma`` 1)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..base import UnlearningTrainer
from ..knobs import MethodConfig, weight_knob
from .sequence import check_same_shape, forget_logprobs, forget_window, reduce, sequence_logs


def ga_loss(logp: torch.Tensor, n_tokens: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Gradient ascent on the forget NLL: ``sum_i logp_i / sum_i |y_i|``.

    Minimising it raises the mean forget NLL per token. ``reduction="sum"`` returns
    ``sum_i logp_i`` (to be divided by a token count of one's choice), ``"none"`` the
    per-sequence ``logp_i / |y_i|``.
    """
    check_same_shape(logp=logp, n_tokens=n_tokens)
    if reduction == "mean":
        return logp.sum() / n_tokens.sum().clamp(min=1)
    if reduction == "none":
        return logp / n_tokens.clamp(min=1)
    return reduce(logp, reduction)


def ga_forget_loss(trainer, model, inputs, counts, gamma: float):
    """``gamma * sum logp(y|x) / (forget answer tokens of the window)`` and its logs (GA and
    GradDiff)."""
    logp, n_tok, _ = forget_logprobs(trainer, model, inputs)
    n_tok_window, _ = forget_window(counts)
    loss = ga_loss(logp, n_tok, reduction="sum") / n_tok_window
    return gamma * loss, sequence_logs(loss, logp, n_tok_window)


@dataclass
class GAConfig(MethodConfig):
    """GA's settings."""

    gamma: float = weight_knob(1.0, "forget loss")


class GATrainer(UnlearningTrainer):
    """Gradient ascent: ``L = gamma * sum logp(y|x) / sum |y|`` (no retain term)."""

    method = "ga"
    config_class = GAConfig
    uses_retain = False
    loss_function = staticmethod(ga_loss)

    def forget_loss(self, model, inputs, counts):
        return ga_forget_loss(self, model, inputs, counts, self.method_config.gamma)


__all__ = ["GAConfig", "GATrainer", "ga_forget_loss", "ga_loss"]
