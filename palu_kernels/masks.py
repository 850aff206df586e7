"""Position masks of the PALU loss."""

from __future__ import annotations

import torch


def initiating_mask(sensitive_mask: torch.Tensor, first_n: int | None = 3) -> torch.Tensor:
    """The first ``first_n`` rows of every run of consecutive sensitive rows.

    ``sensitive_mask`` is bool ``[B, T]`` (or ``[T]``); a run is a maximal stretch of ``True``
    along the last dimension. ``first_n=-1`` or ``None`` keeps every sensitive row.

    Vectorised: the position of each row inside its run is ``t - start(t)``, where
    ``start(t)`` is the last index ``<= t`` at which a run begins, found with a running
    maximum (``cummax``) over the run-start indices.
    """
    if not isinstance(sensitive_mask, torch.Tensor) or sensitive_mask.dtype != torch.bool:
        got = sensitive_mask.dtype if isinstance(sensitive_mask, torch.Tensor) else type(sensitive_mask).__name__
        raise TypeError(f"sensitive_mask must be a bool torch.Tensor, got {got}")
    if sensitive_mask.dim() not in (1, 2):
        raise ValueError(f"sensitive_mask must have shape [B, T] or [T], got {list(sensitive_mask.shape)}")
    if first_n is None or first_n == -1:
        return sensitive_mask.clone()
    if isinstance(first_n, bool) or not isinstance(first_n, int) or first_n < 0:
        raise ValueError(f"first_n must be an int >= 0, -1 or None, got {first_n!r}")
    s = sensitive_mask
    t = s.shape[-1]
    pos = torch.arange(t, device=s.device).expand_as(s)
    prev = torch.nn.functional.pad(s[..., :-1], (1, 0), value=False)
    starts = s & ~prev  # a run begins here
    start_idx = torch.where(starts, pos, torch.zeros_like(pos)).cummax(dim=-1).values
    return s & (pos - start_idx < first_n)


def mean_scales(initiating: torch.Tensor, common: torch.Tensor, gamma=1.0, alpha=1.0, *,
                dtype: torch.dtype = torch.float32, counts=None):
    """The weights of one I row and one C row in the mean reduction (``docs/spec.md``):
    ``(gamma / max(1, |I|), alpha / max(1, |C|))``, 0-d tensors of ``dtype`` on the masks'
    device, computed without a host sync. ``counts``: ``(|I|, |C|)`` to use instead of the
    masks' own (the trainer's counts over a gradient-accumulation window and all processes).
    """
    if counts is None:
        counts = (initiating.sum(), common.sum())
    n_i, n_c = (torch.as_tensor(c, device=initiating.device).clamp(min=1).to(dtype)
                for c in counts)
    return gamma / n_i, alpha / n_c


def mean_row_weights(initiating: torch.Tensor, common: torch.Tensor, gamma=1.0, alpha=1.0, *,
                     dtype: torch.dtype = torch.float32, counts=None) -> torch.Tensor:
    """Per-row weights of the mean reduction, shaped like the masks: ``gamma / max(1, |I|)``
    on I rows, ``alpha / max(1, |C|)`` on C rows, 0 elsewhere (:func:`mean_scales`).
    ``palu_local_entropy_loss(..., reduction="none", weights=mean_row_weights(I, C)).sum()``
    is the mean loss."""
    w_i, w_c = mean_scales(initiating, common, gamma, alpha, dtype=dtype, counts=counts)
    return initiating.to(dtype) * w_i + common.to(dtype) * w_c
