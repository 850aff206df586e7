"""Top-K threshold selection without sorting: radix select over order-preserving float keys.

The top-K set ``S`` of a reference row ``r`` (length ``V``) is defined by two numbers:

* ``thr``: the K-th largest value of the row;
* ``ties``: how many of the entries equal to ``thr`` belong to ``S``; ties go to the lower
  vocabulary index, so ``S = {j : r_j > thr} + {the first `ties` j (by index) with r_j == thr}``.

That is exactly the set a stable descending sort puts in its first ``K`` places
(``reference.topk_set_reference``), found here with a fixed number of counting passes over
the row instead of a sort.

Order-preserving keys. For an fp32 value ``x`` with bit pattern ``b`` (read as int32),

    key(x) = b               if b >= 0   (x >= +0: larger floats have larger bit patterns)
             b ^ 0x7FFFFFFF  if b <  0   (x <= -0: flip the magnitude bits, reversing them)

is a signed int32 whose integer order is the float order (``-0`` is folded into ``+0`` first,
so that the two zeros, equal as floats, get one key). ``ukey = key + 2^31`` (held in int64)
lies in ``[0, 2^32)``. bf16 / fp16 are upcast to fp32 first (exact).

Radix select. ``thr`` has the key ``u* = max{u : #(ukey >= u) >= K}`` (the count is a
non-increasing step function of ``u`` that drops below ``K`` right after the K-th largest
key). ``u*`` is built from the most significant digit down, ``RADIX_BITS`` bits at a time:
with the digits above already fixed in ``prefix``, one pass over the row counts, for each of
the ``2^RADIX_BITS`` candidate digits ``d``, ``#(ukey >= prefix + d * 2^shift)``, and keeps
the largest ``d`` whose count is still ``>= K``. ``RADIX_BITS = 1`` is a bisection on the
bits (32 passes); the default 4 takes 8 passes of 16 comparisons per element.

The tie count needs ``#(ukey > u*) = #(ukey >= u* + 1)``: the count of the candidate just
above the chosen one at the last level where one existed (carried as ``count_next``), so
it comes for free.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# 2^31: moves signed int32 keys to [0, 2^32) (done in int64).
_KEY_BIAS = tl.constexpr(2147483648)


@triton.jit
def _topk_search(
    r_row_ptr,  # pointer to r[row, 0] of one reference row
    stride_v,  # element stride between vocabulary entries of the row
    V,  # vocabulary size (row length)
    K,  # 1 <= K <= V, size of the top-K set
    BLOCK: tl.constexpr,  # entries per tile (power of two); a tile is BLOCK x 2^RADIX_BITS
    RADIX_BITS: tl.constexpr,  # bits per digit (1, 2, 4 or 8; divides 32)
):
    """Return ``(thr, ties, n_eq)``: the fp32 K-th largest value of the row, how many of the
    entries equal to it are in ``S`` and how many there are (``ties == n_eq``: all of them)."""
    NB: tl.constexpr = 1 << RADIX_BITS
    offs = tl.arange(0, BLOCK)
    digits = tl.arange(0, NB).to(tl.int64)  # candidate digits d = 0 .. NB-1
    prefix = tl.zeros([], dtype=tl.int64)  # digits of u* fixed so far
    count_next = tl.zeros([], dtype=tl.int32)  # #(ukey >= the candidate just above u*)
    count_at = tl.zeros([], dtype=tl.int32)  # #(ukey >= the chosen candidate)
    for level in range(32 // RADIX_BITS):
        shift = 32 - RADIX_BITS * (level + 1)
        cand = prefix + (digits << shift)  # [NB] candidate lower bounds of u*
        counts = tl.zeros([NB], dtype=tl.int32)  # counts[d] = #(ukey >= cand[d])
        for start in range(0, V, BLOCK):
            cols = start + offs
            valid = cols < V
            x = tl.load(r_row_ptr + cols.to(tl.int64) * stride_v, mask=valid, other=0.0)
            x = x.to(tl.float32)
            # order-preserving key (written out here: under the interpreter every call of a
            # jit helper costs milliseconds); -0 is folded into +0 first
            x = tl.where(x == 0.0, 0.0, x)
            bits = x.to(tl.int32, bitcast=True)
            key = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
            ukey = key.to(tl.int64) + _KEY_BIAS
            ge = (ukey[:, None] >= cand[None, :]) & valid[:, None]
            counts += tl.sum(ge.to(tl.int32), axis=0)
        # counts is non-increasing in d and counts[0] >= K (it held at the previous level):
        # the chosen digit is the last d with counts[d] >= K.
        d = tl.sum((counts >= K).to(tl.int32), axis=0) - 1
        count_at = tl.sum(tl.where(digits == d, counts, 0), axis=0)
        above = tl.sum(tl.where(digits == d + 1, counts, 0), axis=0)
        count_next = tl.where(d + 1 < NB, above, count_next)
        prefix += d.to(tl.int64) << shift
    key = (prefix - _KEY_BIAS).to(tl.int32)  # back from key to float bits
    bits = tl.where(key < 0, key ^ 0x7FFFFFFF, key)
    # after the last level the chosen candidate is u* itself: count_at = #(ukey >= u*)
    return bits.to(tl.float32, bitcast=True), K - count_next, count_at - count_next


@triton.jit(do_not_specialize=["K"])  # one compiled variant for every K
def _topk_threshold_kernel(
    r_ptr,  # [N, V] reference logits (fp32 / bf16 / fp16), any strides
    thr_ptr,  # [N] out: K-th largest value of each row, in r's dtype (exact)
    ties_ptr,  # [N] out int64: #entries equal to thr that belong to S
    V,  # vocabulary size
    K,  # 1 <= K <= V
    stride_rn,  # row stride of r (elements)
    stride_rv,  # column stride of r (elements)
    BLOCK: tl.constexpr,
    RADIX_BITS: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    thr, ties, _ = _topk_search(r_ptr + row * stride_rn, stride_rv, V, K, BLOCK, RADIX_BITS)
    tl.store(thr_ptr + row, thr.to(thr_ptr.dtype.element_ty))
    tl.store(ties_ptr + row, ties.to(tl.int64))


KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def interpreting() -> bool:
    """True when Triton runs through its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def default_radix_bits() -> int:
    """Bits per radix digit: 4 compiled (8 passes, 16 comparisons per element); 8 under the
    interpreter, where every pass costs Python-level overhead (4 passes, 256 comparisons)."""
    return 8 if interpreting() else 4


def default_select_block(v: int, radix_bits: int) -> int:
    """Entries per tile of the selection passes: ``BLOCK * 2^radix_bits`` compares per tile.

    Under the interpreter bigger tiles mean fewer Python-level iterations; compiled, a tile of
    16K comparisons keeps registers in check, and small vocabularies share one 64-wide tile.
    """
    if interpreting():
        return max(1, min(triton.next_power_of_2(v), (1 << 18) >> radix_bits))
    return max(64, min(triton.next_power_of_2(v), (1 << 14) >> radix_bits))


def check_kernel_device(name: str, t: torch.Tensor) -> None:
    """The Triton kernels need CUDA tensors, or the interpreter (TRITON_INTERPRET=1) on CPU."""
    if t.device.type != "cuda" and not interpreting():
        raise ValueError(
            f"{name} must be a CUDA tensor for the Triton kernels, got one on {t.device}; on "
            "the CPU set TRITON_INTERPRET=1 before importing triton (or use the torch backend)"
        )


def topk_threshold(ref_logits: torch.Tensor, k: int | None, *, radix_bits: int | None = None,
                   block: int | None = None):
    """Per-row threshold and tie count that define the top-K set, without sorting.

    Args:
        ref_logits: ``[..., V]`` float32 / bfloat16 / float16 tensor (CUDA, or CPU with
            ``TRITON_INTERPRET=1``), any strides.
        k: size of the set, an int ``>= 1`` (clipped to ``V``) or None for the whole row.
        radix_bits: bits per radix digit (1 = bisection on the bits, 32 passes; 4 = 8 passes;
            8 = 4 passes); None picks 4 compiled, 8 under the interpreter.
        block: entries per tile (a power of two); None picks one.

    Returns:
        ``(thr, ties)`` of the leading shape: ``thr`` (ref_logits' dtype) is the K-th largest
        value of each row, ``ties`` (int64) how many entries equal to ``thr`` are in the set,
        lowest vocabulary indices first. The set is
        ``(r > thr) | ((r == thr) & (cumsum(r == thr) <= ties))``, the first ``k`` places of
        a stable descending sort. ``-0.0`` and ``+0.0`` count as equal; rows holding NaN get an
        unspecified set (the loss rejects NaN in reference rows that carry loss).

    Example::

        >>> r = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0]])
        >>> thr, ties = topk_threshold(r, 2)   # two of the three 3.0 entries, lowest first
        >>> thr.tolist(), ties.tolist()
        ([3.0], [2])
    """
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
    k = min(k, v)
    if radix_bits is None:
        radix_bits = default_radix_bits()
    if radix_bits not in (1, 2, 4, 8):
        raise ValueError(f"radix_bits must be 1, 2, 4 or 8, got {radix_bits!r}")
    if block is not None and (block < 1 or block & (block - 1)):
        raise ValueError(f"block must be a power of two, got {block!r}")
    check_kernel_device("ref_logits", ref_logits)

    lead = ref_logits.shape[:-1]
    r = ref_logits.detach().reshape(-1, v)
    n = r.shape[0]
    thr = torch.empty(n, dtype=ref_logits.dtype, device=r.device)
    ties = torch.empty(n, dtype=torch.int64, device=r.device)
    if n:
        blk = block or default_select_block(v, radix_bits)
        _topk_threshold_kernel[(n,)](
            r, thr, ties, v, k, r.stride(0), r.stride(1),
            BLOCK=blk, RADIX_BITS=radix_bits, num_warps=8 if blk >= 512 else 4,
        )
    return thr.reshape(lead), ties.reshape(lead)


def topk_mask_from_threshold(ref_logits: torch.Tensor, thr: torch.Tensor,
                             ties: torch.Tensor) -> torch.Tensor:
    """Boolean ``[..., V]`` membership of the set defined by ``(thr, ties)`` (torch, for checks)."""
    t = thr.unsqueeze(-1)
    at = ref_logits == t
    return (ref_logits > t) | (at & (at.cumsum(dim=-1) <= ties.unsqueeze(-1)))
