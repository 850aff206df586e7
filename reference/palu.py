"""The PALU forget loss, written for reading rather than speed.

Both functions take logits of shape ``[..., V]`` (already shifted: row t predicts token t+1)
and boolean masks of the leading shape. They compute in the dtype they are given (no
upcast): run them on fp64 copies for a ground truth, or in bf16 to measure what a plain
PyTorch path loses in that dtype.
"""

from __future__ import annotations

import torch


def topk_set_reference(ref_logits: torch.Tensor, k: int | None) -> torch.Tensor:
    """Boolean ``[..., V]`` membership of the top-K set ``S`` of each row.

    ``S`` holds the ``k`` largest reference values; ties at the boundary go to the lower
    vocabulary index. A stable descending sort states exactly that rule.
    """
    v = ref_logits.shape[-1]
    k = v if k is None else min(int(k), v)
    order = torch.sort(ref_logits, dim=-1, descending=True, stable=True).indices
    member = torch.zeros(ref_logits.shape, dtype=torch.bool, device=ref_logits.device)
    return member.scatter(-1, order[..., :k], True)


def _per_row_terms(logits, ref_logits, k, target, kl):
    """Per-row local term and KL term for every row it is given (masks applied by the caller)."""
    z, r = logits, ref_logits.detach()
    v = z.shape[-1]
    kk = v if k is None else min(int(k), v)
    in_s = topk_set_reference(r, kk)

    # Target c of the local term.
    if target == "mean":
        c = z.mean(dim=-1, keepdim=True)
    elif target == "mean_detached":
        c = z.detach().mean(dim=-1, keepdim=True)
    elif target == "topk_mean":
        c = (z * in_s).sum(dim=-1, keepdim=True) / kk
    else:
        c = torch.full_like(z[..., :1], float(target))
    # L_local = (1/K) sum_{j in S} (z_j - c)^2
    local = (((z - c) * in_s) ** 2).sum(dim=-1) / kk

    if kl is None:
        kl_term = torch.zeros_like(local)
    else:
        lp = torch.log_softmax(z, dim=-1)
        lq = torch.log_softmax(r, dim=-1)
        if kl == "reverse":
            # KL(p || q) = sum_j p_j (log p_j - log q_j), with 0 log 0 = 0
            w, diff = lp.exp(), lp - lq
        elif kl == "forward":
            # KL(q || p) = sum_j q_j (log q_j - log p_j), with 0 log 0 = 0
            w, diff = lq.exp(), lq - lp
        else:
            raise ValueError(f"kl must be 'reverse', 'forward' or None, got {kl!r}")
        # 0 log 0 = 0: a zero weight drops its entry. A NaN weight (the reference row has no
        # softmax: +inf, or only -inf) is kept, so the row's value and gradient are NaN
        # (docs/spec.md): the forward KL's gradient p - q is NaN there, not 0.
        keep = (w > 0) | torch.isnan(w)
        kl_term = (w * torch.where(keep, diff, torch.zeros_like(diff))).sum(dim=-1)
    return local, kl_term


def _reduce(local, kl_term, initiating_mask, common_mask, gamma, alpha, reduction):
    i_mask = initiating_mask
    c_mask = torch.zeros_like(i_mask) if common_mask is None else common_mask
    zero = torch.zeros_like(local)
    local = torch.where(i_mask, local, zero)
    kl_term = torch.where(c_mask, kl_term, zero)
    if reduction == "none":
        return gamma * local + alpha * kl_term
    if reduction == "sum":
        return gamma * local.sum() + alpha * kl_term.sum()
    if reduction == "mean":
        n_i = i_mask.sum().clamp(min=1)
        n_c = c_mask.sum().clamp(min=1)
        return gamma * local.sum() / n_i + alpha * kl_term.sum() / n_c
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def palu_loss_reference(
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
) -> torch.Tensor:
    """The specification's loss, differentiable through autograd (w.r.t. ``logits`` only).

    The local term is computed on the rows of ``I`` and the KL term on the rows of ``C``
    (every other row reads as zeros), then the per-row values are masked and reduced.
    """
    if kl is None:
        common_mask = None
    c_mask = torch.zeros_like(initiating_mask) if common_mask is None else common_mask
    # Each term sees only its own rows (zeros elsewhere), so that a non-finite value in a row
    # that does not carry that term reaches neither the loss nor the gradient.
    def rows(x, mask):
        return torch.where(mask[..., None], x, torch.zeros((), dtype=x.dtype))

    r = ref_logits.detach()
    local, _ = _per_row_terms(rows(logits, initiating_mask), rows(r, initiating_mask), k, target, None)
    _, kl_term = _per_row_terms(rows(logits, c_mask), rows(r, c_mask), k, target, kl)
    return _reduce(local, kl_term, initiating_mask, common_mask, gamma, alpha, reduction)


def palu_loss_released(
    logits: torch.Tensor,
    ref_logits: torch.Tensor,
    initiating_mask: torch.Tensor,
    common_mask: torch.Tensor | None = None,
    *,
    k: int | None = 5000,
    gamma: float = 1.0,
    alpha: float = 1.0,
) -> torch.Tensor:
    """The released code's arithmetic, step for step (target ``"mean"``, reverse KL, mean).

    ``torch.topk`` (a sort) and a gather of K logits for *every* row, the full-vocabulary
    mean for every row, ``log_softmax`` of both models for every row, and the masks applied
    only at the end. Ties at the top-K boundary follow ``torch.topk``, so its values can
    differ from the specification on rows with ties; it serves as the benchmark baseline.
    """
    v = logits.shape[-1]
    kk = v if k is None else min(int(k), v)
    ref_logits = ref_logits.detach()
    top_idx = torch.topk(ref_logits, kk, dim=-1).indices  # [..., K] for every row
    top_z = torch.gather(logits, -1, top_idx)  # [..., K]
    mean_z = logits.mean(dim=-1, keepdim=True)  # [..., 1]
    local = ((top_z - mean_z) ** 2).mean(dim=-1)  # [...]
    log_p = torch.log_softmax(logits, dim=-1)  # [..., V]
    log_q = torch.log_softmax(ref_logits, dim=-1)  # [..., V]
    kl_term = (log_p.exp() * (log_p - log_q)).sum(dim=-1)  # [...]
    i_mask = initiating_mask.to(local.dtype)
    c_mask = torch.zeros_like(i_mask) if common_mask is None else common_mask.to(local.dtype)
    loss_local = (local * i_mask).sum() / i_mask.sum().clamp(min=1)
    loss_kl = (kl_term * c_mask).sum() / c_mask.sum().clamp(min=1)
    return gamma * loss_local + alpha * loss_kl
