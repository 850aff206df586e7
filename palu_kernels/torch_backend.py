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
    # 0 log 0 = 0: where the weight (p for reverse, q for forward) is 0, its log is -inf and
    # the difference is -inf or NaN; both become 0. A +inf difference (weight > 0 against a
    # log-probability of -inf) stays: that KL is infinite.
    if kl == "reverse":
        diff = lp.sub_(lq).nan_to_num_(nan=0.0, neginf=0.0, posinf=float("inf"))
        val = torch.einsum("rv,rv->r", p, diff)
        return val, diff.sub_(val[:, None]).mul_(p)
    q = lq.exp()
    diff = lq.sub_(lp).nan_to_num_(nan=0.0, neginf=0.0, posinf=float("inf"))
    val = torch.einsum("rv,rv->r", q, diff)
    return val, p.sub_(q)


class _PALUTorch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, a: PALUArgs):
        # fp32 arithmetic whatever the caller's autocast says (einsum would run in bf16).
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return _PALUTorch._forward(ctx, logits, a)

    @staticmethod
    def _forward(ctx, logits: torch.Tensor, a: PALUArgs):
        n, v = a.logits.shape
        acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
        need_grad = ctx.needs_input_grad[0]
        chunk = max(1, CHUNK_ELEMENTS // v)

        # Row weights of the reduction, folded into the gradient written here so that
        # backward only multiplies by grad_output. mean: gamma/max(1,|I|), alpha/max(1,|C|).
        if a.reduction == "mean":
            w_local = a.gamma / a.initiating.sum().clamp(min=1).to(acc)
            w_kl = a.alpha / a.common.sum().clamp(min=1).to(acc)
        else:
            w_local, w_kl = a.gamma, a.alpha

        per_row = torch.zeros(n, dtype=acc, device=logits.device)  # gamma*local + alpha*KL
        grad = None
        if need_grad:
            # Only rows without loss need zeros; the others are written below.
            grad = torch.empty((n, v), dtype=logits.dtype, device=logits.device)
            grad[~(a.initiating | a.common)] = 0

        jobs = [(a.initiating, a.gamma, w_local, lambda z, r: local_rows(z, r, a))]
        if a.kl is not None:
            jobs.append((a.common, a.alpha, w_kl, lambda z, r: kl_rows(z, r, a.kl)))
        for mask, weight, grad_weight, fn in jobs:
            rows = mask.nonzero().squeeze(1)  # CPU: no device sync
            for start in range(0, rows.numel(), chunk):
                idx = rows[start:start + chunk]
                z = a.logits.index_select(0, idx).to(acc)
                r = a.ref_logits.index_select(0, idx).to(acc)
                val, g = fn(z, r)
                per_row.index_copy_(0, idx, val * weight if weight != 1.0 else val)
                if need_grad:
                    grad.index_copy_(0, idx, g.mul_(grad_weight).to(grad.dtype))

        if a.reduction == "none":
            loss = per_row.reshape(a.row_shape)
        elif a.reduction == "sum":
            loss = per_row.sum()
        else:
            loss = _mean_of_rows(per_row, a)
        ctx.reduction = a.reduction
        ctx.shape = logits.shape
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        if grad is None:
            return None, None
        if ctx.reduction == "none":
            # Per-row grad_output; the saved rows hold d(per-row loss)/dz.
            return (grad * grad_output.reshape(-1, 1)).to(grad.dtype).reshape(ctx.shape), None
        # mean / sum: the saved gradient is already weighted; scale by the scalar. On CPU a
        # grad_output of exactly 1 (the usual loss.backward()) costs no pass at all.
        if grad_output.device.type == "cpu" and bool(grad_output == 1):
            return grad.reshape(ctx.shape), None
        return (grad * grad_output).to(grad.dtype).reshape(ctx.shape), None


def _mean_of_rows(per_row, a: PALUArgs):
    """mean reduction: gamma*sum_I local/max(1,|I|) + alpha*sum_C KL/max(1,|C|).

    ``per_row`` already holds gamma*local and alpha*KL.
    """
    n_i = a.initiating.sum().clamp(min=1).to(per_row.dtype)
    n_c = a.common.sum().clamp(min=1).to(per_row.dtype)
    return (per_row * (a.initiating / n_i + a.common / n_c)).sum()


def palu_loss_torch(logits: torch.Tensor, a: PALUArgs) -> torch.Tensor:
    """Run the torch backend on validated arguments (``logits`` is the caller's tensor)."""
    return _PALUTorch.apply(logits, a)
