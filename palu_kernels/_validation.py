"""Argument checking for the PALU loss: the one place where inputs are validated.

Every public entry point funnels through :func:`check_loss_args`, which raises a
``TypeError`` / ``ValueError`` naming the argument, what was expected and what came, and
returns a :class:`PALUArgs` with the logits as ``[B, T, V]`` views (never a copy) and flat ``[N]``
masks and row weights.
Backends receive only ``PALUArgs`` and never re-check.

Value checks (NaN in a reference row that carries loss, a row both initiating and common)
read tensor contents, which on a GPU costs a host synchronisation. They always run on CPU
tensors (no device to wait for); on other devices they run only when enabled with
:func:`set_value_checks` or the environment variable ``PALU_KERNELS_CHECK_VALUES=1``.
"""

from __future__ import annotations

import numbers
import os
from dataclasses import dataclass

import torch

from .errors import UsageError

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
TARGETS = ("mean", "mean_detached", "topk_mean")
KLS = ("reverse", "forward", None)
REDUCTIONS = ("mean", "sum", "none")
BACKENDS = ("auto", "torch", "triton")

_value_checks_on_device = os.environ.get("PALU_KERNELS_CHECK_VALUES", "0") == "1"


def set_value_checks(enabled: bool) -> None:
    """Enable (or disable) value checks on non-CPU tensors; they cost one host sync per call."""
    global _value_checks_on_device
    _value_checks_on_device = bool(enabled)


@dataclass(frozen=True)
class PALUArgs:
    """Validated, normalised arguments of one loss call."""

    logits: torch.Tensor  # [B, T, V] view of the caller's logits ([N, V] -> [1, N, V]), any strides
    ref_logits: torch.Tensor  # [B, T, V] view, detached, same shape, dtype and device
    initiating: torch.Tensor  # [N] bool, rows in I
    common: torch.Tensor  # [N] bool, rows in C (all False when kl is None)
    k: int  # 1 <= k <= V
    target: str  # "mean" | "mean_detached" | "topk_mean" | "const"
    target_value: float  # the constant when target == "const"
    kl: str | None  # "reverse" | "forward" | None
    gamma: float
    alpha: float
    reduction: str  # "mean" | "sum" | "none"
    row_shape: tuple  # shape of the masks, for reduction="none"
    weights: torch.Tensor | None = None  # [N] per-row weights (finite), or None

    @property
    def vocab(self) -> int:
        return self.logits.shape[-1]

    def rows(self, idx: torch.Tensor):
        """fp rows ``idx`` (flat indices) of the logits and the reference, ``[R, V]`` each,
        gathered without copying the rest of a strided 3-D input."""
        return gather_rows(self.logits, idx), gather_rows(self.ref_logits, idx)


def gather_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows ``idx`` (flat indices over ``B * T``) of a ``[B, T, V]`` view, as ``[R, V]``."""
    t = x.shape[1]
    return x[idx // t, idx % t]


def shape_str(t) -> str:
    return "x".join(str(s) for s in t.shape) if t.dim() else "scalar"


def as_int(value):
    """``value`` as a Python int when it is an integer of any kind (``int``, ``numpy.int64``,
    a 0-d integer tensor is not one), else ``value`` unchanged; bools stay bools."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) \
            and type(value).__name__ != "bool_":
        return int(value)
    return value


def _check_number(name, value):
    if isinstance(value, numbers.Real) and not isinstance(value, bool) \
            and type(value).__name__ != "bool_":
        value = float(value)  # numpy scalars too
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _check_mask(name, mask, lead_shape, device):
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of dtype bool, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"{name} must have dtype torch.bool, got {mask.dtype}")
    if tuple(mask.shape) != tuple(lead_shape):
        raise ValueError(
            f"{name} must have shape {list(lead_shape)} (the logits' leading dimensions), "
            f"got {list(mask.shape)}"
        )
    if mask.device != device:
        raise ValueError(f"{name} must be on {device} like logits, got {mask.device}")
    return mask.reshape(-1)


def check_float_tensor(name: str, t) -> None:
    """``t`` must be a floating torch.Tensor (float32, bfloat16, float16 or float64)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be a floating tensor (float32, bfloat16, float16 or float64), "
            f"got {t.dtype}"
        )
    if t.device.type == "meta":
        raise UsageError(name, "must hold values, got a tensor on the meta device (shapes "
                               "only, no data); move it to cpu or cuda first")


def check_loss_args(
    logits, ref_logits, initiating_mask, common_mask, *, k, target, kl, gamma, alpha,
    reduction, weights=None,
) -> PALUArgs:
    """Validate the arguments of :func:`palu_kernels.palu_local_entropy_loss`."""
    for name, t in (("logits", logits), ("ref_logits", ref_logits)):
        check_float_tensor(name, t)
        if t.dim() not in (2, 3):
            raise ValueError(f"{name} must have shape [B, T, V] or [N, V], got {shape_str(t)}")
    if ref_logits.shape != logits.shape:
        raise ValueError(
            f"ref_logits must have the shape of logits {list(logits.shape)}, "
            f"got {list(ref_logits.shape)}"
        )
    if ref_logits.dtype != logits.dtype:
        raise TypeError(f"ref_logits must have the dtype of logits {logits.dtype}, got {ref_logits.dtype}")
    if ref_logits.device != logits.device:
        raise ValueError(f"ref_logits must be on {logits.device} like logits, got {ref_logits.device}")
    v = logits.shape[-1]
    if v < 1:
        raise ValueError(f"logits must have a vocabulary dimension of at least 1, got {v}")

    k = as_int(k)
    if k is None:
        k_eff = v
    else:
        if isinstance(k, bool) or not isinstance(k, int):
            raise TypeError(f"k must be an int or None, got {type(k).__name__} {k!r}")
        if k < 1:
            raise ValueError(f"k must be >= 1 (or None for the whole vocabulary), got {k}")
        k_eff = min(k, v)

    if isinstance(target, str):
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS} or a float, got {target!r}")
        target_kind, target_value = target, 0.0
    else:
        target_kind, target_value = "const", _check_number("target", target)
    if kl not in KLS:
        raise ValueError(f"kl must be 'reverse', 'forward' or None, got {kl!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    gamma = _check_number("gamma", gamma)
    alpha = _check_number("alpha", alpha)
    # The loss computes in fp32 (fp64 for fp64 logits): a weight or target beyond that range
    # would be inf there (and NaN where it meets a zero), differently on each backend.
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    limit = torch.finfo(acc).max
    for name, value in (("gamma", gamma), ("alpha", alpha), ("target", target_value)):
        if abs(value) > limit:
            raise ValueError(f"{name} must be at most {limit:.4g} in magnitude (the loss "
                             f"computes in {str(acc).replace('torch.', '')}), got {value:g}")

    lead = logits.shape[:-1]
    i_mask = _check_mask("initiating_mask", initiating_mask, lead, logits.device)
    if common_mask is None or kl is None:
        if common_mask is not None:
            _check_mask("common_mask", common_mask, lead, logits.device)
        c_mask = torch.zeros_like(i_mask)
    else:
        c_mask = _check_mask("common_mask", common_mask, lead, logits.device)

    w = None
    if weights is not None:
        if not isinstance(weights, torch.Tensor):
            raise TypeError(f"weights must be a torch.Tensor or None, got {type(weights).__name__}")
        if not weights.dtype.is_floating_point:
            raise TypeError(f"weights must be a floating tensor, got {weights.dtype}")
        if tuple(weights.shape) != tuple(lead):
            raise ValueError(
                f"weights must have shape {list(lead)} (the logits' leading dimensions), "
                f"got {list(weights.shape)}"
            )
        if weights.device != logits.device:
            raise ValueError(f"weights must be on {logits.device} like logits, got {weights.device}")
        w = weights.detach().reshape(-1)

    # [B, T, V] views: a strided slice such as logits[:, :-1] is never copied here
    z = logits if logits.dim() == 3 else logits.unsqueeze(0)
    r = ref_logits.detach()
    r = r if r.dim() == 3 else r.unsqueeze(0)

    if (logits.device.type == "cpu" or _value_checks_on_device) and not compiling():
        both = i_mask & c_mask
        if bool(both.any()):
            row = int(both.nonzero()[0, 0])
            raise ValueError(
                f"initiating_mask and common_mask must not overlap, got {int(both.sum())} "
                f"row(s) in both (first: flat row {row})"
            )
        # A NaN makes its row sum NaN: one cheap read, no [N, V] temporary. Rows flagged so
        # (also +inf beside -inf) are then confirmed entry by entry.
        loss_rows = i_mask | c_mask
        bad = loss_rows & torch.isnan(r.sum(dim=2, dtype=torch.float32).reshape(-1))
        if bool(bad.any()):
            idx = bad.nonzero().squeeze(1)
            bad[idx] = torch.isnan(gather_rows(r, idx)).any(dim=1)
        if bool(bad.any()):
            row = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"ref_logits must not hold NaN in rows that carry loss, got NaN in "
                f"{int(bad.sum())} such row(s) (first: flat row {row})"
            )
        if w is not None and not bool(torch.isfinite(w).all()):
            raise ValueError("weights must be finite, got NaN or inf in "
                             f"{int((~torch.isfinite(w)).sum())} row(s)")

    return PALUArgs(
        logits=z, ref_logits=r, initiating=i_mask, common=c_mask, k=k_eff,
        target=target_kind, target_value=target_value, kl=kl, gamma=gamma, alpha=alpha,
        reduction=reduction, row_shape=tuple(lead), weights=w,
    )


def refuse_double_backward() -> None:
    """The loss is differentiable once (its backward hands over a gradient written in the
    forward, a constant): a backward run with ``create_graph=True`` (grad mode on) would give
    a silent zero Hessian, so it raises instead."""
    if torch.is_grad_enabled():
        raise RuntimeError(
            "the PALU loss is differentiable once: its backward cannot build a graph "
            "(create_graph=True / double backward is not supported)"
        )


def compiling() -> bool:
    """True while torch.compile traces the call: value checks (host reads) are skipped."""
    try:
        return bool(torch.compiler.is_compiling())
    except AttributeError:  # torch < 2.3
        return False


def check_backend(backend: str, device: torch.device, dtype: torch.dtype | None = None) -> str:
    """Resolve ``backend`` and check it can run on ``device``.

    ``"auto"`` picks triton for CUDA tensors of a kernel dtype (fp32/bf16/fp16) and torch
    otherwise (CPU tensors, fp64).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "triton" if device.type == "cuda" and dtype != torch.float64 else "torch"
    if backend == "triton" and device.type != "cuda":
        if os.environ.get("TRITON_INTERPRET", "0") != "1":
            raise ValueError(
                f"backend='triton' needs CUDA tensors (got tensors on {device}); on the CPU "
                "set TRITON_INTERPRET=1 before importing triton, or use backend='torch'"
            )
    return backend
