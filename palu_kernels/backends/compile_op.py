"""The PALU loss as a ``torch.library`` custom op, for ``torch.compile``.

Under ``torch.compile`` the eager path's ``autograd.Function`` (``function.py``: row lists
built with ``nonzero``, Triton launches, in-place hand-over of the gradient) would break the
graph. ``palu_local_entropy_loss`` therefore routes a traced call here: one opaque op,
``palu_kernels::loss_rows``, runs the chosen backend's ``rows`` (the eager path's own) and
returns the weighted per-row values ``[N]`` and the weighted gradient ``[N, V]`` it wrote; its
fake (meta) implementation gives their shapes, and its autograd formula is the same as the
eager path's, ``d loss / d z = grad * grad_output[row]``, written in plain torch so that the
compiler can fuse it. The reduction is applied outside the op (a sum: the row weights already hold the
1/|I|, 1/|C| of ``reduction="mean"``).

The eager path does not use this op: it keeps the free backward (grad_output exactly 1
costs nothing) and refuses a double backward (``_validation.refuse_double_backward``);
compiled, a double backward is refused by ``torch.compile`` itself.
"""

from __future__ import annotations

from typing import Optional

import torch

from .._validation import PALUArgs
from . import row_backend

if not hasattr(torch.library, "custom_op"):  # pragma: no cover - torch < 2.4
    raise RuntimeError(
        f"palu_local_entropy_loss under torch.compile needs torch >= 2.4 (torch.library."
        f"custom_op), got torch {torch.__version__}; call it outside the compiled region"
    )


def _args(logits, ref_logits, initiating, common, weights, k, target, target_value, kl,
          gamma, alpha, reduction) -> PALUArgs:
    z = logits if logits.dim() == 3 else logits.unsqueeze(0)
    r = ref_logits if ref_logits.dim() == 3 else ref_logits.unsqueeze(0)
    return PALUArgs(logits=z, ref_logits=r, initiating=initiating, common=common, k=k,
                    target=target, target_value=target_value, kl=kl or None, gamma=gamma,
                    alpha=alpha, reduction=reduction, row_shape=tuple(initiating.shape),
                    weights=weights)


@torch.library.custom_op("palu_kernels::loss_rows", mutates_args=())
def loss_rows(logits: torch.Tensor, ref_logits: torch.Tensor, initiating: torch.Tensor,
              common: torch.Tensor, weights: Optional[torch.Tensor], k: int, target: str,
              target_value: float, kl: str, gamma: float, alpha: float, reduction: str,
              backend: str, need_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted per-row values ``[N]`` and gradient ``[N, V]`` (``[0]`` without a gradient)
    of validated, flattened arguments (``kl=""`` for no KL term)."""
    a = _args(logits, ref_logits, initiating, common, weights, k, target, target_value, kl,
              gamma, alpha, reduction)
    per_row, grad, _ = row_backend(backend).rows(a, need_grad)
    if grad is None:
        grad = logits.new_empty(0)
    return per_row, grad


@loss_rows.register_fake
def _(logits, ref_logits, initiating, common, weights, k, target, target_value, kl, gamma,
      alpha, reduction, backend, need_grad):
    n, v = initiating.numel(), logits.shape[-1]
    per_row = logits.new_empty(n, dtype=torch.float64 if logits.dtype == torch.float64
                               else torch.float32)
    grad = logits.new_empty((n, v)) if need_grad else logits.new_empty(0)
    return per_row, grad


def _setup_context(ctx, inputs, output):
    ctx.shape, ctx.dtype = inputs[0].shape, inputs[0].dtype
    ctx.save_for_backward(output[1])
    ctx.mark_non_differentiable(output[1])


def _backward(ctx, grad_rows, _grad_grad):
    (grad,) = ctx.saved_tensors
    if grad.numel() == 0 or grad_rows is None:
        return (None,) * 14
    g = (grad.to(grad_rows.dtype) * grad_rows.reshape(-1, 1)).to(ctx.dtype)
    return (g.reshape(ctx.shape),) + (None,) * 13


loss_rows.register_autograd(_backward, setup_context=_setup_context)


def palu_loss_compiled(logits: torch.Tensor, a: PALUArgs, backend: str) -> torch.Tensor:
    """The loss through ``palu_kernels::loss_rows`` (``a`` from ``check_loss_args``)."""
    need_grad = logits.requires_grad and torch.is_grad_enabled()
    per_row, _ = loss_rows(logits, a.ref_logits, a.initiating, a.common, a.weights, a.k,
                           a.target, a.target_value, a.kl or "", a.gamma, a.alpha, a.reduction,
                           backend, need_grad)
    if a.reduction == "none":
        return per_row.reshape(a.row_shape)
    return per_row.sum()
