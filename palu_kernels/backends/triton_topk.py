"""Top-K threshold selection without sorting: radix select over order-preserving keys of the
data's own width, counted with digit histograms.

The top-K set ``S`` of a reference row ``r`` (length ``V``) is defined by three numbers:

* ``thr``: the K-th largest value of the row;
* ``ties``: how many of the entries equal to ``thr`` belong to ``S``; ties go to the lower
  vocabulary index, so ``S = {j : r_j > thr} + {the first `ties` j (by index) with r_j == thr}``;
* ``j_last``: the vocabulary index of the last tied entry that is in ``S`` (``V`` when every
  entry equal to ``thr`` is in ``S``, the usual case), so that membership is one test per
  entry: ``j in S  <=>  r_j > thr  or  (r_j == thr and j <= j_last)``.

That is exactly the set a stable descending sort puts in its first ``K`` places
(``reference.topk_set_reference``), found here with 2 (bf16 / fp16) or 4 (fp32) counting
passes over the row instead of a sort.

Order-preserving keys at the data's width. For a float whose bit pattern has the sign ``s``
(0 or -1 after an arithmetic shift) and the magnitude bits ``m`` (the float's width ``W``:
16 for bf16 / fp16, 32 for fp32),

    key(x) = ((m ^ s) - s) + 2^(W-1)        (m for x >= 0, -m for x <= 0, moved to [0, 2^W))

is an unsigned integer whose order is the float order, and -0 and +0 share one key. bf16 /
fp16 are never upcast for the key: a 16-bit key has two 8-bit digits, so two passes; an fp32
key has four.

Radix select by histograms. ``key* = max{u : #(key >= u) >= K}`` is built from the most
significant 8-bit digit down. With the digits above already fixed (``prefix``) and ``need``
entries of ``S`` still to find among the ``n_match`` keys that share that prefix, one pass
over the row counts, with ``tl.histogram``, the next digit of every key that matches the
prefix (keys off the prefix, and columns past the row, are counted in bin 0 and taken off
afterwards: their number is known, so the histogram needs no mask). With
``ge[d] = #(matching keys whose digit >= d)`` (a reversed cumulative sum of the 256 counts),
the digit of ``key*`` is the largest ``d`` with ``ge[d] >= need``; the ``ge[d] - hist[d]``
keys above it are all in ``S`` (``need`` drops by that many), ``hist[d]`` keys share the
longer prefix, and the prefix grows by ``d``. After the last digit ``key*`` is the key of
``thr``, ``need`` is ``ties`` and ``hist[d]`` is the number of entries equal to ``thr``. Each
pass costs the load, a few integer operations and one histogram update per entry, never a
comparison of every entry with every candidate digit. How cheap the update is depends on
triton: 3.9 lowers ``tl.histogram`` to shared-memory atomics (about 13 SASS instructions per
entry and pass, sm_90a), 3.6 to warp ballots (about 80).

Consecutive passes walk the row in opposite directions (the tiles one pass read last are
the first the next one needs, while they are still in L2), and every load asks L2 to keep
the row (``evict_last``): the local term's passes come next.

Only when a tie straddles the boundary (``ties < #(r == thr)``) does one more pass over the
row find ``j_last`` (a running count of the entries equal to ``thr``).

Sampled bracket (``topk_search_bracket``, no histogram: the default where triton lowers
``tl.histogram`` to ballots, ``default_select_method``). Two order statistics of a sample of
the row (4096 entries, 16-byte runs spread over it) bracket the K-th value, ``[lo, hi]`` in
keys, 4 binomial deviations wide; one pass counts ``c_gt = #(key > hi)`` and appends the
column of every key in ``[lo, hi]`` to a small int32 scratch (a few thousand candidates at
V = 128256, K = 5000); when ``c_gt < K <= c_gt + #candidates`` (and the scratch held them),
the K-th value is the ``(K - c_gt)``-th largest candidate, found bit by bit with one count per
bit, and the entries equal to it are all candidates (``ties``, ``n_eq``). Otherwise the radix
select answers: the sample decides only how fast, never what. ``docs/kernels.md`` has the
figures.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .._validation import check_topk_args
from .kernel_utils import device_guard, interpreting, key_bits


@triton.jit
def _order_key(x, KEY_BITS: tl.constexpr):
    """Unsigned keys (held in uint32) of a tile of floats, read at their own width (fp32 when
    KEY_BITS == 32, bf16 / fp16 when 16), ordered like the floats; -0 shares +0's key.

    With the sign ``s`` (0 or -1, an arithmetic shift) and the magnitude bits ``m``,
    ``(m ^ s) - s`` is ``m`` or ``-m`` (so -0 and +0 both give 0), and adding ``2^(W-1)``
    moves it to ``[0, 2^W)``: a shift, one 3-input logic op and one 3-input add.
    """
    if KEY_BITS == 32:
        b = x.to(tl.int32, bitcast=True)
        s = b >> 31
        key = ((b & 0x7FFFFFFF) ^ s) - s + (-2147483648)  # + 2^31, wrapping
    else:
        b = x.to(tl.int16, bitcast=True).to(tl.int32)  # sign-extended 16-bit pattern
        s = b >> 15
        key = ((b & 0x7FFF) ^ s) - s + 32768
    return key.to(tl.uint32, bitcast=True)


@triton.jit
def _digit_bins(x, valid, prefix, shift, FIRST: tl.constexpr, MASKED: tl.constexpr,
                KEY_BITS: tl.constexpr):
    """Histogram bins of one tile for the digit at ``shift``: the digit for keys that match
    the prefix (every key on the first pass); bin 0 for the others and for columns past the
    row, whose number is known and taken off bin 0 after the pass. So the histogram needs no
    mask (no branch per entry) and only the 256 bins of the digits."""
    key = _order_key(x, KEY_BITS)
    digit = ((key >> shift) & 255).to(tl.int32)
    if FIRST:
        if MASKED:
            digit = tl.where(valid, digit, 0)
    else:
        match = (key >> (shift + 8)) == prefix
        if MASKED:
            match = match & valid
        digit = tl.where(match, digit, 0)
    return digit


@triton.jit
def _radix_select(
    r_row,  # pointer to r[row, 0] of one reference row (fp32 / bf16 / fp16)
    stride_v,  # element stride between vocabulary entries of the row
    V,  # vocabulary size (row length)
    K,  # 1 <= K <= V, size of the top-K set
    BLOCK: tl.constexpr,  # entries per tile (power of two)
    KEY_BITS: tl.constexpr,  # 32 for fp32 rows, 16 for bf16 / fp16 rows
    NUM_STAGES: tl.constexpr = 1,  # software-pipelining depth of the counting passes
):
    """Radix select by digit histograms: ``(key*, ties, n_eq)``, the key of the K-th largest
    entry, how many entries equal to it are in ``S`` and how many there are."""
    offs = tl.arange(0, BLOCK)
    bins = tl.arange(0, 256)
    prefix = tl.zeros([], dtype=tl.uint32)  # key* >> shift: the digits fixed so far
    need = K + tl.zeros([], dtype=tl.int32)  # entries of S still to find under the prefix
    n_match = V + tl.zeros([], dtype=tl.int32)  # keys that share the prefix (all, at first)
    n_full = V // BLOCK  # full tiles (no mask), then a masked tail
    tail = n_full * BLOCK + offs
    for p in tl.static_range(KEY_BITS // 8):
        shift = KEY_BITS - 8 * (p + 1)
        hist = tl.zeros([256], dtype=tl.int32)
        for i in tl.range(0, n_full, num_stages=NUM_STAGES):  # LOOP: select_radix
            if p % 2 == 1:  # odd passes walk the row backwards: its last tiles are in L2
                i = n_full - 1 - i
            cols = i * BLOCK + offs
            x = tl.load(r_row + cols.to(tl.int64) * stride_v, eviction_policy="evict_last")
            hist += tl.histogram(_digit_bins(x, cols < V, prefix, shift, p == 0, False,
                                             KEY_BITS), 256)
        x = tl.load(r_row + tail.to(tl.int64) * stride_v, mask=tail < V, other=0.0)
        hist += tl.histogram(_digit_bins(x, tail < V, prefix, shift, p == 0, True, KEY_BITS),
                             256)
        # bin 0 also counted the keys off the prefix and the BLOCK - (V - n_full*BLOCK)
        # columns past the row: take them off
        hist -= tl.where(bins == 0, (V - n_match) + (n_full * BLOCK + BLOCK - V), 0)
        # ge[d] = #(matching keys with digit >= d), non-increasing, ge[0] >= need
        ge = tl.cumsum(hist, axis=0, reverse=True)
        d = tl.sum((ge >= need).to(tl.int32), axis=0) - 1
        n_match = tl.sum(tl.where(bins == d, hist, 0), axis=0)
        need -= tl.sum(tl.where(bins > d, hist, 0), axis=0)  # all of them are in S
        prefix = (prefix << 8) | d.to(tl.uint32)
    return prefix, need, n_match  # after the last digit: key*, ties, #(r == thr)


@triton.jit
def _key_value(key, r_row, KEY_BITS: tl.constexpr):
    """The fp32 value of the float (r_row's dtype) whose order key is ``key``."""
    # key - 2^(W-1) = +-magnitude: back to the float's bits
    if KEY_BITS == 32:
        k = (key ^ 0x80000000).to(tl.int32, bitcast=True)
        bits = tl.where(k < 0, (-k) | (-2147483648), k)
        thr = bits.to(tl.float32, bitcast=True)
    else:
        k = key.to(tl.int32, bitcast=True) - 32768
        bits = tl.where(k < 0, (-k) | 0x8000, k)
        thr = bits.to(tl.int16).to(r_row.dtype.element_ty, bitcast=True).to(tl.float32)
    return thr


@triton.jit
def _last_tied(r_row, stride_v, V, thr, ties, n_eq, BLOCK: tl.constexpr):
    """``j_last``: ``V`` when every entry equal to ``thr`` is in ``S``; else (a tie straddles
    the boundary, rare) the index of the ``ties``-th entry equal to ``thr``, one more pass."""
    j_last = V + tl.zeros([], dtype=tl.int32)
    if ties < n_eq:  # a tie straddles the boundary: find the ties-th entry equal to thr
        offs = tl.arange(0, BLOCK)
        run = tl.zeros([], dtype=tl.int32)
        j_last = tl.full([], -1, tl.int32)
        for start in range(0, V, BLOCK):
            cols = start + offs
            valid = cols < V
            x = tl.load(r_row + cols.to(tl.int64) * stride_v, mask=valid, other=0.0)
            eq = (x.to(tl.float32) == thr) & valid
            rank = run + tl.cumsum(eq.to(tl.int32), axis=0)
            hit = eq & (rank == ties)
            j_last = tl.maximum(j_last, tl.max(tl.where(hit, cols, -1), axis=0))
            run += tl.sum(eq.to(tl.int32), axis=0)
    return j_last


@triton.jit
def topk_search(
    r_row,  # pointer to r[row, 0] of one reference row (fp32 / bf16 / fp16)
    stride_v,  # element stride between vocabulary entries of the row
    V,  # vocabulary size (row length)
    K,  # 1 <= K <= V, size of the top-K set
    BLOCK: tl.constexpr,  # entries per tile (power of two)
    KEY_BITS: tl.constexpr,  # 32 for fp32 rows, 16 for bf16 / fp16 rows
    NUM_STAGES: tl.constexpr = 1,  # software-pipelining depth of the counting passes
):
    """Return ``(thr, ties, j_last)`` by radix select: the fp32 K-th largest value of the
    row, how many of the entries equal to it are in ``S``, and the index of the last of those
    (``V`` when all of them are in ``S``)."""
    key, ties, n_eq = _radix_select(r_row, stride_v, V, K, BLOCK, KEY_BITS, NUM_STAGES)
    thr = _key_value(key, r_row, KEY_BITS)
    return thr, ties, _last_tied(r_row, stride_v, V, thr, ties, n_eq, BLOCK)


@triton.jit
def _kth_key(key, valid, m, lo, hi, KEY_BITS: tl.constexpr):
    """The m-th largest of the valid keys of a 2-D tile, all of them in ``[lo, hi]`` (uint32),
    ``1 <= m <= #valid``: the largest ``u`` in ``[lo, hi]`` with ``#(key >= u) >= m``, built
    one bit of ``u - lo`` at a time (a count per bit, no histogram)."""
    span = hi - lo
    off = tl.zeros([], dtype=tl.uint32)
    for b in tl.static_range(KEY_BITS):
        bit = tl.full([], 1 << (KEY_BITS - 1 - b), tl.uint32)
        if bit <= span:  # bits above the span's are 0: no count (a uniform branch)
            off = _kth_step(key, valid, m, lo, span, off | bit, off)
    return lo + off


@triton.jit
def _kth_step(key, valid, m, lo, span, c, off):
    """One bit of ``_kth_key``: ``c`` (``off`` with the bit set) if ``#(key >= lo + c) >= m``."""
    n = tl.sum(tl.sum((valid & (key >= lo + c)).to(tl.int32), axis=1), axis=0)
    return tl.where((c <= span) & (n >= m), c, off)


@triton.jit
def _bracket_tile(r_row, stride_v, region, R, cols, V, lo, hi, gt, cnt, NVL: tl.constexpr,
                  KEY_BITS: tl.constexpr, MASKED: tl.constexpr):
    """One tile ``[NVL, CH]`` of the bracket pass: ``gt += (key > hi)``, and the column of
    every key in ``[lo, hi]`` appended to its virtual lane's slots (slot ``cnt + rank``,
    written only while ``< R``; ``cnt`` counts them all). Slot ``j`` of lane ``v`` is
    ``region[j * NVL]`` with ``region = s_row + v``: neighbouring lanes write neighbouring
    words, and (the scratch's layout decides the store's) each lane's CH entries stay in one
    thread, so the rank is an in-thread running count."""
    if MASKED:
        valid = cols < V
        x = tl.load(r_row + cols.to(tl.int64) * stride_v, mask=valid, other=0.0,
                    eviction_policy="evict_last")
    else:
        x = tl.load(r_row + cols.to(tl.int64) * stride_v, eviction_policy="evict_last")
    key = _order_key(x, KEY_BITS)
    above = key > hi
    inb = (key >= lo) & (key <= hi)
    if MASKED:
        above = above & valid
        inb = inb & valid
    gt += above.to(tl.int32)
    pos = cnt[:, None] + tl.cumsum(inb.to(tl.int32), axis=1) - 1
    tl.store(region + pos * NVL, cols, mask=inb & (pos < R))
    cnt += tl.sum(inb.to(tl.int32), axis=1)
    return gt, cnt


@triton.jit
def _bracket_select(
    r_row,  # pointer to r[row, 0] (fp32 / bf16 / fp16)
    stride_v,  # element stride of the row
    s_row,  # int32 scratch of this row: R slots for each of NVL lanes (candidates' columns)
    R,  # slots per region, R <= RC (0: no scratch, the caller falls back)
    V,
    K,
    NVL: tl.constexpr,  # rows ("virtual lanes") of a tile, BLOCK = NVL * CH
    CH: tl.constexpr,  # contiguous entries per virtual lane (16 bytes)
    RC: tl.constexpr,  # power of two >= R
    KEY_BITS: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):
    """Sampled bracket, one counting pass, exact selection among the few candidates.

    Returns ``(ok, key*, ties, n_eq)`` as ``_radix_select`` does; ``ok`` is False when the
    bracket missed the K-th value or a virtual lane had more than ``R`` candidates (then
    the caller runs the radix select: the answer never depends on the sample).
    """
    BLOCK: tl.constexpr = NVL * CH
    KEY_MAX: tl.constexpr = (1 << KEY_BITS) - 1
    vl = tl.arange(0, NVL)
    ch = tl.arange(0, CH)
    # 1. A sample of NVL runs of CH entries spread evenly over the row, and two of its
    #    order statistics around rank t = K n_s / V, 4 binomial deviations (+2) either side.
    step = tl.maximum(V // NVL, 1)
    scol = vl[:, None] * step + ch[None, :]
    sval = scol < V
    skey = _order_key(tl.load(r_row + scol.to(tl.int64) * stride_v, mask=sval, other=0.0),
                      KEY_BITS)
    n_s = tl.sum(tl.sum(sval.to(tl.int32), axis=1), axis=0)
    p = K.to(tl.float32) / V
    t = n_s.to(tl.float32) * p
    delta = 4.0 * tl.sqrt(t * (1.0 - p)) + 2.0
    m_hi = tl.floor(t - delta).to(tl.int32)  # < 1: no upper cut
    m_lo = tl.ceil(t + delta).to(tl.int32)  # > n_s: no lower cut
    zero = tl.zeros([], dtype=tl.uint32)
    kmax = tl.full([], KEY_MAX, tl.uint32)
    hi = kmax
    if m_hi >= 1:
        hi = _kth_key(skey, sval, m_hi, zero, kmax, KEY_BITS)
    lo = zero
    if m_lo <= n_s:
        lo = _kth_key(skey, sval, m_lo, zero, kmax, KEY_BITS)
    # 2. One pass (last tile first, so that the next pass finds the first tiles in L2):
    #    c_gt = #(key > hi), and the index of every key in [lo, hi] appended to its virtual
    #    lane's region of the scratch (an in-thread running count, no block-wide scan).
    gt = tl.zeros([NVL, CH], dtype=tl.int32)
    cnt = tl.zeros([NVL], dtype=tl.int32)
    n_full = V // BLOCK
    lane = vl[:, None] * CH + ch[None, :]
    region = s_row + vl[:, None]
    gt, cnt = _bracket_tile(r_row, stride_v, region, R, n_full * BLOCK + lane, V, lo, hi, gt,
                            cnt, NVL, KEY_BITS, True)  # the masked tail first
    for j in tl.range(0, n_full, num_stages=NUM_STAGES):  # LOOP: select
        gt, cnt = _bracket_tile(r_row, stride_v, region, R, (n_full - 1 - j) * BLOCK + lane,
                                V, lo, hi, gt, cnt, NVL, KEY_BITS, False)
    c_gt = tl.sum(tl.sum(gt, axis=1), axis=0)
    n_in = tl.sum(cnt, axis=0)
    ok = (c_gt < K) & (c_gt + n_in >= K) & (tl.max(cnt, axis=0) <= R)
    key_thr = lo
    ties = K - c_gt
    n_eq = n_in
    if ok:
        # 3. The need-th largest of the candidates (all in [lo, hi]), ties by index later.
        tl.debug_barrier()  # the scratch written by every thread, before it is read
        jc = tl.arange(0, RC)
        cval = jc[None, :] < cnt[:, None]
        cidx = tl.load(s_row + vl[:, None] + jc[None, :] * NVL, mask=cval, other=0)
        ckey = _order_key(tl.load(r_row + cidx.to(tl.int64) * stride_v, mask=cval, other=0.0),
                          KEY_BITS)
        need = K - c_gt
        key_thr = _kth_key(ckey, cval, need, lo, hi, KEY_BITS)
        n_eq = tl.sum(tl.sum((cval & (ckey == key_thr)).to(tl.int32), axis=1), axis=0)
        ties = need - tl.sum(tl.sum((cval & (ckey > key_thr)).to(tl.int32), axis=1), axis=0)
        tl.debug_barrier()  # every read of the scratch done before anyone overwrites it
    return ok, key_thr, ties, n_eq


@triton.jit
def topk_search_bracket(r_row, stride_v, s_row, R, V, K, BLOCK: tl.constexpr,
                         KEY_BITS: tl.constexpr, RC: tl.constexpr,
                         NUM_STAGES: tl.constexpr = 1):
    """``(thr, ties, j_last)`` as ``topk_search``, by the sampled bracket (one pass over
    the row, candidates' indices in the int32 scratch ``s_row``: ``BLOCK / CH`` regions of
    ``R`` slots), falling back to the radix select when the bracket misses."""
    CH: tl.constexpr = 128 // KEY_BITS  # 16 bytes of the row per virtual lane
    ok, key, ties, n_eq = _bracket_select(r_row, stride_v, s_row, R, V, K, BLOCK // CH, CH,
                                          RC, KEY_BITS, NUM_STAGES)
    if ok == 0:  # rare: the sample's bracket missed, or a lane's region overflowed
        key, ties, n_eq = _radix_select(r_row, stride_v, V, K, BLOCK, KEY_BITS, NUM_STAGES)
    thr = _key_value(key, r_row, KEY_BITS)
    return thr, ties, _last_tied(r_row, stride_v, V, thr, ties, n_eq, BLOCK), ok


@triton.jit(do_not_specialize=["K"])  # one compiled variant for every K
def _topk_threshold_kernel(
    r_ptr,  # [N, V] reference logits (fp32 / bf16 / fp16), any strides
    thr_ptr,  # [N] out: K-th largest value of each row, in r's dtype (exact)
    ties_ptr,  # [N] out int64: #entries equal to thr that belong to S
    s_ptr,  # [N, BLOCK / CH * R] int32 scratch of the bracket select (BRACKET only)
    path_ptr,  # [N] int32 out (BRACKET only): 1 where the bracket answered, 0 radix select
    V,  # vocabulary size
    K,  # 1 <= K <= V
    stride_rn,  # row stride of r (elements)
    stride_rv,  # column stride of r (elements)
    R,  # scratch slots per virtual lane (BRACKET only)
    BLOCK: tl.constexpr,
    KEY_BITS: tl.constexpr,
    NUM_STAGES: tl.constexpr,
    BRACKET: tl.constexpr,  # sampled bracket + one counting pass (else radix select)
    RC: tl.constexpr,  # power of two >= R
):
    row = tl.program_id(0).to(tl.int64)
    if BRACKET:
        CH: tl.constexpr = 128 // KEY_BITS
        thr, ties, _, ok = topk_search_bracket(r_ptr + row * stride_rn, stride_rv,
                                                s_ptr + row * (BLOCK // CH * R), R, V, K,
                                                BLOCK, KEY_BITS, RC, NUM_STAGES)
        tl.store(path_ptr + row, ok.to(tl.int32))
    else:
        thr, ties, _ = topk_search(r_ptr + row * stride_rn, stride_rv, V, K, BLOCK,
                                    KEY_BITS, NUM_STAGES)
    tl.store(thr_ptr + row, thr.to(thr_ptr.dtype.element_ty))
    tl.store(ties_ptr + row, ties.to(tl.int64))


# scratch slots per virtual lane of the bracket select (RC): a lane of a 4096-entry tile sees
# about V / 4096 * 16 entries, and about 6 of them fall in the bracket at V = 128256, K = 5000
BRACKET_SLOTS = 32


def default_select_method() -> str:
    """Top-K selection of the fused kernel: ``"bracket"`` (sampled bracket, one counting
    pass) where ``tl.histogram`` lowers to warp ballots (triton before 3.9, the GPU image's
    3.6: about 81 SASS instructions per element and radix pass, against about 22 per
    element for the bracket's pass, sm_90a), and under the interpreter (so the tests run
    the GPU image's path); ``"radix"`` where it lowers to shared-memory atomics (3.9: about
    12 per element and pass, cheaper than the bracket's pass there). Both give the same set.
    ``PALU_TOPK_SELECT`` (``radix`` / ``bracket``) overrides it."""
    env = os.environ.get("PALU_TOPK_SELECT")
    if env in ("radix", "bracket"):
        return env
    if interpreting():
        return "bracket"
    return "bracket" if _triton_version() < (3, 9) else "radix"


def _triton_version() -> tuple:
    parts = []
    for p in triton.__version__.split(".")[:2]:
        digits = "".join(c for c in p if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def default_select_block(v: int) -> int:
    """Entries per tile of the selection passes.

    Compiled: 4096 (8 warps, 16 entries per thread: two 16-byte loads of bf16, four of
    fp32, with the next tiles already in flight through the pipelined loop; the histogram's
    256 bins live in shared memory). Under the interpreter bigger tiles mean fewer
    Python-level iterations. Small vocabularies share one 64-wide tile.
    """
    if interpreting():
        return max(1, min(triton.next_power_of_2(v), 1 << 16))
    return max(64, min(triton.next_power_of_2(v), 4096))


def topk_threshold(ref_logits: torch.Tensor, k: int | None, *, block: int | None = None,
                   method: str = "radix"):
    """Per-row threshold and tie count that define the top-K set, without sorting.

    Args:
        ref_logits: ``[..., V]`` float32 / bfloat16 / float16 tensor (CUDA, or CPU with
            ``TRITON_INTERPRET=1``), any strides.
        k: size of the set, an int ``>= 1`` (clipped to ``V``) or None for the whole row.
        block: entries per tile (a power of two); None picks one.
        method: ``"radix"`` (histogram radix select, 2 passes over a 16-bit row, 4 over
            fp32) or ``"bracket"`` (a sampled bracket, one counting pass, exact selection
            among the candidates, radix select when the bracket misses: the same answer;
            it needs ``4 * BRACKET_SLOTS * block / CH`` bytes of scratch per row).

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
    thr, ties, _ = _topk_threshold(ref_logits, k, block=block, method=method)
    return thr, ties


def _topk_threshold(ref_logits: torch.Tensor, k: int | None, *, block: int | None = None,
                    method: str = "radix"):
    """``topk_threshold`` and, per row, 1 where the bracket answered (0: radix select)."""
    k = check_topk_args(ref_logits, k, block, method)  # 1 <= k <= V
    v = ref_logits.shape[-1]
    lead = ref_logits.shape[:-1]
    r = ref_logits.detach().reshape(-1, v)
    n = r.shape[0]
    thr = torch.empty(n, dtype=ref_logits.dtype, device=r.device)
    ties = torch.empty(n, dtype=torch.int64, device=r.device)
    path = torch.zeros(n, dtype=torch.int32, device=r.device)
    if n:
        blk = block or default_select_block(v)
        bits = key_bits(r.dtype)
        bracket = method == "bracket" and blk >= 128 // bits
        slots = BRACKET_SLOTS if bracket else 0
        scratch = torch.empty(n * (blk // (128 // bits)) * slots if bracket else 1,
                              dtype=torch.int32, device=r.device)
        with device_guard(r):
            _topk_threshold_kernel[(n,)](
                r, thr, ties, scratch, path, v, k, r.stride(0), r.stride(1), slots,
                BLOCK=blk, KEY_BITS=bits, NUM_STAGES=1 if interpreting() else 3,
                BRACKET=bracket, RC=BRACKET_SLOTS, num_warps=8 if blk >= 1024 else 4,
            )
    return thr.reshape(lead), ties.reshape(lead), path.reshape(lead)


def topk_mask_from_threshold(ref_logits: torch.Tensor, thr: torch.Tensor,
                             ties: torch.Tensor) -> torch.Tensor:
    """Boolean ``[..., V]`` membership of the set defined by ``(thr, ties)`` (torch, for checks)."""
    t = thr.unsqueeze(-1)
    at = ref_logits == t
    return (ref_logits > t) | (at & (at.cumsum(dim=-1) <= ties.unsqueeze(-1)))
