"""The ``"torch"`` backend: the PALU loss in plain PyTorch, without wasted work or memory.

Compared with the released formulation (see ``reference.palu_loss_released``):

* only rows in ``I`` get top-K work, and ``S`` comes from the K-th largest reference value
  (``torch.kthvalue``, a selection) plus the tie rule, never from a sort;
* only rows in ``C`` get softmaxes;
* rows go through in chunks, so no temporary exceeds ``chunk x V``;
* the analytic gradient of the specification is written during the forward pass (one
  ``N x V`` tensor, the gradient itself), and backward only scales it by ``grad_output``
  (:class:`~palu_kernels.backends.function.PALUFunction`, shared with the Triton backend).

The loss-carrying rows are listed with ``nonzero``. On CPU tensors this costs no device
synchronisation; on a GPU use the ``"triton"`` backend, which never syncs.
"""

from __future__ import annotations

import torch

from .._validation import PALUArgs
from ..masks import mean_scales
from .function import RowBackend

# Elements per chunk of fp32 temporaries: 2^22 (16 MiB per chunk x V tensor). Measured on
# the CPU at 4096 x 32000: 2^22 takes about half the CPU time of 2^24 (temporaries stay in
# cache and the allocator reuses them) and a third of its extra memory; 2^20 is slower again.
CHUNK_ELEMENTS = 1 << 22


def topk_membership(r: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean ``[R, V]`` membership of the top-K set of each row of ``r`` (fp32 ``[R, V]``).

    The K-th largest value ``thr`` is the ``(V - K + 1)``-th smallest (``kthvalue``). Every
    entry ``> thr`` is in ``S``; of the entries ``== thr``, the first ``K - #(r > thr)`` by
    vocabulary index are (ties go to the lower index), as a stable descending sort would say.
    """
    v = r.shape[1]
    thr = torch.kthvalue(r, v - k + 1, dim=1, keepdim=True).values  # [R, 1]
    above = r > thr
    need = k - above.sum(dim=1, keepdim=True, dtype=torch.int32)  # ties to take, >= 1
    at = r == thr
    return above | (at & (at.cumsum(dim=1, dtype=torch.int32) <= need))


def local_rows(z, r, a: PALUArgs):
    """Local term and its gradient for fp32 rows ``z``, ``r`` of shape ``[R, V]``.

    L = (1/K) sum_{j in S} (z_j - c)^2 ; with d_j = (z_j - c)[j in S] and s = sum_j d_j:
    dL/dz_j = (2/K) (d_j - s * dc/dz_j), where dc/dz_j is 1/V ("mean"), [j in S]/K
    ("topk_mean") or 0 ("mean_detached", constant).
    """
    k, v = a.k, z.shape[1]
    in_s = topk_membership(r, k)
    if a.target in ("mean", "mean_detached"):
        c = z.mean(dim=1, keepdim=True)
    elif a.target == "topk_mean":
        c = torch.einsum("rv,rv->r", z, in_s.to(z.dtype))[:, None] / k
    else:
        c = torch.full_like(z[:, :1], a.target_value)
    d = (z - c).mul_(in_s)  # d_j = (z_j - c) [j in S]
    loss = torch.einsum("rv,rv->r", d, d) / k
    if a.target == "mean":
        d.sub_(d.sum(dim=1, keepdim=True) / v)
    elif a.target == "topk_mean":
        d.sub_(in_s * (d.sum(dim=1, keepdim=True) / k))
    return loss, d.mul_(2.0 / k)


def kl_rows(z, r, kl: str):
    """KL term and its gradient for fp32 rows ``z``, ``r`` of shape ``[R, V]`` (0 log 0 = 0).

    reverse: KL(p||q) = sum p (log p - log q),  dKL/dz_j = p_j (log p_j - log q_j - KL)
    forward: KL(q||p) = sum q (log q - log p),  dKL/dz_j = p_j - q_j
    """
    lp = torch.log_softmax(z, dim=1)
    lq = torch.log_softmax(r, dim=1)
    p = lp.exp()
    # 0 log 0 = 0: where the weight (p for reverse, q for forward) is 0, the term is 0 (its
    # difference is -inf or NaN there). Everywhere else a NaN stays (a reference row holding
    # +inf, or only -inf, has no softmax: NaN, as in the reference and the Triton kernels),
    # and so does a +inf difference (weight > 0 against a log-probability of -inf).
    if kl == "reverse":
        diff = lp.sub_(lq).masked_fill_(p == 0, 0.0)
        val = torch.einsum("rv,rv->r", p, diff)
        return val, diff.sub_(val[:, None]).mul_(p)
    q = lq.exp()
    diff = lq.sub_(lp).masked_fill_(q == 0, 0.0)
    val = torch.einsum("rv,rv->r", q, diff)
    return val, p.sub_(q)


def forward_rows(a: PALUArgs, need_grad: bool):
    """Per-row weighted values ``[N]``, the weighted gradient ``[N, V]`` (or None) and None (no
    row state for :func:`scale_grad_`); the loss is the values' sum (``"mean"``, ``"sum"``) or
    the values themselves (``"none"``).

    The row weights of the reduction (mean: gamma/max(1,|I|), alpha/max(1,|C|); sum and
    none: gamma, alpha) times the caller's ``weights`` are folded into the gradient written
    here, so that backward only multiplies by ``grad_output``. fp32 arithmetic (fp64 for
    fp64 logits) whatever the caller's autocast says (einsum would run in bf16).
    """
    with torch.autocast(device_type=a.logits.device.type, enabled=False):
        n, v = a.initiating.numel(), a.vocab
        dev, dtype = a.logits.device, a.logits.dtype
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        chunk = max(1, CHUNK_ELEMENTS // v)
        if a.reduction == "mean":
            w_local, w_kl = mean_scales(a.initiating, a.common, a.gamma, a.alpha, dtype=acc)
        else:
            w_local, w_kl = a.gamma, a.alpha

        per_row = torch.zeros(n, dtype=acc, device=dev)  # w * (gamma*local + alpha*KL)
        grad = None
        if need_grad:
            # Only rows without loss need zeros; the others are written below.
            grad = torch.empty((n, v), dtype=dtype, device=dev)
            grad[~(a.initiating | a.common)] = 0

        jobs = [(a.initiating, w_local, lambda z, r: local_rows(z, r, a))]
        if a.kl is not None:
            jobs.append((a.common, w_kl, lambda z, r: kl_rows(z, r, a.kl)))
        for mask, grad_weight, fn in jobs:
            rows = mask.nonzero().squeeze(1)  # CPU: no device sync
            for start in range(0, rows.numel(), chunk):
                idx = rows[start:start + chunk]
                z, r = a.rows(idx)  # gathered rows of the [B, T, V] views
                val, g = fn(z.to(acc), r.to(acc))
                val = val * grad_weight  # weighted like the gradient (mean: / max(1, |I|))
                gw = grad_weight
                if a.weights is not None:  # the caller's per-row weights
                    rw = a.weights.index_select(0, idx).to(acc)
                    val = val * rw
                    gw = rw[:, None] * grad_weight
                per_row.index_copy_(0, idx, val)
                if need_grad:
                    grad.index_copy_(0, idx, g.mul_(gw).to(dtype))
    return per_row, grad, None


def scale_grad_(grad: torch.Tensor, grad_output: torch.Tensor, _state=None) -> torch.Tensor:
    """``grad *= grad_output`` in place (mean / sum: one scalar; "none": one value per row,
    the saved rows holding the weighted d(per-row loss)/dz). On the CPU a ``grad_output`` of
    exactly 1 (the usual ``loss.backward()``) costs no pass at all; elsewhere, where that
    test would cost a host sync, one in-place multiply."""
    go = grad_output.detach().reshape(-1, 1) if grad_output.numel() > 1 else grad_output
    if not (go.device.type == "cpu" and bool((go == 1).all())):
        grad.mul_(go.to(grad.dtype) if grad.dtype == torch.float64 else go.float())
    return grad


TORCH = RowBackend(rows=forward_rows, scale_=scale_grad_)
