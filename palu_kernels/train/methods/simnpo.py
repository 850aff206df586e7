"""SimNPO, reference-free NPO on the length-normalised log-probability:
``L = gamma * -(2/beta) E[log sigmoid(-(beta/|y|) logp(y|x) - delta)] + alpha * NLL_retain``
(``beta`` 4.5, ``delta`` 0, ``gamma`` 0.125, ``alpha`` 1: the SimNPO authors' TOFU
configuration). ``delta`` enters as in the SimNPO paper, ``... - delta`` (open-unlearning
subtracts ``beta * delta``; the two agree at the default 0)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..base import UnlearningTrainer
from ..knobs import MethodConfig, knob, weight_knob
from .sequence import (check_beta, check_same_shape, forget_logprobs, forget_window, reduce,
                       sequence_logs)


def simnpo_loss(logp: torch.Tensor, n_tokens: torch.Tensor, beta: float = 4.5, delta: float = 0.0,
                reduction: str = "mean") -> torch.Tensor:
    """SimNPO: ``-(2/beta) log sigmoid(-(beta/|y|) logp - delta)`` per sequence.

    Reference-free NPO on the length-normalised log-probability (SimNPO paper, whose margin
    ``gamma`` is ``delta`` here).
    """
    beta = check_beta(beta)
    check_same_shape(logp=logp, n_tokens=n_tokens)
    per = -(2.0 / beta) * F.logsigmoid(-(beta / n_tokens.clamp(min=1)) * logp - float(delta))
    return reduce(per, reduction)


@dataclass
class SimNPOConfig(MethodConfig):
    """SimNPO's settings (the SimNPO authors' TOFU configuration)."""

    beta: float = knob(4.5, "inverse temperature", gt=0)
    delta: float = knob(0.0, "margin")
    gamma: float = weight_knob(0.125, "forget loss")
    alpha: float = weight_knob(1.0, "retain NLL")


class SimNPOTrainer(UnlearningTrainer):
    """SimNPO: ``L = gamma * -(2/beta) E[log sigmoid(-(beta/|y|) logp - delta)] + alpha *
    NLL_retain`` (beta 4.5, delta 0, gamma 0.125); no reference."""

    method = "simnpo"
    config_class = SimNPOConfig
    loss_function = staticmethod(simnpo_loss)

    def forget_loss(self, model, inputs, counts):
        cfg = self.method_config
        logp, n_tok, _ = forget_logprobs(self, model, inputs)
        n_tok_window, n_seq_window = forget_window(counts)
        loss = simnpo_loss(logp, n_tok, beta=cfg.beta, delta=cfg.delta,
                           reduction="sum") / n_seq_window
        return cfg.gamma * loss, sequence_logs(loss, logp, n_tok_window)


__all__ = ["SimNPOConfig", "SimNPOTrainer", "simnpo_loss"]
