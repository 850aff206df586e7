"""Compatibility module: the baselines now live one per file in
:mod:`palu_kernels.train.methods` (``ga``, ``graddiff``, ``npo``, ``simnpo``, ``idkdpo``),
siblings of ``PALUTrainer`` on :class:`~palu_kernels.train.base.UnlearningTrainer`, and the
method registry in :mod:`palu_kernels.train.registry`. The old names are re-exported here.

The loss functions work on per-sequence log-probabilities (:func:`sequence_logprob`) without
a trainer::

    >>> import torch
    >>> from palu_kernels.train.baselines import npo_loss
    >>> round(float(npo_loss(torch.tensor([-3.0]), torch.tensor([-3.0]), beta=0.1)), 4)
    13.8629
"""

from .base import BaselineConfig, forget_counts
from .methods.ga import GAConfig, GATrainer, ga_loss
from .methods.graddiff import GradDiffConfig, GradDiffTrainer, graddiff_loss
from .methods.idkdpo import (BUILTIN_REFUSALS, DEFAULT_IDK_FILE, IdkDPOConfig, IdkDPOTrainer,
                             RefusalCollator, RefusalDataset, idkdpo_loss, load_refusals)
from .methods.npo import NPOConfig, NPOTrainer, npo_loss
from .methods.sequence import REDUCTIONS, sequence_logprob
from .methods.simnpo import SimNPOConfig, SimNPOTrainer, simnpo_loss
from .registry import LOSSES, METHODS, method_config, trainer_class

__all__ = ["BUILTIN_REFUSALS", "BaselineConfig", "DEFAULT_IDK_FILE", "GAConfig", "GATrainer",
           "GradDiffConfig", "GradDiffTrainer", "IdkDPOConfig", "IdkDPOTrainer", "LOSSES",
           "METHODS", "NPOConfig", "NPOTrainer", "REDUCTIONS", "RefusalCollator",
           "RefusalDataset", "SimNPOConfig", "SimNPOTrainer",
           "forget_counts", "ga_loss", "graddiff_loss", "idkdpo_loss", "load_refusals",
           "method_config", "npo_loss", "sequence_logprob", "simnpo_loss", "trainer_class"]
