"""The PALU loss straight from hidden states and the output projection (``lm_head``).

:func:`palu_fused_linear_loss` computes the same value and gradients as::

    palu_local_entropy_loss(hidden @ weight.T + bias, ref_hidden @ ref_weight.T + ref_bias,
                            initiating_mask, common_mask, ...)

without ever holding the ``T x V`` logits of either model. At V = 128k and 8k tokens the
logits alone are 4 GB per model in fp32; here the peak is a few chunks of ``chunk_rows x V``.

How it works (forward, reductions ``"mean"`` and ``"sum"``):

* the rows that carry loss (``I`` or ``C``) are listed once with ``nonzero``; rows outside
  them are never projected. On the CPU this is free; on a GPU it is this function's own
  single host synchronisation (the row count sizes the loop). The ``"triton"`` backend adds
  none; the ``"torch"`` backend on a GPU lists each chunk's rows with its own ``nonzero``;
* the arguments are validated once, up front (``_validation.check_fused_linear_args``);
* rows go through in chunks of ``chunk_rows``. Per chunk: both models' logits by one matmul
  each, then the backend's ``rows`` (:mod:`palu_kernels.backends`, ``"torch"`` or
  ``"triton"`` unchanged, no loss arithmetic repeated here, no autograd) gives the chunk's
  weighted per-row values and ``dloss/dlogits``, already weighted, then
  ``grad_hidden[rows] = dlogits @ weight``, ``grad_weight += dlogits^T @ hidden`` and
  ``grad_bias += dlogits.sum(0)``, the last two accumulated in fp32 (fp64 for fp64 inputs);
* each row's weight goes to the backend as its row weight: ``"mean"``'s ``1 / max(1, |I|)``
  or ``1 / max(1, |C|)`` from the global counts (device tensors, no synchronisation), times
  the caller's ``weights`` (as in :func:`palu_kernels.palu_local_entropy_loss`);
* backward scales the stored gradients by the scalar ``grad_output`` (out of place, so a
  ``retain_graph`` backward can run again; on the CPU a ``grad_output`` of exactly 1 returns
  them as they are, saving a weight-sized copy; on a GPU that test would cost a sync).

With ``reduction="none"`` the output is one value per row and ``grad_output`` one weight per
row. The weight gradient ``sum_t g_t dlogits_t^T h_t`` cannot be rebuilt from an unweighted
sum, so in that case the forward computes values only and the backward recomputes the chunks
(logits and dlogits) with the per-row weights ``g_t``: 6 matmuls per chunk instead of 4, no
extra memory. A caller with its own per-row weighting gets it cheaper from ``weights=`` and
``reduction="sum"``: the gradients are then complete after the forward (4 matmuls per chunk).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from ._validation import check_backend, check_fused_linear_args, check_projected_ref_rows
from .backends import row_backend
from .masks import mean_row_weights

# Working-memory budget of one chunk, in bytes, by device type. A chunk holds about
# CHUNK_TENSORS tensors of chunk_rows x V fp32 at once (both models' logits, their fp32
# copies, the backend's softmax temporaries and dlogits), plus chunk_rows x H per hidden side.
# Every chunk re-reads both projections and the fp32 weight-gradient accumulator, so on a GPU
# the budget is larger: ~256 rows at V = 128k keeps the matmuls compute-bound.
CHUNK_BYTES = {"cpu": 64 << 20}
CHUNK_BYTES_DEFAULT = 1 << 30
CHUNK_TENSORS = 8


def default_chunk_rows(vocab: int, hidden_size: int, ref_hidden_size: int | None = None,
                       device_type: str = "cpu") -> int:
    """Rows per chunk so that one chunk's temporaries stay within ``CHUNK_BYTES``.

    >>> default_chunk_rows(32000, 512)
    64
    >>> default_chunk_rows(128256, 4096, device_type="cuda")
    256
    """
    ref_hidden_size = hidden_size if ref_hidden_size is None else ref_hidden_size
    per_row = 4 * (CHUNK_TENSORS * vocab + 2 * (hidden_size + ref_hidden_size))
    rows = max(1, CHUNK_BYTES.get(device_type, CHUNK_BYTES_DEFAULT) // per_row)
    return rows - rows % 16 if rows >= 16 else rows  # whole tiles for the matmuls


def _acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _addmm_acc(out, a, b):
    """``out += a @ b`` with ``out`` in the accumulation dtype (fp32/fp64), in place, without
    rounding the product to the inputs' dtype first (CUDA: ``out_dtype``; elsewhere the
    inputs are upcast)."""
    if a.dtype != out.dtype:
        if a.is_cuda:
            try:
                out.add_(torch.mm(a, b, out_dtype=out.dtype))
                return
            except (RuntimeError, TypeError):  # older torch or an unsupported dtype pair
                pass
        a, b = a.to(out.dtype), b.to(out.dtype)
    out.addmm_(a, b)


class _Sweep:
    """One pass over the loss rows in chunks: values and/or weighted gradients."""

    def __init__(self, hidden, weight, bias, ref_hidden, ref_weight, ref_bias, a, chunk_rows,
                 backend, rows=None):
        self.h = hidden.reshape(-1, hidden.shape[-1])
        self.rh = ref_hidden.reshape(-1, ref_hidden.shape[-1])
        self.w, self.b, self.rw, self.rb = weight, bias, ref_weight, ref_bias
        self.a, self.chunk_rows, self.backend = a, chunk_rows, row_backend(backend)
        # One host sync on a GPU (the count of loss rows sizes the loop); none on the CPU.
        if rows is None:
            rows = (a.initiating | a.common).nonzero().squeeze(1)
        self.rows = rows

    def _chunks(self):
        for start in range(0, self.rows.numel(), self.chunk_rows):
            yield self.rows[start:start + self.chunk_rows]

    def _chunk(self, idx, h_c, row_weight, need_grad):
        """The backend's rows on chunk ``idx`` (flat rows, hidden rows ``h_c``): per-row values
        ``[R]`` weighted by ``row_weight[idx]`` (None: 1) and gamma / alpha, and with
        ``need_grad`` the gradient of their sum with respect to the chunk's logits,
        ``[R, V]`` in the hidden states' dtype."""
        a = self.a
        with torch.no_grad():
            z = F.linear(h_c, self.w, self.b)
            r = F.linear(self.rh.index_select(0, idx), self.rw, self.rb)
        check_projected_ref_rows(r, idx, a.row_shape)
        chunk = dataclasses.replace(
            a, logits=z.unsqueeze(0), ref_logits=r.unsqueeze(0),
            initiating=a.initiating.index_select(0, idx),
            common=a.common.index_select(0, idx), reduction="none", row_shape=(idx.numel(),),
            weights=None if row_weight is None else row_weight.index_select(0, idx))
        values, dz, _ = self.backend.rows(chunk, need_grad)
        return values, dz

    def values(self, row_weight):
        """Per-row loss values ``[N]`` weighted by ``row_weight`` (0 outside I and C), no
        gradient work."""
        acc = _acc_dtype(self.h.dtype)
        out = torch.zeros(self.h.shape[0], dtype=acc, device=self.h.device)
        for idx in self._chunks():
            vals, _ = self._chunk(idx, self.h.index_select(0, idx), row_weight, False)
            out.index_copy_(0, idx, vals.to(acc))
        return out

    def grads(self, row_weight, need_h, need_w, need_b, want_values=False):
        """Gradients of ``sum_t row_weight[t] * loss_t`` (and those weighted values if asked).

        ``row_weight`` is ``[N]`` (acc dtype). Returns ``(values, g_hidden, g_weight,
        g_bias)`` with ``g_weight`` / ``g_bias`` in the accumulation dtype.
        """
        h, w = self.h, self.w
        acc = _acc_dtype(h.dtype)
        values = torch.zeros(h.shape[0], dtype=acc, device=h.device) if want_values else None
        g_h = torch.zeros_like(h, memory_format=torch.contiguous_format) if need_h else None
        g_w = torch.zeros(w.shape, dtype=acc, device=w.device) if need_w else None
        g_b = torch.zeros(w.shape[0], dtype=acc, device=w.device) if need_b else None
        for idx in self._chunks():
            h_c = h.index_select(0, idx)
            vals, dz = self._chunk(idx, h_c, row_weight, True)
            if values is not None:
                values.index_copy_(0, idx, vals.to(acc))
            if g_h is not None:
                g_h.index_copy_(0, idx, (dz @ w).to(g_h.dtype))
            if g_w is not None:
                _addmm_acc(g_w, dz.t(), h_c)
            if g_b is not None:
                g_b.add_(dz.sum(dim=0, dtype=acc))
            del dz, h_c
        return values, g_h, g_w, g_b


def _row_weight(a, acc):
    """Weight of each row's value: ``"mean"``'s 1 / max(1, |I|) and 1 / max(1, |C|) (global
    counts; no sync) or 1 (``"sum"``, ``"none"``), times the caller's ``weights``; None when
    every weight is 1."""
    w = mean_row_weights(a.initiating, a.common, dtype=acc) if a.reduction == "mean" else None
    if a.weights is not None:
        w = a.weights.to(acc) if w is None else w * a.weights.to(acc)
    return w


class _FusedLinearPALU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, ref_hidden, ref_weight, ref_bias, a, chunk_rows,
                backend):
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        sweep = _Sweep(hidden, weight, bias, ref_hidden, ref_weight, ref_bias, a, chunk_rows,
                       backend)
        ctx.reduction, ctx.hidden_shape = a.reduction, hidden.shape
        acc = _acc_dtype(hidden.dtype)
        row_weight = _row_weight(a, acc)
        if a.reduction == "none":
            # Per-row grad_output: recompute in backward (see the module docstring).
            ctx.a, ctx.chunk_rows, ctx.backend = a, chunk_rows, backend
            ctx.save_for_backward(hidden, weight, bias, ref_hidden, ref_weight, ref_bias,
                                  sweep.rows)
            return sweep.values(row_weight).reshape(a.row_shape)
        if row_weight is None:  # "sum" without weights: every row weighs 1
            row_weight = torch.ones(a.initiating.shape, dtype=acc, device=hidden.device)
        if not (need_h or need_w or need_b):
            return sweep.values(row_weight).sum()
        values, g_h, g_w, g_b = sweep.grads(row_weight, need_h, need_w, need_b,
                                            want_values=True)
        ctx.save_for_backward(
            g_h, None if g_w is None else g_w.to(weight.dtype),
            None if g_b is None else g_b.to(bias.dtype))
        return values.sum()

    @staticmethod
    def backward(ctx, grad_output):
        none = (None,) * 6
        if ctx.reduction == "none":
            hidden, weight, bias, ref_hidden, ref_weight, ref_bias, rows = ctx.saved_tensors
            sweep = _Sweep(hidden, weight, bias, ref_hidden, ref_weight, ref_bias, ctx.a,
                           ctx.chunk_rows, ctx.backend, rows=rows)
            acc = _acc_dtype(hidden.dtype)
            row_weight = grad_output.reshape(-1).to(acc)
            if ctx.a.weights is not None:  # the caller's weights, on top of grad_output
                row_weight = row_weight * ctx.a.weights.to(acc)
            _, g_h, g_w, g_b = sweep.grads(row_weight, *ctx.needs_input_grad[:3])
            g_w = None if g_w is None else g_w.to(weight.dtype)
            g_b = None if g_b is None else g_b.to(bias.dtype)
        elif grad_output.device.type == "cpu" and bool(grad_output == 1):
            g_h, g_w, g_b = ctx.saved_tensors  # the usual loss.backward(): nothing to scale
        else:
            g_h, g_w, g_b = (None if g is None else g * grad_output for g in ctx.saved_tensors)
        if g_h is not None:
            g_h = g_h.reshape(ctx.hidden_shape)
        return (g_h, g_w, g_b) + none


def palu_fused_linear_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    ref_hidden: torch.Tensor,
    ref_weight: torch.Tensor,
    initiating_mask: torch.Tensor,
    common_mask: torch.Tensor | None = None,
    *,
    bias: torch.Tensor | None = None,
    ref_bias: torch.Tensor | None = None,
    chunk_rows: int | None = None,
    k: int | None = 5000,
    target="mean",
    kl: str | None = "reverse",
    gamma: float = 1.0,
    alpha: float = 1.0,
    reduction: str = "mean",
    weights: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """The PALU forget loss from last hidden states and the output projection, fused.

    Equal to ``palu_local_entropy_loss(hidden @ weight.T + bias, ref_hidden @ ref_weight.T
    + ref_bias, initiating_mask, common_mask, ...)`` (``docs/spec.md``) up to
    rounding, but the ``[rows, V]`` logits of the two models are never materialised: only the
    rows in I or C are projected, ``chunk_rows`` at a time.

    Args:
        hidden: trainable model's last hidden states (after the final norm), ``[B, T, H]`` or
            ``[N, H]``, already shifted: row t predicts token t+1.
        weight: its output projection (``lm_head.weight``, tied embeddings included), ``[V, H]``.
        ref_hidden: frozen reference model's hidden states, leading shape of ``hidden``
            (its hidden size may differ). Never gets a gradient.
        ref_weight: the reference projection ``[V, H_ref]``. Never gets a gradient.
        initiating_mask, common_mask: bool, shaped like ``hidden`` without its last dimension;
            the rows in I and in C (see :func:`palu_kernels.initiating_mask`).
        bias, ref_bias: optional ``[V]`` output biases.
        chunk_rows: rows projected at once; None picks it from V and the hidden sizes so a
            chunk's working memory stays near ``CHUNK_BYTES`` (64 MiB on the CPU, 1 GiB on
            a GPU; see :func:`default_chunk_rows`).
        k, target, kl, gamma, alpha, reduction, weights, backend: as in
            :func:`palu_kernels.palu_local_entropy_loss` (``weights``: optional finite
            per-row factors shaped like the masks, applied to each row's term before the
            reduction).

    All tensors share one dtype (fp32, bf16, fp16; fp64 on the torch backend) and device.

    Returns:
        The loss, fp32 (fp64 for fp64 inputs), differentiable with respect to ``hidden``,
        ``weight`` and ``bias`` (gradients in their dtypes; the weight and bias gradients are
        accumulated over chunks in fp32).

    Example:
        >>> import torch
        >>> from palu_kernels.fused_linear import palu_fused_linear_loss
        >>> h = torch.randn(2, 6, 16, requires_grad=True)
        >>> w = torch.randn(50, 16, requires_grad=True)
        >>> i = torch.zeros(2, 6, dtype=torch.bool); i[:, 1] = True
        >>> c = torch.zeros(2, 6, dtype=torch.bool); c[:, 3:] = True
        >>> loss = palu_fused_linear_loss(h, w, h.detach(), w.detach(), i, c, k=10)
        >>> loss.backward()
        >>> h.grad.shape, w.grad.shape
        (torch.Size([2, 6, 16]), torch.Size([50, 16]))
    """
    args, chunk_rows = check_fused_linear_args(
        hidden, weight, ref_hidden, ref_weight, initiating_mask, common_mask, bias=bias,
        ref_bias=ref_bias, chunk_rows=chunk_rows, k=k, target=target, kl=kl, gamma=gamma,
        alpha=alpha, reduction=reduction, weights=weights,
    )
    backend = check_backend(backend, hidden.device, hidden.dtype, name="hidden")
    if chunk_rows is None:
        chunk_rows = default_chunk_rows(weight.shape[0], hidden.shape[-1], ref_hidden.shape[-1],
                                        hidden.device.type)
    return _FusedLinearPALU.apply(
        hidden, weight, bias, ref_hidden.detach(), ref_weight.detach(),
        None if ref_bias is None else ref_bias.detach(), args, chunk_rows, backend,
    )
