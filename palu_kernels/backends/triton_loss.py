"""The ``"triton"`` backend: the fused PALU forget loss, local flattening on initiating rows and
KL on common rows, one program per row of the ``[B, T, V]`` logits ``z`` and reference ``r``.

The math is ``docs/spec.md`` (and the comments beside each pass below); how a row is walked
(row order, passes, tiles, traffic) and the measured and modelled figures behind the tile
choices are in ``docs/kernels.md``. In short:

* a row in ``I``: top-K threshold of ``r`` (``triton_topk.py``), pass A (the target ``c``),
  pass B (``L = (1/K) sum_S (z_j - c)^2`` and ``dL/dz_j = (2/K)(d_j - s dc/dz_j)``);
* a row in ``C``: pass 1 (online softmax of ``z``, and of ``r``, with the KL numerator),
  pass 2 (the gradient, ``p (log p - log q - KL)`` or ``p - q``);
* any other row: never read; a zero gradient row.

With the split path on (``split=True``, or ``PALU_TRITON_SPLIT=1`` for CUDA rows of at least
128 KiB: opt-in until it has run on a GPU), the rows not in ``I`` go to the split-row kernel
(``triton_split.py``: each KL row read from HBM once) and this kernel takes the rows in ``I``
alone (``LOCAL_ONLY``).

The gradient is written during the forward pass into a new ``[N, V]`` tensor, already
weighted (:mod:`palu_kernels.backends.function`); backward scales it in place on the device
(:func:`scale_rows_`: nothing at all where ``grad_output`` is 1). No atomics and a fixed
summation order: bitwise deterministic. No host synchronisation in the forward pass; fp32
accumulation whatever the logits' dtype.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .._validation import PALUArgs, check_split_options
from ..masks import mean_row_weights
from .function import PALUFunction, RowBackend
from .kernel_utils import device_guard, interpreting, key_bits
from .triton_split import default_split, launch_split
from .triton_topk import (
    BRACKET_SLOTS,
    default_select_block,
    default_select_method,
    topk_search,
    topk_search_bracket,
)

# TARGET constexpr codes
_TARGETS = {"mean": 0, "mean_detached": 1, "topk_mean": 2, "const": 3}
# KL constexpr codes
_KLS = {None: 0, "reverse": 1, "forward": 2}

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)
# Floor of a KL difference z - r (or r - z): its weight is 0 exactly where the difference is
# -inf or NaN (an entry at -inf), and 0 * (-BIG) = 0 is the 0 log 0 = 0 of the spec; a
# maximum (not a compare-and-select pair) also maps NaN to -BIG.
NEG_BIG = tl.constexpr(-3.0e38)



@triton.jit
def _load(ptr, offs, valid, other, MASKED: tl.constexpr, POLICY: tl.constexpr):
    """One tile as fp32: unmasked in the body of a row, masked (``other``) at its edges."""
    if MASKED:
        x = tl.load(ptr + offs, mask=valid, other=other, eviction_policy=POLICY)
    else:
        x = tl.load(ptr + offs, eviction_policy=POLICY)
    return x.to(tl.float32)


@triton.jit
def _in_s(r, cols, valid, thr, j_last, TOPK_ALL: tl.constexpr, MASKED: tl.constexpr):
    """Membership in ``S``: ``r_j > thr  or  (r_j == thr  and  j <= j_last)`` (``j_last = V``
    when every entry equal to ``thr`` is in ``S``); everything when K = V. ``cols`` is
    ``(lane offsets, first column of the tile)``: ``j <= j_last`` is then one compare of a
    loop-invariant register against a per-tile scalar."""
    if TOPK_ALL:
        member = valid
    else:
        offs, col0 = cols
        member = (r > thr) | ((r == thr) & (offs <= j_last - col0))
        if MASKED:
            member = member & valid
    return member


@triton.jit
def _local_a_tile(z_row, r_row, zo, ro, cols, valid, thr, j_last, sum_v, sum_s,
                  NEED_S: tl.constexpr, TOPK_ALL: tl.constexpr, MASKED: tl.constexpr):
    """Pass A on one tile: ``sum_v += z``; ``sum_s += z [j in S]`` when the target needs it."""
    z = _load(z_row, zo, valid, 0.0, MASKED, "evict_last")
    sum_v += z
    if NEED_S:
        if TOPK_ALL:
            sum_s += z
        else:
            r = _load(r_row, ro, valid, float("-inf"), MASKED, "evict_last")
            # z [j in S] as a product, like the specification: a NaN or +-inf outside S
            # still reaches the row (0 * inf = NaN), so every backend agrees (spec)
            sum_s += z * _in_s(r, cols, valid, thr, j_last, TOPK_ALL, MASKED).to(tl.float32)
    return sum_v, sum_s


@triton.jit
def _local_b_tile(z_row, r_row, g_row, zo, ro, go, cols, valid, thr, j_last, c, s_over_v,
                  two_w_over_k, sq, TOPK_ALL: tl.constexpr, WRITE_GRAD: tl.constexpr,
                  MASKED: tl.constexpr):
    """Pass B on one tile: ``d = (z - c)[j in S]``, ``sq += d^2``, gradient
    ``(2w/K)(d - s/V)`` (``s/V`` only for the ``"mean"`` target)."""
    z = _load(z_row, zo, valid, 0.0, MASKED, "evict_first")
    if TOPK_ALL:
        member = valid
    else:
        r = _load(r_row, ro, valid, float("-inf"), MASKED, "evict_first")
        member = _in_s(r, cols, valid, thr, j_last, TOPK_ALL, MASKED)
    # (z - c) [j in S] as a product (0 * inf = NaN outside S, as in the specification); the
    # lanes past the row's end hold z = 0 and add 0 while c is finite
    d = (z - c) * member.to(tl.float32)
    sq += d * d
    if WRITE_GRAD:
        g = (two_w_over_k * (d - s_over_v)).to(g_row.dtype.element_ty)
        if MASKED:
            tl.store(g_row + go, g, mask=valid)
        else:
            tl.store(g_row + go, g)
    return sq


@triton.jit
def _online(x, m, s):
    """One tile of an online softmax with one running maximum per tile.

    With the tile's new maximum ``M = max(m, max_tile x)`` (natural units, an exact data
    value; the shift ``sh = M``, or 0 while ``M = -inf``: every weight so far is then 0),
    each lane keeps ``s = sum exp(x - sh)``, computed as ``2^((x - sh) log2 e)`` (the
    largest entry weighs exactly 1); when the maximum moves, one scalar factor
    ``a = exp(m - M)`` (0 while ``m = -inf``) rescales every lane. Returns the new maximum,
    the lane sums, ``a`` (to rescale other per-lane sums alike) and the entries' weights.
    """
    new = tl.maximum(m, tl.max(x, axis=0))
    sh = tl.where(new == float("-inf"), 0.0, new)
    a = tl.where(m == float("-inf"), 0.0, tl.exp2((m - sh) * LOG2E))
    e = tl.exp2((x - sh) * LOG2E)
    return new, s * a + e, a, e


@triton.jit
def _kl_stream_tile(z_row, r_row, zo, ro, valid, m_z, m_r, s_z, s_r, acc,
                    KL: tl.constexpr, WITH_R: tl.constexpr, MASKED: tl.constexpr):
    """KL pass 1 on one tile: the online softmax of z (and of r when ``WITH_R``) and the
    numerator of the KL, rescaled with the weights' sums:

        reverse: acc' = a_z acc + exp(z - sh_z) max(z - r, -BIG)   (sum_j p_j (z_j - r_j))
        forward: acc' = a_r acc + exp(r - sh_r) max(r - z, -BIG)   (sum_j q_j (r_j - z_j))

    The maximum with ``-BIG`` replaces a per-entry guard: where the weight is 0 (an entry
    at -inf) the difference is -inf or NaN, and ``0 * -BIG = 0`` (0 log 0 = 0). The reverse
    KL's gradient needs only ``lse_z`` and ``sum_j p_j (z_j - r_j)``, so with a gradient to
    write the reference's softmax moves to pass 2 (``WITH_R`` False): each pass then does
    about half of the arithmetic.
    """
    z = _load(z_row, zo, valid, float("-inf"), MASKED, "evict_last")
    r = _load(r_row, ro, valid, float("-inf"), MASKED, "evict_last")
    if KL == 1:
        m_z, s_z, a_z, e_z = _online(z, m_z, s_z)
        acc = acc * a_z + e_z * tl.maximum(z - r, NEG_BIG)
        if WITH_R:
            m_r, s_r, _a_r, _e_r = _online(r, m_r, s_r)
    else:
        m_z, s_z, _a_z, _e_z = _online(z, m_z, s_z)
        m_r, s_r, a_r, e_r = _online(r, m_r, s_r)
        acc = acc * a_r + e_r * tl.maximum(r - z, NEG_BIG)
    return m_z, m_r, s_z, s_r, acc


@triton.jit
def _kl_grad_tile(z_row, r_row, g_row, zo, ro, go, valid, lse_z, lse_r, cst, weight, m_r, s_r,
                  KL: tl.constexpr, WITH_R: tl.constexpr, MASKED: tl.constexpr):
    """KL pass 2 on one tile, ``p = exp(z - lse_z)``: the gradient, reverse
    ``w p ((z - r) - sum_j p_j (z_j - r_j))`` (``= w p (log p - log q - KL)``), forward
    ``w (p - q)``; and, when ``WITH_R``, the reference's online softmax left out of pass 1."""
    z = _load(z_row, zo, valid, float("-inf"), MASKED, "evict_first")
    r = _load(r_row, ro, valid, float("-inf"), MASKED, "evict_first")
    p = tl.exp2((z - lse_z) * LOG2E)
    if KL == 1:
        g = (weight * p) * (tl.maximum(z - r, NEG_BIG) - cst)
        if WITH_R:
            m_r, s_r, _a_r, _e_r = _online(r, m_r, s_r)
    else:
        g = weight * (p - tl.exp2((r - lse_r) * LOG2E))
    g = g.to(g_row.dtype.element_ty)
    if MASKED:
        tl.store(g_row + go, g, mask=valid)
    else:
        tl.store(g_row + go, g)
    return m_r, s_r


@triton.jit
def _edge(e, head, nb, V, offs, BLOCK: tl.constexpr):
    """Columns and validity of edge tile ``e`` of a row: 0 the head ``[0, head)`` before the
    first aligned column, 1 the tail ``[head + nb*BLOCK, V)`` after the last full tile."""
    start = tl.where(e == 0, 0, head + nb * BLOCK)
    stop = tl.where(e == 0, head, V)
    cols = start + offs
    return cols, cols < stop


@triton.jit(do_not_specialize=["K"])  # one compiled variant for every K
def _palu_fwd_kernel(
    z_ptr,  # [B, T, V] logits (fp32 / bf16 / fp16), strides (stride_zb, stride_zt, 1)
    r_ptr,  # [B, T, V] reference logits, same dtype, strides (stride_rb, stride_rt, 1)
    order_ptr,  # [N] int32: the row each program takes (initiating rows first)
    kind_ptr,  # [N] int32: 1 = row in I, 2 = row in C, 0 = no loss
    w_ptr,  # [N] fp32 row weight: gamma (I) or alpha (C), / max(1,|I|) or / max(1,|C|) for
    #         mean, times the caller's per-row weights
    loss_ptr,  # [N] fp32 out: weight * (L_local or KL), 0 for rows without loss
    g_ptr,  # [N, V] out, contiguous, logits' dtype: weight * d(term)/dz (when WRITE_GRAD)
    T,  # rows per sequence (N = B * T)
    V,  # vocabulary size
    K,  # top-K size, 1 <= K <= V
    target_value,  # the constant c when TARGET == 3
    stride_zb, stride_zt, stride_rb, stride_rt,
    TARGET: tl.constexpr,  # 0 mean, 1 mean_detached, 2 topk_mean, 3 constant
    KL: tl.constexpr,  # 0 none, 1 reverse KL(p||q), 2 forward KL(q||p)
    TOPK_ALL: tl.constexpr,  # K == V: S is the whole row
    WRITE_GRAD: tl.constexpr,  # write the gradient (logits require grad)
    KEY_BITS: tl.constexpr,  # width of the selection keys: 16 (bf16 / fp16) or 32 (fp32)
    BLOCK_V: tl.constexpr,  # vocabulary tile of the streaming passes (power of two)
    BLOCK_SEL: tl.constexpr,  # vocabulary tile of the top-K selection passes
    VEC: tl.constexpr,  # elements per 16 bytes when z and r rows align alike, else 1
    G_HINT: tl.constexpr,  # the gradient rows align like z's (VEC applies to the stores)
    NUM_STAGES: tl.constexpr,  # software-pipelining depth of the body loops
    BRACKET: tl.constexpr = False,  # top-K by the sampled bracket (needs WRITE_GRAD: its
    #                                 scratch is the row's gradient, written later)
    RC: tl.constexpr = 32,  # scratch slots per virtual lane of the bracket select
    LOCAL_ONLY: tl.constexpr = False,  # the initiating rows only: the split-row kernel
    #                                    (triton_split.py) takes the others
):
    row = tl.load(order_ptr + tl.program_id(0)).to(tl.int64)
    kind = tl.load(kind_ptr + row)
    b = row // T
    t = row - b * T
    z_off = b * stride_zb + t * stride_zt
    r_off = b * stride_rb + t * stride_rt
    g_off = row * V
    z_row = z_ptr + z_off
    r_row = r_ptr + r_off
    g_row = g_ptr + g_off
    offs = tl.arange(0, BLOCK_V)
    # head: columns before the first VEC-aligned one of z (r, and g with G_HINT, align
    # alike); nb full tiles follow without a mask from there, then the masked tail.
    if VEC > 1:
        head = tl.minimum((VEC - z_off % VEC) % VEC, V).to(tl.int32)
    else:
        head = tl.zeros([], dtype=tl.int32)
    nb = (V - head) // BLOCK_V
    # body bases: the first aligned column of each row, as offsets from the (16-byte
    # aligned) tensor starts, so that the compiler may use 16-byte vector accesses
    zb_off = z_off + head
    rb_off = r_off + head
    gb_off = g_off + head
    if VEC > 1:
        zb_off = tl.multiple_of(zb_off, VEC)
        rb_off = tl.multiple_of(rb_off, VEC)
        if G_HINT:
            gb_off = tl.multiple_of(gb_off, VEC)
    zb = z_ptr + zb_off
    rb = r_ptr + rb_off
    gb = g_ptr + gb_off
    if kind == 1:
        weight = tl.load(w_ptr + row)
        if TOPK_ALL:  # K = V: S is the whole row, no selection
            thr = 0.0
            j_last = V
        elif BRACKET and WRITE_GRAD:
            # the bracket's scratch: the 32-bit words inside this row's gradient, which
            # pass B overwrites entirely afterwards
            ESZ: tl.constexpr = KEY_BITS // 8
            CH: tl.constexpr = 128 // KEY_BITS
            w0 = (g_off * ESZ + 3) // 4
            cap = ((g_off + V) * ESZ) // 4 - w0
            R = tl.minimum(cap // (BLOCK_SEL // CH), RC).to(tl.int32)
            thr, _ties, j_last, _ok = topk_search_bracket(
                r_row, 1, g_ptr.to(tl.pointer_type(tl.int32)) + w0, R, V, K, BLOCK_SEL,
                KEY_BITS, RC, NUM_STAGES)
        else:
            thr, _ties, j_last = topk_search(r_row, 1, V, K, BLOCK_SEL, KEY_BITS, NUM_STAGES)

        # Pass A: c = sum_V z / V ("mean", "mean_detached") or sum_S z / K ("topk_mean"); for
        # "mean" also sum_S z, for s = sum_S (z_j - c) = sum_S z - K c (gradient through c).
        NEED_S: tl.constexpr = (TARGET == 0) | (TARGET == 2)
        sum_v = tl.zeros([BLOCK_V], dtype=tl.float32)
        sum_s = tl.zeros([BLOCK_V], dtype=tl.float32)
        if TARGET != 3:
            for i in tl.range(0, nb, num_stages=NUM_STAGES):  # LOOP: local_a
                o = i * BLOCK_V + offs
                sum_v, sum_s = _local_a_tile(zb, rb, o, o, (offs, head + i * BLOCK_V),
                                             offs < BLOCK_V, thr, j_last, sum_v, sum_s,
                                             NEED_S, TOPK_ALL, False)
            for e in range(2):
                cols, valid = _edge(e, head, nb, V, offs, BLOCK_V)
                sum_v, sum_s = _local_a_tile(z_row, r_row, cols, cols, (cols, 0), valid, thr,
                                             j_last, sum_v, sum_s, NEED_S, TOPK_ALL, True)
        if TARGET == 2:
            c = tl.sum(sum_s, axis=0) / K
        elif TARGET == 3:
            c = target_value
        else:
            c = tl.sum(sum_v, axis=0) / V
        if TARGET == 0:
            s_over_v = (tl.sum(sum_s, axis=0) - K * c) / V  # s * dc/dz_j, dc/dz_j = 1/V
        elif TARGET == 2:
            # s = 0 exactly for a finite c; a non-finite c (a NaN or +-inf logit in the row)
            # makes it NaN, and the whole gradient row NaN, as in the specification
            s_over_v = c * 0.0
        else:
            s_over_v = 0.0  # "topk_mean": s = 0 exactly; detached / constant: no path

        # Pass B, last tile first: d_j = (z_j - c)[j in S]; L = (1/K) sum d_j^2;
        # dL/dz_j = (2/K)(d_j - s/V).
        sq = tl.zeros([BLOCK_V], dtype=tl.float32)
        two_w_over_k = 2.0 * weight / K
        for i in tl.range(0, nb, num_stages=NUM_STAGES):  # LOOP: local_b
            o = (nb - 1 - i) * BLOCK_V + offs
            sq = _local_b_tile(zb, rb, gb, o, o, o, (offs, head + (nb - 1 - i) * BLOCK_V),
                               offs < BLOCK_V, thr, j_last, c, s_over_v, two_w_over_k, sq,
                               TOPK_ALL, WRITE_GRAD, False)
        for e in range(2):
            cols, valid = _edge(e, head, nb, V, offs, BLOCK_V)
            sq = _local_b_tile(z_row, r_row, g_row, cols, cols, cols, (cols, 0), valid, thr,
                               j_last, c, s_over_v, two_w_over_k, sq, TOPK_ALL, WRITE_GRAD,
                               True)
        tl.store(loss_ptr + row, weight * (tl.sum(sq, axis=0) / K))
    elif LOCAL_ONLY:  # this row is the split-row kernel's (triton_split.py)
        pass
    elif (KL != 0) & (kind == 2):
        weight = tl.load(w_ptr + row)
        # reverse KL with a gradient: the reference's softmax is summed in pass 2 (below)
        DEFER_R: tl.constexpr = (KL == 1) & WRITE_GRAD
        m_z = tl.full([], float("-inf"), tl.float32)  # running maxima of z and r
        m_r = tl.full([], float("-inf"), tl.float32)
        s_z = tl.zeros([BLOCK_V], dtype=tl.float32)  # per lane, relative to the maxima
        s_r = tl.zeros([BLOCK_V], dtype=tl.float32)
        acc = tl.zeros([BLOCK_V], dtype=tl.float32)  # KL numerator, per lane
        for i in tl.range(0, nb, num_stages=NUM_STAGES):  # LOOP: kl_stream
            o = i * BLOCK_V + offs
            m_z, m_r, s_z, s_r, acc = _kl_stream_tile(zb, rb, o, o, offs < BLOCK_V, m_z, m_r,
                                                      s_z, s_r, acc, KL, not DEFER_R, False)
        for e in range(2):
            cols, valid = _edge(e, head, nb, V, offs, BLOCK_V)
            m_z, m_r, s_z, s_r, acc = _kl_stream_tile(z_row, r_row, cols, cols, valid, m_z,
                                                      m_r, s_z, s_r, acc, KL, not DEFER_R,
                                                      True)
        # lse = sh + ln S (sh = the maximum, or 0 for an all -inf row)
        S_z = tl.sum(s_z, axis=0)
        sh_z = tl.where(m_z == float("-inf"), 0.0, m_z)
        if KL == 1:
            mean_d = tl.sum(acc, axis=0) / S_z  # sum_j p_j (z_j - r_j)
        else:
            mean_d = 0.0
        if WRITE_GRAD:
            # reverse: dKL/dz_j = p_j (log p_j - log q_j - KL) = p_j ((z_j - r_j) - sum p (z - r));
            # forward: dKL/dz_j = p_j - q_j, with log p_j = z_j - lse_z, log q_j = r_j - lse_r.
            # Last tile first.
            lse_z = sh_z + tl.log2(S_z) * LN2
            if KL == 1:
                lse_r = 0.0  # not needed by the reverse gradient
                cst = mean_d
            else:
                S_r1 = tl.sum(s_r, axis=0)
                lse_r = tl.where(m_r == float("-inf"), 0.0, m_r) + tl.log2(S_r1) * LN2
                cst = 0.0
            for i in tl.range(0, nb, num_stages=NUM_STAGES):  # LOOP: kl_grad
                o = (nb - 1 - i) * BLOCK_V + offs
                m_r, s_r = _kl_grad_tile(zb, rb, gb, o, o, o, offs < BLOCK_V, lse_z, lse_r,
                                         cst, weight, m_r, s_r, KL, DEFER_R, False)
            for e in range(2):
                cols, valid = _edge(e, head, nb, V, offs, BLOCK_V)
                m_r, s_r = _kl_grad_tile(z_row, r_row, g_row, cols, cols, cols, valid, lse_z,
                                         lse_r, cst, weight, m_r, s_r, KL, DEFER_R, True)
        S_r = tl.sum(s_r, axis=0)
        sh_r = tl.where(m_r == float("-inf"), 0.0, m_r)
        # the KL from the differences sh_z - sh_r and ln S_z - ln S_r, never from two large
        # lse: reverse KL(p||q) = sum p (z - r) - (lse_z - lse_r), forward likewise
        if KL == 1:
            kl = mean_d - ((sh_z - sh_r) + (tl.log2(S_z) - tl.log2(S_r)) * LN2)
        else:
            kl = tl.sum(acc, axis=0) / S_r + ((sh_z - sh_r) + (tl.log2(S_z) - tl.log2(S_r)) * LN2)
        if DEFER_R:
            if kl != kl:  # rare: a reference without a softmax (+inf in it, or only -inf),
                # seen only now: its gradient is NaN too, as the loss (one more pass)
                nan = tl.full([BLOCK_V], float("nan"), g_ptr.dtype.element_ty)
                for start in range(0, V, BLOCK_V):
                    cols = start + offs
                    tl.store(g_row + cols, nan, mask=cols < V)
        tl.store(loss_ptr + row, weight * kl)
    else:  # no loss on this row: never read it
        tl.store(loss_ptr + row, 0.0)
        if WRITE_GRAD:
            zero = tl.zeros([BLOCK_V], dtype=g_ptr.dtype.element_ty)
            for i in range(0, nb):  # LOOP: zero_fill
                tl.store(gb + i * BLOCK_V + offs, zero)
            for e in range(2):
                cols, valid = _edge(e, head, nb, V, offs, BLOCK_V)
                tl.store(g_row + cols, zero, mask=valid)


def default_block_v(v: int) -> int:
    """Vocabulary tile of the streaming passes: the row in chunks of at most 8192 with 8 warps
    (``docs/kernels.md``, "Tiles"; 2^16 under the interpreter, where fewer, larger tiles run
    faster). Compiled, small vocabularies share one 256-wide tile (fewer kernel variants to
    compile)."""
    if interpreting():
        return min(triton.next_power_of_2(v), 1 << 16)
    return max(256, min(triton.next_power_of_2(v), 8192))


def default_num_stages() -> int:
    """Software-pipelining depth of the body loops (loads issued ahead of their use)."""
    return 1 if interpreting() else 3


def _row_weights(a: PALUArgs):
    """``[N]`` int32 row kinds and fp32 row weights, on the device, without a host sync."""
    kind = a.initiating.to(torch.int32) + 2 * a.common.to(torch.int32)
    if a.reduction == "mean":
        # each I row weighs gamma / max(1,|I|), each C row alpha / max(1,|C|)
        w = mean_row_weights(a.initiating, a.common, a.gamma, a.alpha)
    else:
        w = a.initiating.to(torch.float32) * a.gamma + a.common.to(torch.float32) * a.alpha
    if a.weights is not None:
        w = w * a.weights.to(torch.float32)
    return kind, w


def row_order(kind: torch.Tensor) -> torch.Tensor:
    """Rows in launch order, built on the device (no host sync): initiating rows first (the
    longest: selection and two passes), then common rows, then the rest, each in index
    order."""
    rank = torch.where(kind == 1, 0, torch.where(kind == 2, 1, 2)).to(torch.int32)
    return torch.argsort(rank, stable=True).to(torch.int32)


def _vec(z: torch.Tensor, r: torch.Tensor, g: torch.Tensor | None):
    """``(VEC, G_HINT)``: elements per 16 bytes when the rows of ``z`` and ``r`` start at the
    same offset modulo 16 bytes (then every row's body is 16-byte aligned after its head),
    else 1; and whether the gradient's rows align like them too."""
    if interpreting():
        return 1, False
    vec = 16 // z.element_size()
    bz, tz, _ = z.stride()
    br, tr, _ = r.stride()
    if (z.data_ptr() % 16 or r.data_ptr() % 16 or (bz - br) % vec or (tz - tr) % vec):
        return 1, False
    if g is None:
        return vec, False
    t, v = z.shape[1], z.shape[2]
    return vec, g.data_ptr() % 16 == 0 and (bz - t * v) % vec == 0 and (tz - v) % vec == 0


def palu_forward(a: PALUArgs, write_grad: bool, *, block_v: int | None = None,
                 block_sel: int | None = None, num_warps: int | None = None,
                 num_stages: int | None = None, vec: int | None = None,
                 select: str | None = None, split: bool | None = None,
                 split_chunk: int | None = None):
    """Launch the fused kernel: ``[N]`` fp32 weighted per-row losses and the gradient ``[N, V]``
    (or None); the keywords as for :func:`launch`."""
    loss, grad, _ = launch(a, write_grad, block_v=block_v, block_sel=block_sel,
                           num_warps=num_warps, num_stages=num_stages, vec=vec, select=select,
                           split=split, split_chunk=split_chunk)
    return loss, grad


def launch(a: PALUArgs, write_grad: bool, *, block_v: int | None = None,
           block_sel: int | None = None, num_warps: int | None = None,
           num_stages: int | None = None, vec: int | None = None, select: str | None = None,
           split: bool | None = None, split_chunk: int | None = None):
    """Launch the fused kernel: ``(loss [N] fp32, gradient [N, V] or None, row kinds [N])``.
    ``block_v``, ``block_sel``, ``num_warps``, ``num_stages`` override the tiles
    and launch shape (for tests and tuning); ``vec`` (interpreter only, for tests) forces the
    head / body / tail split of rows that a GPU uses for vocabularies not divisible by 16.
    ``select`` (``"radix"`` or ``"bracket"``, None: ``default_select_method()``) picks the
    top-K selection of the initiating rows; the bracket needs the gradient (its scratch), so
    without one it is the radix select. ``split`` (None: ``default_split``: with
    ``PALU_TRITON_SPLIT=1``, CUDA rows of at least 128 KiB; otherwise off) runs the rows that are not initiating through the split-row kernel
    (``triton_split.py``: each KL row read once), ``split_chunk`` its columns per program;
    the per-row kernel then takes the initiating rows alone."""
    z, r = a.logits, a.ref_logits  # [B, T, V] views of the caller's tensors
    if z.stride(2) != 1:  # the kernel walks unit-stride rows (a transposed input is rare)
        z = z.contiguous()
    if r.stride(2) != 1:
        r = r.contiguous()
    _, t, v = z.shape
    n = a.initiating.numel()
    kind, w = _row_weights(a)
    loss = torch.empty(n, dtype=torch.float32, device=z.device)
    grad = torch.empty((n, v), dtype=z.dtype, device=z.device) if write_grad else None
    if n == 0:
        return loss, grad, kind
    bv = block_v or default_block_v(v)
    bs = block_sel or default_select_block(v)
    select = select or default_select_method()
    if select not in ("radix", "bracket"):
        raise ValueError(f"select must be 'radix' or 'bracket', got {select!r}")
    check_split_options(split, split_chunk)
    split = default_split(z) if split is None else split
    vec, g_hint = _vec(z, r, grad)
    if vec_override := (vec if interpreting() else None):
        vec, g_hint = vec_override, False
    with device_guard(z):
        order = row_order(kind)
        _palu_fwd_kernel[(n,)](
            z, r, order, kind, w, loss, grad if write_grad else loss, t, v, a.k,
            float(a.target_value), z.stride(0), z.stride(1), r.stride(0), r.stride(1),
            TARGET=_TARGETS[a.target], KL=_KLS[a.kl], TOPK_ALL=a.k >= v,
            WRITE_GRAD=write_grad, KEY_BITS=key_bits(z.dtype), BLOCK_V=bv, BLOCK_SEL=bs,
            VEC=vec, G_HINT=g_hint, NUM_STAGES=num_stages or default_num_stages(),
            BRACKET=select == "bracket" and write_grad and bs >= 128 // key_bits(z.dtype),
            RC=BRACKET_SLOTS, LOCAL_ONLY=split, num_warps=num_warps or (8 if bv >= 2048 else 4),
        )
        if split:
            launch_split(z, r, order, kind, w, loss, grad, _KLS[a.kl], chunk=split_chunk)
    return loss, grad, kind


@triton.jit
def _scale_rows_kernel(
    g_ptr,  # [N, V] contiguous gradient written by the forward (logits' dtype), in place
    s_ptr,  # fp32 scale: [N] per row (stride_s = 1) or one scalar (stride_s = 0)
    kind_ptr,  # [N] int32 row kinds of the forward (0: no loss, a zero gradient row)
    V,
    stride_s,
    BLOCK_V: tl.constexpr,
):
    """``g[row] *= s[row]`` in place (fp32 product, one rounding). A row whose scale is
    exactly 1 (the usual ``loss.backward()``), or whose gradient is zero (no loss) and scale
    finite, returns without touching memory."""
    row = tl.program_id(0).to(tl.int64)
    scale = tl.load(s_ptr + row * stride_s)
    zero_row = (tl.load(kind_ptr + row) == 0) & (tl.abs(scale) < float("inf"))
    if (scale != 1.0) & (zero_row == 0):
        base = row * V
        offs = tl.arange(0, BLOCK_V)
        for start in range(0, V, BLOCK_V):  # LOOP: scale
            cols = start + offs
            valid = cols < V
            g = tl.load(g_ptr + base + cols, mask=valid, other=0.0).to(tl.float32)
            tl.store(g_ptr + base + cols, (g * scale).to(g_ptr.dtype.element_ty), mask=valid)


def scale_rows_(grad: torch.Tensor, scale: torch.Tensor, kind: torch.Tensor) -> torch.Tensor:
    """``grad *= scale`` in place (``scale``: one number or one per row of ``grad``), decided
    on the device: rows whose scale is exactly 1, and zero rows (``kind`` 0), cost nothing,
    and there is no host sync."""
    n, v = grad.shape
    s = scale.detach().to(torch.float32).reshape(-1)
    if s.numel() not in (1, n):
        raise ValueError(f"grad_output must have 1 or {n} elements, got {s.numel()}")
    if n:
        bv = default_block_v(v)
        with device_guard(grad):
            _scale_rows_kernel[(n,)](grad, s, kind, v, 0 if s.numel() == 1 else s.stride(0),
                                     BLOCK_V=bv, num_warps=8 if bv >= 2048 else 4)
    return grad


def triton_backend(**opts) -> RowBackend:
    """The Triton backend for :class:`~palu_kernels.backends.function.PALUFunction`: the
    fused kernel (:func:`launch`, ``opts`` its tile keywords) and the in-place scale
    (:func:`scale_rows_`, by the row kinds the forward returned)."""
    return RowBackend(rows=functools.partial(launch, **opts), scale_=scale_rows_)


def palu_loss_triton(logits: torch.Tensor, args: PALUArgs, **opts) -> torch.Tensor:
    """The PALU loss with the fused Triton kernels, on validated arguments (from
    ``palu_kernels._validation.check_loss_args``, with ``check_backend``'s device and dtype
    checks), with tile overrides: ``opts`` (``block_v``, ``block_sel``, ``num_warps``,
    ``num_stages``, ``vec``, ``select``, ``split``, ``split_chunk``) as for :func:`launch`, for tests and tuning.
    ``logits`` is the caller's tensor (the gradient flows to it). Returns an fp32 loss."""
    return PALUFunction.apply(logits, args, triton_backend(**opts))
