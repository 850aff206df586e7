"""Compatibility module: the PALU trainer now lives in :mod:`palu_kernels.train.methods.palu`,
the common base in :mod:`palu_kernels.train.base` and the ``lm_head`` surgery of the fused
path in :mod:`palu_kernels.train.heads`. The old names are re-exported here."""

from .base import PALUConfig, UnlearningTrainer, batch_counts
from .heads import FusedHead, FusedLinearError, fused_head, is_peft_model, last_hidden_states
from .methods.palu import PALUTrainer

__all__ = ["FusedHead", "FusedLinearError", "PALUConfig", "PALUTrainer", "UnlearningTrainer",
           "batch_counts", "fused_head", "is_peft_model", "last_hidden_states"]
