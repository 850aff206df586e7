"""NPO, negative preference optimisation against the frozen reference:
``L = gamma * -(2/beta) E[log sigmoid(-beta (logp(y|x) - logp_ref(y|x)))] + alpha * NLL_retain``
on per-sequence summed log-probabilities (``beta`` 0.1, ``gamma`` 1, ``alpha`` 1; the
``2/beta`` factor is open-unlearning's)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..base import UnlearningTrainer
from ..knobs import MethodConfig, knob, weight_knob
from .sequence import (check_beta, check_same_shape, forget_logprobs, forget_window, reduce,
                       sequence_logs)


def npo_loss(logp: torch.Tensor, ref_logp: torch.Tensor, beta: float = 0.1,
             reduction: str = "mean") -> torch.Tensor:
    """NPO: ``-(2/beta) log sigmoid(-beta (logp - ref_logp))`` per sequence.

    ``logp``/``ref_logp``: summed answer log-probabilities under the trained model and the
    frozen reference (:func:`~palu_kernels.train.methods.sequence.sequence_logprob`). Equal to
    ``(2/beta) log 2`` when they agree.
    """
    beta = check_beta(beta)
    check_same_shape(logp=logp, ref_logp=ref_logp)
    per = -(2.0 / beta) * F.logsigmoid(-beta * (logp - ref_logp))
    return reduce(per, reduction)


@dataclass
class NPOConfig(MethodConfig):
    """NPO's settings."""

    beta: float = knob(0.1, "inverse temperature", gt=0)
    gamma: float = weight_knob(1.0, "forget loss")
    alpha: float = weight_knob(1.0, "retain NLL")


class NPOTrainer(UnlearningTrainer):
    """NPO: ``L = gamma * -(2/beta) E[log sigmoid(-beta (logp - logp_ref))] + alpha * NLL_retain``
    on per-sequence summed log-probabilities (beta 0.1)."""

    method = "npo"
    config_class = NPOConfig
    loss_function = staticmethod(npo_loss)

    def forget_loss(self, model, inputs, counts):
        cfg = self.method_config
        logp, _, ref_logp = forget_logprobs(self, model, inputs, reference=True)
        n_tok_window, n_seq_window = forget_window(counts)
        loss = npo_loss(logp, ref_logp, beta=cfg.beta, reduction="sum") / n_seq_window
        return cfg.gamma * loss, sequence_logs(loss, logp, n_tok_window)


__all__ = ["NPOConfig", "NPOTrainer", "npo_loss"]
