"""GradDiff, gradient difference: GA on the forget answers plus the retain NLL,
``L = gamma * sum logp(y|x) / sum |y| + alpha * NLL_retain`` (``gamma`` 1, ``alpha`` 1)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..base import UnlearningTrainer
from ..knobs import MethodConfig, weight_knob
from .ga import ga_forget_loss, ga_loss


def graddiff_loss(logp: torch.Tensor, n_tokens: torch.Tensor, retain_nll: torch.Tensor, *,
                  gamma: float = 1.0, alpha: float = 1.0) -> torch.Tensor:
    """Gradient difference: ``gamma * ga_loss(logp, n_tokens) + alpha * retain_nll``.

    ``retain_nll`` is the mean retain NLL per token (a scalar).
    """
    return gamma * ga_loss(logp, n_tokens) + alpha * retain_nll


@dataclass
class GradDiffConfig(MethodConfig):
    """GradDiff's settings."""

    gamma: float = weight_knob(1.0, "forget loss")
    alpha: float = weight_knob(1.0, "retain NLL")


class GradDiffTrainer(UnlearningTrainer):
    """Gradient difference: ``L = gamma * sum logp(y|x) / sum |y| + alpha * NLL_retain``."""

    method = "graddiff"
    config_class = GradDiffConfig
    loss_function = staticmethod(graddiff_loss)

    def forget_loss(self, model, inputs, counts):
        return ga_forget_loss(self, model, inputs, counts, self.method_config.gamma)


__all__ = ["GradDiffConfig", "GradDiffTrainer", "graddiff_loss"]
