"""Readable pure-PyTorch formulations of the PALU forget loss.

* :func:`palu_loss_reference` is the specification (``docs/spec.md``) written
  to be read: a stable sort for the top-K set, full ``log_softmax`` of both models, autograd
  for gradients. Every test compares against it.
* :func:`palu_loss_released` is the arithmetic of the authors' released code, step for step
  (top-K and gather on every row, full-vocabulary mean, ``log_softmax`` of both models for all
  rows, masking afterwards). It is the baseline of the benchmarks, not an oracle.
"""

from .palu import palu_loss_reference, palu_loss_released, topk_set_reference

__all__ = ["palu_loss_reference", "palu_loss_released", "topk_set_reference"]
