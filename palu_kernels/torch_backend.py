"""The ``"torch"`` backend: the PALU loss in plain PyTorch, without wasted work or memory.

Compared with the released formulation (see ``reference.palu_loss_released``):

* only rows in ``I`` get top-K work, and ``S`` comes from the K-th largest reference value
  (``torch.kthvalue``, a selection) plus the tie rule, never from a sort;
* only rows in ``C`` get softmaxes;
* rows go through in chunks, so no temporary exceeds ``chunk x V``;
* the analytic gradient of the specification is written during the forward pass (one
  ``N x V`` tensor, the gradient itself), and backward only scales it by ``grad_output``.

The loss-carrying rows are listed with ``nonzero``. On CPU tensors this costs no device
synchronisation; on a GPU use the ``"triton"`` backend, which never syncs.
"""

from __future__ import annotations

import torch

from ._validation import PALUArgs

# Elements per chunk of fp32 temporaries: 2^24 (64 MiB per chunk x V tensor).
CHUNK_ELEMENTS = 1 << 24


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
        c = torch.where(in_s, z, 0.0).sum(dim=1, keepdim=True) / k
    else:
        c = torch.full_like(z[:, :1], a.target_value)
    d = torch.where(in_s, z - c, 0.0)
    loss = d.square().sum(dim=1) / k
    grad = d
    if a.target == "mean":
        grad = grad - d.sum(dim=1, keepdim=True) / v
    elif a.target == "topk_mean":
        grad = grad - torch.where(in_s, d.sum(dim=1, keepdim=True) / k, 0.0)
    return loss, grad * (2.0 / k)


def kl_rows(z, r, kl: str):
    """KL term and its gradient for fp32 rows ``z``, ``r`` of shape ``[R, V]`` (0 log 0 = 0).

    reverse: KL(p||q) = sum p (log p - log q),  dKL/dz_j = p_j (log p_j - log q_j - KL)
    forward: KL(q||p) = sum q (log q - log p),  dKL/dz_j = p_j - q_j
    """
    lp = torch.log_softmax(z, dim=1)
    lq = torch.log_softmax(r, dim=1)
    p = lp.exp()
    if kl == "reverse":
        diff = torch.where(p > 0, lp - lq, 0.0)
        val = (p * diff).sum(dim=1)
        return val, p * (diff - val[:, None])
    q = lq.exp()
    val = (q * torch.where(q > 0, lq - lp, 0.0)).sum(dim=1)
    return val, p - q


class _PALUTorch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, a: PALUArgs):
        n, v = a.logits.shape
        acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
        need_grad = ctx.needs_input_grad[0]
        per_row = torch.zeros(n, dtype=acc, device=logits.device)
        grad = torch.zeros_like(a.logits, memory_format=torch.contiguous_format) if need_grad else None
        chunk = max(1, CHUNK_ELEMENTS // v)

        jobs = [(a.initiating, a.gamma, lambda z, r: local_rows(z, r, a))]
        if a.kl is not None:
            jobs.append((a.common, a.alpha, lambda z, r: kl_rows(z, r, a.kl)))
        for mask, weight, fn in jobs:
            rows = mask.nonzero().squeeze(1)  # CPU: no device sync
            for start in range(0, rows.numel(), chunk):
                idx = rows[start:start + chunk]
                z = a.logits.index_select(0, idx).to(acc)
                r = a.ref_logits.index_select(0, idx).to(acc)
                val, g = fn(z, r)
                per_row.index_copy_(0, idx, weight * val)
                if need_grad:
                    grad.index_copy_(0, idx, (weight * g).to(grad.dtype))

        if a.reduction == "none":
            scale = None
            loss = per_row.reshape(a.row_shape)
        elif a.reduction == "sum":
            scale = None
            loss = per_row.sum()
        else:
            # mean: each I row weighs 1/max(1,|I|), each C row 1/max(1,|C|)
            n_i = a.initiating.sum().clamp(min=1).to(acc)
            n_c = a.common.sum().clamp(min=1).to(acc)
            scale = a.initiating.to(acc) / n_i + a.common.to(acc) / n_c
            loss = (per_row * scale).sum()
        ctx.reduction = a.reduction
        ctx.shape = logits.shape
        ctx.save_for_backward(grad, scale)
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        grad, scale = ctx.saved_tensors
        if grad is None:
            return None, None
        if ctx.reduction == "none":
            row_scale = grad_output.reshape(-1, 1)
        elif ctx.reduction == "sum":
            row_scale = grad_output
        else:
            row_scale = (scale * grad_output).reshape(-1, 1)
        return (grad * row_scale).to(grad.dtype).reshape(ctx.shape), None


def palu_loss_torch(logits: torch.Tensor, a: PALUArgs) -> torch.Tensor:
    """Run the torch backend on validated arguments (``logits`` is the caller's tensor)."""
    return _PALUTorch.apply(logits, a)
