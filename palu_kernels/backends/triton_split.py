"""The split-row path of the ``"triton"`` backend: each KL ("common") row read from HBM once.

A bf16 row of V = 128256 (256.5 KB) fits neither one SM's registers nor its shared memory, so
the two-pass per-row kernel (``triton_loss.py``) reads z and r twice: once for the softmax
statistics, once for the gradient, and the second read mostly misses L2. Here a row is split
into ``G`` chunks of ``CHUNK`` columns, each held in the registers of its own program:

* **Persistent grid.** ``P = G x R`` programs, all co-resident (``P`` <= SMs x programs per
  SM of the compiled kernel). In round ``t`` program ``p`` takes chunk ``p % G`` of the row
  at position ``first + t R + p // G`` of the device-built row order (``row_order``:
  initiating rows, then common rows, then the rest; ``first`` = the number of initiating
  rows, which stay in the per-row kernel).
* **KL row** (``# LOOP: split_kl``): load the chunk of z and r once; its partial statistics
  (the same online-softmax math as ``_online`` / ``_kl_stream_tile``, over one chunk)

      m_z = max z,  s_z = sum exp(z - sh_z),  m_r = max r,  s_r = sum exp(r - sh_r),
      acc = sum exp(z - sh_z) max(z - r, -BIG)   (reverse)   or
            sum exp(r - sh_r) max(r - z, -BIG)   (forward),   sh = m, or 0 while m = -inf,

  go to the row's scratch record; then the **exchange**: ``tl.debug_barrier()`` (every
  thread's record store issued), one ``atomic_add(counter[row], 1, sem="acq_rel")``, a spin
  on ``atomic_add(counter[row], 0, sem="acquire") < G``, ``tl.debug_barrier()``; the G
  records are read through L2 (``.cg``) and combined in one fixed order, the same in every
  program of the row (bitwise deterministic, every chunk sees the same lse and KL):

      M = max_g m_g,  a_g = exp(m_g - M) (0 for m_g = -inf),  S = sum_g a_g s_g,
      ACC = sum_g a_{z|r, g} acc_g,   lse = sh_M + ln S.

  The chunk's gradient is then written from registers, exactly as the per-row kernel's pass
  2: reverse ``w p ((z - r) - sum_j p_j (z_j - r_j))``, forward ``w (p - q)``; a reverse KL
  that is NaN (a reference without a softmax) makes the whole gradient row NaN, as there.
  Chunk 0 writes the row's loss (one plain store, no atomics on the loss).
* **Row without a loss** (``# LOOP: split_zero``): each chunk writes its slice of the zero
  gradient row (chunk 0 the zero loss); no exchange.

**Why the spin cannot deadlock.** A program waits only for the ``G - 1`` other programs of
its own row in the same round, and each of them arrives (increments the counter) before it
waits for anything. Every program of the grid is running at once: the grid is launched
cooperatively (``launch_cooperative_grid=True``), so a grid that could not be co-resident
fails to launch instead of hanging, and ``P`` is sized from the SM count and the compiled
kernel's occupancy. A program in round ``t`` waits at most for programs still finishing
round ``t - 1``, which by the same argument finish: every wait ends.

**Memory order.** The record stores of all threads are ordered before the arrival by the
CTA barrier and the atomic's release semantics (gpu scope, cumulative); the acquire that
sees ``G`` arrivals orders the record loads after every other program's stores, and the
loads bypass L1 (``.cg``), where a stale line could sit.

Counters and scratch are allocated per call (``torch.zeros`` / ``torch.empty``: no host
sync, no ``.item()``). The interpreter runs programs one after another, so a spin would
never end there: ``launch_grid`` refuses it, and the tests (``tests/test_triton_split.py``)
run each program as its own launch from a Python thread.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .kernel_utils import device_guard, interpreting

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)
NEG_BIG = tl.constexpr(-3.0e38)  # as in triton_loss.py: 0 * -BIG = 0 is 0 log 0 = 0
NREC = 8  # floats per scratch record (5 used: m_z, s_z, m_r, s_r, acc; the kernels' `8`)

# The split path runs where a row of z is at least this long (bytes): the per-row kernel's
# second pass re-reads z and r from L2 with probability about min(1, L2 / (132 rows in
# flight x 4 rows of reuse x row bytes)) (static model, bench/static/model.py); at 128 KiB
# that is 50 MiB / 66 MiB = 0.74 on the H100, and it falls as rows grow, while below it the
# second pass is mostly L2 hits and the exchange (about 1 us per round) would not pay.
SPLIT_MIN_ROW_BYTES = 128 * 1024


@triton.jit
def _chunk_stats(z, r, KL: tl.constexpr):
    """Partial softmax statistics of one chunk (fp32 tensors, -inf past the row's end):
    ``(m_z, s_z, m_r, s_r, acc)``, sums relative to ``sh = m`` (0 while ``m = -inf``)."""
    m_z = tl.max(z, axis=0)
    m_r = tl.max(r, axis=0)
    e_z = tl.exp2((z - tl.where(m_z == float("-inf"), 0.0, m_z)) * LOG2E)
    e_r = tl.exp2((r - tl.where(m_r == float("-inf"), 0.0, m_r)) * LOG2E)
    if KL == 1:
        acc = tl.sum(e_z * tl.maximum(z - r, NEG_BIG), axis=0)  # relative to sh_z
    else:
        acc = tl.sum(e_r * tl.maximum(r - z, NEG_BIG), axis=0)  # relative to sh_r
    return m_z, tl.sum(e_z, axis=0), m_r, tl.sum(e_r, axis=0), acc


@triton.jit
def _combine(rec, G: tl.constexpr, GP: tl.constexpr, KL: tl.constexpr, CG: tl.constexpr):
    """The row's statistics from its ``G`` records at ``rec`` (``NREC`` floats each), in one
    fixed order: ``(sh_z, S_z, sh_r, S_r, ACC)`` with ``S = sum_g exp(m_g - M) s_g`` and
    ``ACC`` rescaled to ``sh_z`` (reverse) or ``sh_r`` (forward)."""
    gi = tl.arange(0, GP)
    gm = gi < G
    base = rec + gi * 8
    if CG:  # through L2 only: another SM wrote these
        m_z = tl.load(base + 0, mask=gm, other=float("-inf"), cache_modifier=".cg")
        s_z = tl.load(base + 1, mask=gm, other=0.0, cache_modifier=".cg")
        m_r = tl.load(base + 2, mask=gm, other=float("-inf"), cache_modifier=".cg")
        s_r = tl.load(base + 3, mask=gm, other=0.0, cache_modifier=".cg")
        acc = tl.load(base + 4, mask=gm, other=0.0, cache_modifier=".cg")
    else:
        m_z = tl.load(base + 0, mask=gm, other=float("-inf"))
        s_z = tl.load(base + 1, mask=gm, other=0.0)
        m_r = tl.load(base + 2, mask=gm, other=float("-inf"))
        s_r = tl.load(base + 3, mask=gm, other=0.0)
        acc = tl.load(base + 4, mask=gm, other=0.0)
    mz = tl.max(m_z, axis=0)
    mr = tl.max(m_r, axis=0)
    sh_z = tl.where(mz == float("-inf"), 0.0, mz)
    sh_r = tl.where(mr == float("-inf"), 0.0, mr)
    # a_g = exp(m_g - M): 0 for a chunk at -inf (its sums are 0 too)
    a_z = tl.where(m_z == float("-inf"), 0.0, tl.exp2((m_z - sh_z) * LOG2E))
    a_r = tl.where(m_r == float("-inf"), 0.0, tl.exp2((m_r - sh_r) * LOG2E))
    S_z = tl.sum(a_z * s_z, axis=0)
    S_r = tl.sum(a_r * s_r, axis=0)
    if KL == 1:
        ACC = tl.sum(a_z * acc, axis=0)
    else:
        ACC = tl.sum(a_r * acc, axis=0)
    return sh_z, S_z, sh_r, S_r, ACC


@triton.jit
def _kl_of(sh_z, S_z, sh_r, S_r, ACC, KL: tl.constexpr):
    """``(KL, lse_z, lse_r, sum_j p_j (z_j - r_j))`` from the combined statistics; the KL from
    the differences ``sh_z - sh_r`` and ``ln S_z - ln S_r``, as in the per-row kernel."""
    lse_z = sh_z + tl.log2(S_z) * LN2
    lse_r = sh_r + tl.log2(S_r) * LN2
    d_lse = (sh_z - sh_r) + (tl.log2(S_z) - tl.log2(S_r)) * LN2
    if KL == 1:
        mean_d = ACC / S_z
        kl = mean_d - d_lse
    else:
        mean_d = 0.0
        kl = ACC / S_r + d_lse
    return kl, lse_z, lse_r, mean_d


@triton.jit
def _kl_chunk_grad(z, r, weight, kl, lse_z, lse_r, mean_d, KL: tl.constexpr):
    """The chunk's gradient from registers: reverse ``w p ((z - r) - sum p (z - r))`` (NaN
    everywhere when the KL is NaN, as the per-row kernel), forward ``w (p - q)``."""
    p = tl.exp2((z - lse_z) * LOG2E)
    if KL == 1:
        g = (weight * p) * (tl.maximum(z - r, NEG_BIG) - mean_d)
        g = tl.where(kl != kl, float("nan"), g)
    else:
        g = weight * (p - tl.exp2((r - lse_r) * LOG2E))
    return g


@triton.jit(do_not_specialize=["pid_base", "P", "R"])  # sized at launch: one compiled variant
def _split_kernel(
    z_ptr,  # [B, T, V] logits (fp32 / bf16 / fp16), strides (stride_zb, stride_zt, 1)
    r_ptr,  # [B, T, V] reference logits, same dtype, strides (stride_rb, stride_rt, 1)
    order_ptr,  # [N] int32: rows in launch order (initiating, common, the rest)
    counts_ptr,  # [2] int32: the number of initiating rows, of KL rows (0 without KL)
    w_ptr,  # [N] fp32 row weights (as the per-row kernel)
    loss_ptr,  # [N] fp32 out: the KL rows' and the zero rows' weighted losses
    g_ptr,  # [N, V] out, contiguous, logits' dtype (when WRITE_GRAD)
    rec_ptr,  # [N, GP, 8] fp32 scratch: one record per chunk of a KL row
    cnt_ptr,  # [N] int32, zeros: arrivals per KL row
    N, T, V,
    stride_zb, stride_zt, stride_rb, stride_rt,
    pid_base,  # added to the program id (0, or a test's launch of one program at a time)
    P,  # programs in the grid, R * G
    R,  # rows per round
    KL: tl.constexpr,  # 0 none (every split row is a zero row), 1 reverse, 2 forward
    WRITE_GRAD: tl.constexpr,
    CHUNK: tl.constexpr,  # columns per program (power of two)
    G: tl.constexpr,  # chunks per row, cdiv(V, CHUNK)
    GP: tl.constexpr,  # next power of two >= G (the records' tile)
    CG: tl.constexpr,  # read the records with .cg (compiled); plain loads under the interpreter
):
    pid = tl.program_id(0) + pid_base
    chunk = pid % G
    slot = pid // G
    first = tl.load(counts_ptr)
    n_kl = tl.load(counts_ptr + 1)
    offs = tl.arange(0, CHUNK)
    cols = chunk * CHUNK + offs
    valid = cols < V
    if KL != 0:
        n_rounds = (n_kl + R - 1) // R
        for rnd in range(0, n_rounds):  # LOOP: split_kl
            pos = rnd * R + slot
            if pos < n_kl:
                row = tl.load(order_ptr + first + pos).to(tl.int64)
                b = row // T
                t = row - b * T
                z = tl.load(z_ptr + b * stride_zb + t * stride_zt + cols, mask=valid,
                            other=float("-inf")).to(tl.float32)
                r = tl.load(r_ptr + b * stride_rb + t * stride_rt + cols, mask=valid,
                            other=float("-inf")).to(tl.float32)
                m_z, s_z, m_r, s_r, acc = _chunk_stats(z, r, KL)
                rec = rec_ptr + row * (GP * 8)
                mine = rec + chunk * 8
                tl.store(mine + 0, m_z)
                tl.store(mine + 1, s_z)
                tl.store(mine + 2, m_r)
                tl.store(mine + 3, s_r)
                tl.store(mine + 4, acc)
                # the exchange: every record store issued, then arrive (release: the stores
                # are visible before the count), then wait for the row's G arrivals (acquire)
                tl.debug_barrier()
                seen = tl.atomic_add(cnt_ptr + row, 1, sem="acq_rel", scope="gpu") + 1
                while seen < G:
                    seen = tl.atomic_add(cnt_ptr + row, 0, sem="acquire", scope="gpu")
                tl.debug_barrier()
                sh_z, S_z, sh_r, S_r, ACC = _combine(rec, G, GP, KL, CG)
                kl, lse_z, lse_r, mean_d = _kl_of(sh_z, S_z, sh_r, S_r, ACC, KL)
                weight = tl.load(w_ptr + row)
                if WRITE_GRAD:
                    g = _kl_chunk_grad(z, r, weight, kl, lse_z, lse_r, mean_d, KL)
                    tl.store(g_ptr + row * V + cols, g.to(g_ptr.dtype.element_ty), mask=valid)
                if chunk == 0:
                    tl.store(loss_ptr + row, weight * kl)
    # rows without a loss: any program may take any chunk, no exchange
    zero = tl.zeros([CHUNK], dtype=g_ptr.dtype.element_ty)
    n_zero = N - first - n_kl
    for i in range(pid, n_zero * G, P):  # LOOP: split_zero
        row = tl.load(order_ptr + first + n_kl + i // G).to(tl.int64)
        c = i % G
        if WRITE_GRAD:
            zc = c * CHUNK + offs
            tl.store(g_ptr + row * V + zc, zero, mask=zc < V)
        if c == 0:
            tl.store(loss_ptr + row, 0.0)


def default_chunk(v: int) -> int:
    """Columns per program: 8192 (32 entries of z and of r per thread at 8 warps, held in
    registers), never more than the row needs. At 8192 the kernel compiles to 128 registers
    without spills (bf16, sm_90a, triton 3.6 and 3.9), so two programs share an SM and one
    streams while the other waits in an exchange (``docs/kernels.md``, section 3); 16384
    takes 178-186 registers, one program per SM."""
    return min(triton.next_power_of_2(max(v, 16)), 8192)


SPLIT_ENV = "PALU_TRITON_SPLIT"
"""``1``: the split path is the default where it applies (below); ``0`` or unset: it runs only
when asked (``split=True``). Opt-in until it has run on a GPU: this kernel has only run in the
threaded interpreter test (``tests/test_triton_split.py``), and a wrong synchronisation on a
real GPU would hang or answer wrongly. ``bench/gpu.sh`` runs its CUDA tests and times it
against the per-row path; flip the default once those pass."""


def default_split(z: torch.Tensor) -> bool:
    """Whether the split path runs when ``split`` is None: only with ``PALU_TRITON_SPLIT=1``
    (:data:`SPLIT_ENV`), and then only on compiled CUDA (the interpreter cannot run programs
    that wait for each other) for rows of at least ``SPLIT_MIN_ROW_BYTES`` (see there)."""
    return (os.environ.get(SPLIT_ENV, "0") == "1" and z.device.type == "cuda"
            and not interpreting() and z.shape[-1] * z.element_size() >= SPLIT_MIN_ROW_BYTES)


def _occupancy(compiled, num_warps: int, props) -> int:
    """Programs of ``compiled`` one SM holds at once: registers (allocated per warp in units
    of 256), shared memory and the thread limit; 1 when the compiled kernel does not say."""
    init = getattr(compiled, "_init_handles", None)
    if init is not None:  # n_regs is known once the binary is loaded
        init()
    regs = getattr(compiled, "n_regs", None)
    if not regs:
        return 1
    per_warp = -(-regs * 32 // 256) * 256
    by_regs = getattr(props, "regs_per_multiprocessor", 65536) // (per_warp * num_warps)
    shared = getattr(getattr(compiled, "metadata", None), "shared", 0) or 0
    smem = getattr(props, "shared_memory_per_multiprocessor", 0) or 0
    by_smem = smem // shared if shared and smem else by_regs
    by_threads = getattr(props, "max_threads_per_multi_processor", 2048) // (32 * num_warps)
    return max(1, min(by_regs, by_smem, by_threads))


_GRID_SIZES: dict = {}  # (device, dtype, constexprs) -> co-resident programs


def launch_grid(kernel, programs, args: tuple, consts: dict, device: torch.device) -> None:
    """Launch ``kernel`` on a persistent grid of ``programs`` programs (``programs`` None:
    sized here from the SM count and the compiled kernel's occupancy), cooperatively, so that
    a grid that cannot be co-resident fails to launch rather than deadlocks. ``args`` ends
    with ``(pid_base, P, R)``, which this fills. Tests replace this
    function (the interpreter runs programs one after another: a spin would never end)."""
    if interpreting():
        raise RuntimeError("the split-row kernel's programs wait for each other, and the "
                           "Triton interpreter runs them one after another; it runs on CUDA "
                           "(tests/test_triton_split.py launches it from threads)")
    g, nw = consts["G"], consts["num_warps"]
    if programs is None:  # sized once per device, dtype and compiled variant (host work)
        key = (device, args[0].dtype, tuple(sorted(consts.items())))
        programs = _GRID_SIZES.get(key)
        if programs is None:
            props = torch.cuda.get_device_properties(device)
            compiled = kernel.warmup(*args, 0, g, 1, grid=(1,), launch_cooperative_grid=True,
                                     **consts)
            programs = _GRID_SIZES[key] = (props.multi_processor_count
                                           * _occupancy(compiled, nw, props))
    rows = max(1, programs // g)
    kernel[(rows * g,)](*args, 0, rows * g, rows, launch_cooperative_grid=True, **consts)


def launch_split(z, r, order, kind, w, loss, grad, kl_code: int, *, chunk: int | None = None,
                 num_warps: int | None = None, programs: int | None = None) -> None:
    """Run the split-row kernel over every row that is not initiating (the KL rows with
    ``kl_code`` 1 / 2, the zero rows; ``kl_code`` 0: every such row is a zero row), writing
    their losses into ``loss`` and gradient rows into ``grad`` (None: no gradient). ``order``
    is ``row_order(kind)``. ``chunk``, ``num_warps`` and ``programs`` override the columns
    per program, the warps and the grid (tests, tuning)."""
    _, t, v = z.shape
    n = kind.numel()
    ch = chunk or default_chunk(v)
    g = triton.cdiv(v, ch)
    gp = triton.next_power_of_2(g)
    # device-side counts: no host sync
    counts = torch.stack([(kind == 1).sum(), (kind == 2).sum() if kl_code else
                          kind.new_zeros(())]).to(torch.int32)
    rec = torch.empty(n * gp * NREC, dtype=torch.float32, device=z.device)
    cnt = torch.zeros(n, dtype=torch.int32, device=z.device)
    args = (z, r, order, counts, w, loss, grad if grad is not None else loss, rec, cnt, n, t, v,
            z.stride(0), z.stride(1), r.stride(0), r.stride(1))
    consts = dict(KL=kl_code, WRITE_GRAD=grad is not None, CHUNK=ch, G=g, GP=gp,
                  CG=not interpreting(), num_warps=num_warps or (8 if ch >= 2048 else 4))
    with device_guard(z):
        launch_grid(_split_kernel, programs, args, consts, z.device)
