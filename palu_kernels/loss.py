"""Public PALU loss: the functional call and its module wrapper (the dispatcher: every check
in ``_validation``, then one backend of ``backends/``)."""

from __future__ import annotations

import torch

from ._validation import check_backend, check_loss_args, compiling
from .backends import row_backend
from .backends.function import PALUFunction


def palu_local_entropy_loss(
    logits: torch.Tensor,
    ref_logits: torch.Tensor,
    initiating_mask: torch.Tensor,
    common_mask: torch.Tensor | None = None,
    *,
    k: int | None = 5000,
    target="mean",
    kl: str | None = "reverse",
    gamma: float = 1.0,
    alpha: float = 1.0,
    reduction: str = "mean",
    weights: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """The PALU forget loss (``docs/spec.md``), a drop-in for the naive loss.

    Args:
        logits: trainable model's logits, ``[B, T, V]`` or ``[N, V]``, fp32/bf16/fp16 (fp64
            on the torch backend), already shifted: row t predicts token t+1.
        ref_logits: frozen reference model's logits, same shape and dtype. It never gets a
            gradient: a ``ref_logits`` that requires grad is detached.
        initiating_mask: bool ``[B, T]`` / ``[N]``, the rows in I (see :func:`initiating_mask`).
        common_mask: bool, the rows in C (non-sensitive answer rows, EOS included), or None.
        k: size of the top-K set of each reference row; None means the whole vocabulary, and
            ``k > V`` is clipped to V.
        target: ``"mean"`` (mean of z over V, with gradient; the released code),
            ``"mean_detached"``, ``"topk_mean"`` (mean over S) or a float constant.
        kl: ``"reverse"`` KL(p||q) (released code), ``"forward"`` KL(q||p) (paper), or None.
        gamma, alpha: weights of the local and the KL term.
        reduction: ``"mean"`` (each term over its own row count), ``"sum"`` or ``"none"``
            (per-row values shaped like the mask).
        weights: optional float ``[B, T]`` / ``[N]`` per-row factors (finite), applied to each
            row's term before the reduction: ``gamma * w_t * L_local(t)`` and
            ``alpha * w_t * KL(t)``. A trainer that normalises over a gradient-accumulation
            window passes ``1/|I|`` and ``1/|C|`` here and sums: the gradient is then complete
            after the forward and the backward does no work (``grad_output`` is 1).
        backend: ``"auto"`` (Triton on CUDA tensors, torch otherwise), ``"torch"``, ``"triton"``.

    Returns:
        The loss, fp32 (fp64 for fp64 logits); differentiable with respect to ``logits``
        only, with the gradient in the logits' dtype. Empty I and C give 0 and a zero
        gradient.
    """
    args = check_loss_args(
        logits, ref_logits, initiating_mask, common_mask, k=k, target=target, kl=kl,
        gamma=gamma, alpha=alpha, reduction=reduction, weights=weights,
    )
    backend = check_backend(backend, logits.device, logits.dtype)
    if compiling():  # traced by torch.compile: one opaque custom op, no graph break
        from .backends.compile_op import palu_loss_compiled

        return palu_loss_compiled(logits, args, backend)
    return PALUFunction.apply(logits, args, row_backend(backend))


class PALULoss(torch.nn.Module):
    """Module form of :func:`palu_local_entropy_loss`, holding its options."""

    def __init__(self, *, k=5000, target="mean", kl="reverse", gamma=1.0, alpha=1.0,
                 reduction="mean", backend="auto"):
        super().__init__()
        self.k, self.target, self.kl = k, target, kl
        self.gamma, self.alpha = gamma, alpha
        self.reduction, self.backend = reduction, backend

    def forward(self, logits, ref_logits, initiating_mask, common_mask=None, weights=None):
        return palu_local_entropy_loss(
            logits, ref_logits, initiating_mask, common_mask, k=self.k, target=self.target,
            kl=self.kl, gamma=self.gamma, alpha=self.alpha, reduction=self.reduction,
            weights=weights, backend=self.backend,
        )

    def extra_repr(self) -> str:
        return (f"k={self.k}, target={self.target!r}, kl={self.kl!r}, gamma={self.gamma}, "
                f"alpha={self.alpha}, reduction={self.reduction!r}, backend={self.backend!r}")
