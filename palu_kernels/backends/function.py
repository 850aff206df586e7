"""The one ``autograd.Function`` of the PALU loss, shared by the torch and Triton backends.

A backend (:class:`RowBackend`) is two functions on validated arguments
(:class:`~palu_kernels._validation.PALUArgs`):

* ``rows(a, need_grad) -> (per_row, grad, state)``: the weighted per-row values ``[N]``
  (fp32; fp64 for fp64 logits) and, when ``need_grad``, the gradient of their sum with
  respect to the logits, ``[N, V]`` in the logits' dtype, written during the forward pass
  (``d loss / d z`` is known there: ``docs/spec.md``); ``state`` is what ``scale_`` needs to
  know about the rows (the Triton backend's row kinds; None for torch);
* ``scale_(grad, grad_output, state) -> grad``: ``grad *= grad_output`` in place (one scalar
  for ``"mean"`` / ``"sum"``, one value per row for ``"none"``); a ``grad_output`` of exactly
  1, the usual ``loss.backward()``, costs nothing.

Both carry the row weights of the reduction (``"mean"``: ``gamma / max(1, |I|)`` and
``alpha / max(1, |C|)``; ``"sum"`` and ``"none"``: ``gamma`` and ``alpha``) times the caller's
``weights``, so that

    loss = sum_t per_row[t]  ("mean", "sum")   or   per_row  ("none"),
    d loss / d z[t] = grad_output (or grad_output[t]) * grad[t].

The gradient is handed over once, scaled in place (it is not handed out yet), so backward
never allocates ``N x V``; a later backward through the same graph (``retain_graph=True``,
gradcheck) recomputes it from the saved inputs, whose in-place modification autograd
detects. The backward is not itself differentiable: a double backward raises
(:func:`~palu_kernels._validation.refuse_double_backward`) instead of returning a silent
zero Hessian. Under ``torch.compile`` the custom op of ``compile_op.py`` runs the same
``rows`` instead.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import torch

from .._validation import PALUArgs, refuse_double_backward


class RowBackend(NamedTuple):
    """A backend as :class:`PALUFunction` calls it (see the module docstring)."""

    rows: Callable  # (PALUArgs, need_grad) -> (per_row [N], grad [N, V] or None, state)
    scale_: Callable  # (grad, grad_output, state) -> grad, scaled in place


class PALUFunction(torch.autograd.Function):
    """``PALUFunction.apply(logits, a, backend)``: the loss of the validated arguments ``a``
    (``logits`` is the caller's tensor, which the gradient flows to) by ``backend``."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, a: PALUArgs, backend: RowBackend):
        per_row, grad, ctx.state = backend.rows(a, ctx.needs_input_grad[0])
        # mean: the row weights already hold gamma/max(1,|I|) and alpha/max(1,|C|)
        loss = per_row.reshape(a.row_shape) if a.reduction == "none" else per_row.sum()
        ctx.shape, ctx.backend, ctx.grad = logits.shape, backend, grad
        if grad is not None:
            # the inputs by reference, for a recompute; the rest of the arguments as they are
            ctx.save_for_backward(a.logits, a.ref_logits)
            ctx.args = dataclasses.replace(a, logits=None, ref_logits=None)
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        refuse_double_backward()
        if not ctx.needs_input_grad[0]:
            return None, None, None
        grad, ctx.grad = ctx.grad, None
        if grad is None:  # handed over by an earlier backward: recompute (version-checked)
            z, r = ctx.saved_tensors
            grad = ctx.backend.rows(dataclasses.replace(ctx.args, logits=z, ref_logits=r),
                                    True)[1]
        return ctx.backend.scale_(grad, grad_output, ctx.state).reshape(ctx.shape), None, None
