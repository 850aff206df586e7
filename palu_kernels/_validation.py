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

import dataclasses
import numbers
import os
from dataclasses import dataclass

import torch

from .backends.kernel_utils import KERNEL_DTYPES, interpreting
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

    if value_checks(logits.device):
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


def value_checks(device: torch.device) -> bool:
    """Whether checks that read tensor values run on ``device``: always on the CPU (no device
    to wait for), elsewhere only when enabled (they cost a host sync); never while
    ``torch.compile`` traces."""
    return (device.type == "cpu" or _value_checks_on_device) and not compiling()


def _check_projection(name, t, dims, optional=False):
    if t is None and optional:
        return None
    check_float_tensor(name, t)
    if t.dim() not in dims:
        want = {(2, 3): "[B, T, H] or [N, H]", (2,): "[V, H]", (1,): "[V]"}[tuple(dims)]
        raise ValueError(f"{name} must have shape {want}, got {shape_str(t)}")
    return t


def _row_name(flat: int, row_shape: tuple) -> str:
    """``row 6 ([1, 2])``: a flat row index and, for ``[B, T]`` masks, its position."""
    pos = f" ([{flat // row_shape[1]}, {flat % row_shape[1]}])" if len(row_shape) == 2 else ""
    return f"row {flat}{pos}"


def check_fused_linear_args(
    hidden, weight, ref_hidden, ref_weight, initiating_mask, common_mask, *, bias, ref_bias,
    chunk_rows, k, target, kl, gamma, alpha, reduction, weights=None,
):
    """Validate the arguments of :func:`palu_kernels.palu_fused_linear_loss`, once for the
    whole call (its chunks go to the backend unchecked).

    Shapes, dtypes and devices of the hidden states and projections are checked here; masks,
    ``weights`` and the loss options go through :func:`check_loss_args` on a ``[..., 1]``
    stand-in for the logits (same leading shape, no memory), so the messages and rules are
    those of :func:`palu_kernels.palu_local_entropy_loss`. Value checks (as
    :func:`check_loss_args`'s: on CPU tensors, or when enabled): no NaN in the rows of
    ``ref_hidden`` that carry loss, nor in ``ref_weight`` / ``ref_bias`` when a row carries
    loss (each would make reference logits NaN). Returns ``(PALUArgs, chunk_rows)``; the
    ``PALUArgs`` carries the flat masks, weights and options (its ``k`` clipped to the real
    vocabulary, its logits the stand-ins); ``chunk_rows`` is an int >= 1 or None.
    """
    _check_projection("hidden", hidden, (2, 3))
    _check_projection("ref_hidden", ref_hidden, (2, 3))
    _check_projection("weight", weight, (2,))
    _check_projection("ref_weight", ref_weight, (2,))
    _check_projection("bias", bias, (1,), optional=True)
    _check_projection("ref_bias", ref_bias, (1,), optional=True)
    dtype, device = hidden.dtype, hidden.device
    named = [("weight", weight), ("ref_hidden", ref_hidden), ("ref_weight", ref_weight),
             ("bias", bias), ("ref_bias", ref_bias)]
    for name, t in named:
        if t is None:
            continue
        if t.dtype != dtype:
            raise TypeError(
                f"{name} must have the dtype of hidden {dtype}, got {t.dtype} (under autocast, "
                "cast hidden and the projections to one dtype before the call)"
            )
        if t.device != device:
            raise ValueError(f"{name} must be on {device} like hidden, got {t.device}")
    if ref_hidden.shape[:-1] != hidden.shape[:-1]:
        raise ValueError(
            f"ref_hidden must have the leading shape of hidden {list(hidden.shape[:-1])}, "
            f"got {list(ref_hidden.shape[:-1])}"
        )
    if hidden.shape[-1] < 1 or ref_hidden.shape[-1] < 1:
        raise ValueError(f"hidden and ref_hidden must have a hidden size of at least 1, got "
                         f"{hidden.shape[-1]} and {ref_hidden.shape[-1]}")
    for name, w, h, hname in (("weight", weight, hidden, "hidden"),
                              ("ref_weight", ref_weight, ref_hidden, "ref_hidden")):
        if w.shape[1] != h.shape[-1]:
            raise ValueError(
                f"{name} must have shape [V, {h.shape[-1]}] (the hidden size of {hname}), "
                f"got {list(w.shape)}"
            )
    vocab = weight.shape[0]
    if vocab < 1:
        raise ValueError(f"weight must have a vocabulary dimension of at least 1, got {vocab}")
    if ref_weight.shape[0] != vocab:
        raise ValueError(
            f"ref_weight must have the vocabulary size of weight ({vocab} rows), "
            f"got {ref_weight.shape[0]}"
        )
    for name, b in (("bias", bias), ("ref_bias", ref_bias)):
        if b is not None and b.shape[0] != vocab:
            raise ValueError(f"{name} must have shape [{vocab}] (the vocabulary), "
                             f"got {shape_str(b)}")
    chunk_rows, k = as_int(chunk_rows), as_int(k)
    if chunk_rows is not None:
        if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int):
            raise TypeError(f"chunk_rows must be a positive int or None, got "
                            f"{type(chunk_rows).__name__} {chunk_rows!r}")
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1 (or None to choose from V), got "
                             f"{chunk_rows}")

    stand_in = torch.zeros((), dtype=dtype, device=device).expand(*hidden.shape[:-1], 1)
    args = check_loss_args(
        stand_in, stand_in, initiating_mask, common_mask, k=k, target=target, kl=kl,
        gamma=gamma, alpha=alpha, reduction=reduction, weights=weights,
    )
    if value_checks(device):
        loss_rows = args.initiating | args.common
        bad = loss_rows & torch.isnan(ref_hidden.detach().reshape(-1, ref_hidden.shape[-1])).any(1)
        if bool(bad.any()):
            first = _row_name(int(bad.nonzero()[0, 0]), args.row_shape)
            raise ValueError(f"ref_hidden must not hold NaN in rows that carry loss, got NaN "
                             f"in {int(bad.sum())} such row(s) (first: {first} of ref_hidden)")
        if bool(loss_rows.any()):
            nan_rows = torch.isnan(ref_weight.detach()).any(dim=1)
            if bool(nan_rows.any()):
                raise ValueError(f"ref_weight must not hold NaN, got NaN in "
                                 f"{int(nan_rows.sum())} vocabulary row(s): the reference "
                                 "logits of every row that carries loss would be NaN")
            if ref_bias is not None and bool(torch.isnan(ref_bias.detach()).any()):
                raise ValueError(f"ref_bias must not hold NaN, got NaN in "
                                 f"{int(torch.isnan(ref_bias.detach()).sum())} entry(ies): the "
                                 "reference logits of every row that carries loss would be NaN")
    k_eff = vocab if k is None else min(k, vocab)
    return dataclasses.replace(args, k=k_eff), chunk_rows


def check_projected_ref_rows(r: torch.Tensor, idx: torch.Tensor, row_shape: tuple) -> None:
    """The reference logits ``r`` ``[R, V]`` that :func:`palu_kernels.palu_fused_linear_loss`
    projected for its loss rows ``idx`` (flat) hold no NaN (a value check, as
    :func:`check_loss_args`'s). With finite inputs (checked once up front) a NaN there is an
    overflow of the projection: ``inf - inf``."""
    if not value_checks(r.device):
        return
    bad = torch.isnan(r).any(dim=1)
    if bool(bad.any()):
        row = _row_name(int(idx[int(bad.nonzero()[0, 0])]), row_shape)
        raise ValueError(f"ref_hidden @ ref_weight.T must not hold NaN in rows that carry "
                         f"loss, got NaN (inf - inf: an overflow) in {row} of ref_hidden "
                         f"({int(bad.sum())} such row(s) in its chunk)")


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


def check_backend(backend: str, device: torch.device, dtype: torch.dtype | None = None,
                  name: str = "logits") -> str:
    """Resolve ``backend`` and check it can run on ``device`` with ``dtype`` (of the tensor
    ``name``).

    ``"auto"`` picks triton for CUDA tensors of a kernel dtype (fp32/bf16/fp16) and torch
    otherwise (CPU tensors, fp64).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "triton" if device.type == "cuda" and dtype != torch.float64 else "torch"
    if backend == "triton":
        if device.type != "cuda" and not interpreting():
            raise ValueError(
                f"backend='triton' needs CUDA tensors (got tensors on {device}); on the CPU "
                "set TRITON_INTERPRET=1 before importing triton, or use backend='torch'"
            )
        if dtype is not None and dtype not in KERNEL_DTYPES:
            raise TypeError(
                f"backend='triton' supports float32, bfloat16 and float16 {name}, got {dtype}; "
                "use backend='torch' for float64"
            )
    return backend


def check_kernel_device(name: str, t: torch.Tensor) -> None:
    """The Triton kernels need CUDA tensors, or the interpreter (TRITON_INTERPRET=1) on CPU."""
    if t.device.type != "cuda" and not interpreting():
        raise ValueError(
            f"{name} must be a CUDA tensor for the Triton kernels, got one on {t.device}; on "
            "the CPU set TRITON_INTERPRET=1 before importing triton (or use the torch backend)"
        )


def check_topk_args(ref_logits, k, block, method) -> int:
    """Validate the arguments of :func:`palu_kernels.topk_threshold`; returns ``k`` as the
    set's size, ``1 <= k <= V``."""
    if not isinstance(ref_logits, torch.Tensor):
        raise TypeError(f"ref_logits must be a torch.Tensor, got {type(ref_logits).__name__}")
    if ref_logits.dtype not in KERNEL_DTYPES:
        raise TypeError(
            "ref_logits must be float32, bfloat16 or float16 for the Triton top-K selection, "
            f"got {ref_logits.dtype} (for float64 use reference.topk_set_reference)"
        )
    if ref_logits.dim() < 1 or ref_logits.shape[-1] < 1:
        raise ValueError(
            f"ref_logits must have shape [..., V] with V >= 1, got {list(ref_logits.shape)}"
        )
    v = ref_logits.shape[-1]
    if k is None:
        k = v
    elif isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int or None, got {type(k).__name__} {k!r}")
    elif k < 1:
        raise ValueError(f"k must be >= 1 (or None for the whole row), got {k}")
    if block is not None and (isinstance(block, bool) or not isinstance(block, int)
                              or block < 1 or block & (block - 1)):
        raise ValueError(f"block must be a power of two, got {block!r}")
    if method not in ("radix", "bracket"):
        raise ValueError(f"method must be 'radix' or 'bracket', got {method!r}")
    check_kernel_device("ref_logits", ref_logits)
    return min(k, v)


def check_split_options(split, split_chunk) -> None:
    """The Triton launch's split-row options (``backends/triton_loss.launch``): ``split``
    None (the default: ``triton_split.default_split``), True or False; ``split_chunk`` None
    or a power of two >= 16 (columns per program of the split-row kernel)."""
    if split is not None and not isinstance(split, bool):
        raise UsageError("split", f"must be None, True or False, got {split!r}")
    if split_chunk is not None and (isinstance(split_chunk, bool)
                                    or not isinstance(split_chunk, int) or split_chunk < 16
                                    or split_chunk & (split_chunk - 1)):
        raise UsageError("split_chunk", f"must be a power of two >= 16, got {split_chunk!r}")
