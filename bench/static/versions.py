"""The kernel versions the static model compares (``VERSIONS``): for each, where its
``palu_kernels/`` comes from, its sass_profile jobs (kernel, signature, constexprs, warps; loops
by role with elements per iteration) and its pass table, hand-written from the kernel source."""

from __future__ import annotations

from .model import Pass

OLD_REF = "03fcec1"  # today's kernels: radix select over int64 keys, scale_rows backward

# Each loop of a job: role -> {"elements": elements one program handles per iteration of the
# source loop (an int, or the name of a constexpr), "tensors": [N, V] tensors it loads +
# stores per element (to spot a loop that ptxas unrolled), "fallback": "file.py:LINE" of its
# `for` when the source has no `# LOOP: role` marker (None: the marker is required),
# optionally "unroll": the unroll factor, stated for a loop that moves more than its tensors}.

# _palu_fwd_kernel as the JIT specialises it for the headline case: bf16 [8192, 128256]
# contiguous rows (V and the row strides divisible by 16, column strides 1), TARGET 0 ("mean",
# the default), KL 1 (reverse, the default), K = 5000 < V, gradient written (logits require
# grad). K is `do_not_specialize`: a plain i32. Tiles as palu_forward picks them at V = 128256:
# default_block_v -> 2048 (num_warps 8), default_select_block(V, 4) -> 16384 >> 4 = 1024.
_FWD_JOB_OLD = {
    "kernel": "palu_kernels.ops.palu_loss:_palu_fwd_kernel",
    "signature": {"z_ptr": "*bf16", "r_ptr": "*bf16", "kind_ptr": "*i32", "w_ptr": "*fp32",
                  "loss_ptr": "*fp32", "g_ptr": "*bf16", "V": "i32", "K": "i32",
                  "target_value": "fp32", "stride_zn": "i32", "stride_rn": "i32"},
    "constexprs": {"stride_zv": 1, "stride_rv": 1, "TARGET": 0, "KL": 1, "TOPK_ALL": False,
                   "WRITE_GRAD": True, "BLOCK_V": 2048, "BLOCK_SEL": 1024, "RADIX_BITS": 4},
    "num_warps": 8,
    "num_stages": None,
    "divisible_by_16": ["z_ptr", "r_ptr", "kind_ptr", "w_ptr", "loss_ptr", "g_ptr", "V",
                        "stride_zn", "stride_rn"],
    "loops": {
        "select": {"elements": "BLOCK_SEL", "tensors": 1, "fallback": "topk.py:68"},
        "local_a": {"elements": "BLOCK_V", "tensors": 2, "fallback": "palu_loss.py:97"},
        "local_b": {"elements": "BLOCK_V", "tensors": 3, "fallback": "palu_loss.py:125"},
        "kl_stream": {"elements": "BLOCK_V", "tensors": 2, "fallback": "palu_loss.py:175"},
        "kl_grad": {"elements": "BLOCK_V", "tensors": 3, "fallback": "palu_loss.py:234"},
        "zero_fill": {"elements": "BLOCK_V", "tensors": 1, "fallback": "palu_loss.py:291"},
    },
}

# _scale_rows_kernel(grad, grad_output) of the trainer's path: reduction="none", so the
# scale is one fp32 per row (stride_s = 1, which the JIT turns into a constexpr).
_BWD_JOB_OLD = {
    "kernel": "palu_kernels.ops.palu_loss:_scale_rows_kernel",
    "signature": {"g_ptr": "*bf16", "s_ptr": "*fp32", "out_ptr": "*bf16", "V": "i32"},
    "constexprs": {"stride_s": 1, "BLOCK_V": 2048},
    "num_warps": 8,
    "num_stages": None,
    "divisible_by_16": ["g_ptr", "s_ptr", "out_ptr", "V"],
    "loops": {"scale": {"elements": "BLOCK_V", "tensors": 2, "fallback": "palu_loss.py:358"}},
}

# Pass table of the old kernels (03fcec1), headline case. "grad" is the [N, V] gradient the
# forward writes, "out" the backward's new [N, V] tensor.
#
# Backward of every kind: the trainer calls the loss with reduction="none" and sums the rows
# with weights, so grad_output holds one value per row, not exactly 1, and
# _PALUTriton.backward runs scale_rows(grad, grad_output): _scale_rows_kernel, one program
# per row of all N rows (rows without loss included), reads the forward's gradient row and
# writes a new one (palu_loss.py:358). That read is a first read for the L2 model: the
# backward starts after the whole forward, whose 2.1 GB gradient is 40x the L2.
_SCALE_OLD = Pass("scale", reads=("grad",), writes=("out",),
                  why="scale_rows: out-of-place grad * grad_output[row], every row")

_OLD_PASSES = {
    # kind 1 -> _local_row with TARGET 0, K < V, WRITE_GRAD.
    "initiating": {
        "forward": [
            # topk_search: `for level in range(32 // RADIX_BITS)` is 8 levels at RADIX_BITS 4,
            # each a whole `for start in range(0, V, BLOCK)` pass (topk.py:68) loading r only.
            # Level 0 is the row's first touch of r.
            Pass("select", reads=("r",), why="radix level 0 of 8: first read of r"),
            # Levels 1..7 read the same r row again; between two touches of r[j] the row has
            # streamed its r row once: reuse 1 row.
            Pass("select", repeat=7, rereads=("r",), reuse=1.0,
                 why="radix levels 1-7 re-read r"),
            # Pass A (palu_loss.py:97): "mean" needs sum_S z too (NEED_S_SUM), so it loads z
            # (first touch) and r (membership in S). Between the last level's touch of r[j]
            # and pass A's the row streams r[j:], then z[:j] and r[:j]: 1 + j/V rows, 1.5 on
            # average over j.
            Pass("local_a", reads=("z",), rereads=("r",), reuse=1.5,
                 why="pass A: mean of z and sum of z over S"),
            # Pass B (palu_loss.py:125): z and r again, after pass A's z and r (reuse 2 rows),
            # and the gradient row written (WRITE_GRAD).
            Pass("local_b", rereads=("z", "r"), reuse=2.0, writes=("grad",),
                 why="pass B: loss and gradient"),
        ],
        "backward": [_SCALE_OLD],
    },
    # kind 2 -> _kl_row with KL 1 (reverse), WRITE_GRAD.
    "common": {
        "forward": [
            # Pass 1 (palu_loss.py:175): online softmax of z and r, first touch of both.
            Pass("kl_stream", reads=("z", "r"), why="KL pass 1: online softmax of z and r"),
            # Pass 2 (palu_loss.py:234, only with WRITE_GRAD): z and r again after pass 1's
            # z and r (reuse 2 rows), the gradient row written.
            Pass("kl_grad", rereads=("z", "r"), reuse=2.0, writes=("grad",),
                 why="KL pass 2: p, q and the gradient"),
        ],
        "backward": [_SCALE_OLD],
    },
    # kind 0: z and r never read; with WRITE_GRAD a zero gradient row (palu_loss.py:291).
    "other": {
        "forward": [Pass("zero_fill", writes=("grad",), why="no loss: a zero gradient row")],
        "backward": [_SCALE_OLD],
    },
}

def _triton_version() -> tuple:
    """(major, minor) of the installed triton, without importing it (0, 0 if absent)."""
    from importlib import metadata

    try:
        parts = metadata.version("triton").split(".")[:2]
    except metadata.PackageNotFoundError:
        return (0, 0)
    return tuple(int("".join(c for c in p if c.isdigit()) or 0) for p in parts)


# The top-K selection the working tree's kernel runs by default under the installed triton
# (palu_kernels.backends.triton_topk.default_select_method): "bracket" before 3.9
# (tl.histogram lowers to warp ballots there), "radix" from 3.9 (shared-memory atomics).
SELECT_NEW = "bracket" if _triton_version() < (3, 9) else "radix"

# _palu_fwd_kernel of the working tree, as the JIT specialises it for the headline case:
# bf16 [8192, 128256] rows given as [1, 8192, 128256] (T = N; every stride divisible by 16),
# TARGET 0, KL 1, K < V, gradient written. palu_forward picks BLOCK_V = default_block_v(V) =
# 8192 (num_warps 8), BLOCK_SEL = default_select_block(V) = 4096, KEY_BITS 16 (bf16 keys),
# VEC 8 (16-byte vectors of bf16, rows of z, r and the gradient aligned alike: G_HINT),
# NUM_STAGES 3, BRACKET as SELECT_NEW (RC 32 scratch slots per lane). Loops are found by
# their `# LOOP:` markers only: `select` is the bracket's counting pass (compiled only with
# BRACKET), `select_radix` the radix select's histogram passes (the main path with
# BRACKET False, the rare fallback with BRACKET True: profiled, in no pass of the table).
_FWD_JOB_NEW = {
    "kernel": "palu_kernels.backends.triton_loss:_palu_fwd_kernel",
    "signature": {"z_ptr": "*bf16", "r_ptr": "*bf16", "order_ptr": "*i32", "kind_ptr": "*i32",
                  "w_ptr": "*fp32", "loss_ptr": "*fp32", "g_ptr": "*bf16", "T": "i32",
                  "V": "i32", "K": "i32", "target_value": "fp32", "stride_zb": "i32",
                  "stride_zt": "i32", "stride_rb": "i32", "stride_rt": "i32"},
    "constexprs": {"TARGET": 0, "KL": 1, "TOPK_ALL": False, "WRITE_GRAD": True,
                   "KEY_BITS": 16, "BLOCK_V": 8192, "BLOCK_SEL": 4096, "VEC": 8,
                   "G_HINT": True, "NUM_STAGES": 3, "BRACKET": SELECT_NEW == "bracket",
                   "RC": 32, "LOCAL_ONLY": False},
    "num_warps": 8,
    "num_stages": None,
    "divisible_by_16": ["z_ptr", "r_ptr", "order_ptr", "kind_ptr", "w_ptr", "loss_ptr",
                        "g_ptr", "T", "V", "stride_zb", "stride_zt", "stride_rb", "stride_rt"],
    "loops": {
        # the bracket pass loads r (2 B) and has a predicated 4-byte scatter store of a
        # candidate's column per element (static: every element's store is an instruction)
        **({"select": {"elements": "BLOCK_SEL", "tensors": 3, "fallback": None}}
           if SELECT_NEW == "bracket" else {}),
        "select_radix": {"elements": "BLOCK_SEL", "tensors": 1, "fallback": None},
        "local_a": {"elements": "BLOCK_V", "tensors": 2, "fallback": None},
        "local_b": {"elements": "BLOCK_V", "tensors": 3, "fallback": None},
        "kl_stream": {"elements": "BLOCK_V", "tensors": 2, "fallback": None},
        "kl_grad": {"elements": "BLOCK_V", "tensors": 3, "fallback": None},
        "zero_fill": {"elements": "BLOCK_V", "tensors": 1, "fallback": None},
    },
}

# _scale_rows_kernel (in place) of the working tree: one program per row; a row whose
# grad_output is exactly 1 returns before its loop. Per-row scale (stride_s = 1).
_BWD_JOB_NEW = {
    "kernel": "palu_kernels.backends.triton_loss:_scale_rows_kernel",
    "signature": {"g_ptr": "*bf16", "s_ptr": "*fp32", "kind_ptr": "*i32", "V": "i32"},
    "constexprs": {"stride_s": 1, "BLOCK_V": 8192},
    "num_warps": 8,
    "num_stages": None,
    "divisible_by_16": ["g_ptr", "s_ptr", "kind_ptr", "V"],
    "loops": {"scale": {"elements": "BLOCK_V", "tensors": 2, "fallback": None}},
}

# Pass table of the working tree's kernels, headline case (bf16, K < V, no tie across the
# boundary, so the rare j_last pass of backends/triton_topk.py does not run). Rows are
# launched through a device-built order, initiating rows first, so the rows in flight
# together are mostly of one kind; the L2 share per row is L2 / (132 rows in flight x one
# 256 KB row) = 1.55 rows.
# Consecutive passes over a row alternate direction (reverse=True on the second of a pair):
# the tiles read last are re-read first.
#
# Backward: the trainer passes its window weights in the forward (weights=) and sums the
# rows, so grad_output is exactly 1 and _scale_rows_kernel returns at once on every row:
# no traffic ("new"). With grad_output != 1 (fp16 loss scaling, several processes,
# reduction="none" with an outside weighting) it scales the saved gradient in place: read
# and write one gradient row for every loss-carrying row; rows without loss hold zeros and
# are skipped ("new_scaled").
_SCALE_NEW = Pass("scale", rereads=("grad",), l2_hit=0.0, writes=("grad",),
                  why="in-place grad *= grad_output[row] (grad_output != 1)")

# The initiating rows' selection passes over r, by method (SELECT_NEW picks one).
_SELECT_PASSES = {
    # topk_search_bracket (triton_topk.py): a sample of 4096 entries (16 KB of r, not counted),
    # then one counting pass (LOOP: select), last tile first: the first touch of r. The
    # candidates (about 3000 at K = 5000: 12 KB of scratch, in the row's gradient, written
    # and read back through L2) and the rare radix fallback (a bracket that misses, about
    # 1e-4 of the rows at 4 binomial deviations) are not counted.
    "bracket": [Pass("select", reads=("r",), why="bracket pass: count above, collect the "
                     "candidates (first read of r, reversed)")],
    # _radix_select, KEY_BITS 16: `for p in tl.static_range(2)` = 2 histogram passes over r
    # (LOOP: select_radix). Pass 0 is the first touch of r; pass 1 walks the row
    # backwards: reuse 1 row of r on average, 0..2 uniformly.
    "radix": [Pass("select_radix", reads=("r",),
                   why="selection pass 0 (high byte): first read of r"),
              Pass("select_radix", rereads=("r",), reuse=1.0, reverse=True,
                   why="selection pass 1 (low byte), reversed")],
}

_ROWWISE_PASSES = {
    "initiating": {
        "forward": [
            *_SELECT_PASSES[SELECT_NEW],
            # Pass A (LOOP: local_a), forward: z first touch; r[j] was touched by the last
            # selection pass, which walks backwards (bracket pass, or radix pass 1) and went
            # on to column 0 (j entries), and pass A streams z, r up to j: 3j/V
            # rows, uniform on 0..3 (average 1.5, reversed relative to pass 1).
            Pass("local_a", reads=("z",), rereads=("r",), reuse=1.5, reverse=True,
                 why="pass A: mean of z and sum of z over S"),
            # Pass B (LOOP: local_b), backwards: z and r after pass A's z and r, reuse
            # 4 (V - j)/V rows, uniform on 0..4 (average 2); the gradient row written.
            Pass("local_b", rereads=("z", "r"), reuse=2.0, reverse=True, writes=("grad",),
                 why="pass B: loss and gradient, reversed"),
        ],
        "backward": [],
    },
    "common": {
        "forward": [
            # Pass 1 (LOOP: kl_stream): first touch of z and r.
            Pass("kl_stream", reads=("z", "r"), why="KL pass 1: online softmax of z and r"),
            # Pass 2 (LOOP: kl_grad), backwards: reuse 4 (V - j)/V rows, average 2.
            Pass("kl_grad", rereads=("z", "r"), reuse=2.0, reverse=True, writes=("grad",),
                 why="KL pass 2: p, q and the gradient, reversed"),
        ],
        "backward": [],
    },
    "other": {
        "forward": [Pass("zero_fill", writes=("grad",), why="no loss: a zero gradient row")],
        "backward": [],
    },
}


# The split-row path (issue 23, item 1; palu_kernels/backends/triton_split.py), which the
# launcher takes on CUDA for rows of at least 128 KiB (the headline case): _palu_fwd_kernel
# with LOCAL_ONLY (the initiating rows; the others exit at once) and _split_kernel over the
# KL and zero rows, on a persistent grid. _split_kernel as launch_split specialises it: bf16,
# KL 1, gradient written, CHUNK = default_chunk(V) = 8192 columns per program, G = 16 chunks
# per row (GP 16), CG (records read through L2), 8 warps; pid_base, P and R are not
# specialised. Its loops: `split_kl` (one round: a chunk of a KL row loaded, its record,
# the exchange's spin as a nested loop, not charged, the combine, the chunk's gradient) and
# `split_zero` (one chunk of a zero row). Both move a little more than their tensors per
# element (the row index, the records, the loss), so their unroll factor is stated (1).
_FWD_JOB_LOCAL = {
    **_FWD_JOB_NEW,
    "constexprs": {**_FWD_JOB_NEW["constexprs"], "LOCAL_ONLY": True},
    "loops": {k: v for k, v in _FWD_JOB_NEW["loops"].items()
              if k in ("select", "select_radix", "local_a", "local_b")},
}
SPLIT_CHUNK = 8192
_SPLIT_JOB = {
    "kernel": "palu_kernels.backends.triton_split:_split_kernel",
    "signature": {"z_ptr": "*bf16", "r_ptr": "*bf16", "order_ptr": "*i32", "counts_ptr": "*i32",
                  "w_ptr": "*fp32", "loss_ptr": "*fp32", "g_ptr": "*bf16", "rec_ptr": "*fp32",
                  "cnt_ptr": "*i32", "N": "i32", "T": "i32", "V": "i32", "stride_zb": "i32",
                  "stride_zt": "i32", "stride_rb": "i32", "stride_rt": "i32", "pid_base": "i32",
                  "P": "i32", "R": "i32"},
    "constexprs": {"KL": 1, "WRITE_GRAD": True, "CHUNK": SPLIT_CHUNK,
                   "G": -(-128256 // SPLIT_CHUNK), "GP": 16, "CG": True},
    "num_warps": 8,
    "num_stages": None,
    "divisible_by_16": ["z_ptr", "r_ptr", "order_ptr", "counts_ptr", "w_ptr", "loss_ptr",
                        "g_ptr", "rec_ptr", "cnt_ptr", "N", "T", "V", "stride_zb", "stride_zt",
                        "stride_rb", "stride_rt"],
    "loops": {
        "split_kl": {"elements": "CHUNK", "tensors": 3, "fallback": None, "unroll": 1},
        "split_zero": {"elements": "CHUNK", "tensors": 1, "fallback": None, "unroll": 1},
    },
}

# Pass table of the split-row path, headline case: the initiating rows as in the per-row
# kernel; every other row read (KL) or written (zero) once.
_SPLIT_PASSES = {
    "initiating": _ROWWISE_PASSES["initiating"],
    "common": {
        # one round: z and r of the chunk loaded once (the only read), the gradient written
        # from registers after the exchange. Not in the time: the exchange itself (a round
        # trip of atomics through L2 and the skew between a row's programs, about 1 us per
        # round: ceil(4915 / R) rounds; with 2 programs per SM a wait overlaps the other
        # program's streaming), and the records (G x 32 B per row, through L2).
        "forward": [Pass("split_kl", reads=("z", "r"), writes=("grad",),
                         why="split row: z and r read once, exchange, gradient from registers")],
        "backward": [],
    },
    "other": {
        "forward": [Pass("split_zero", writes=("grad",),
                         why="no loss: a zero gradient row, chunk by chunk")],
        "backward": [],
    },
}
_SPLIT_PASSES_SCALED = {kind: {"forward": v["forward"],
                               "backward": [] if kind == "other" else [_SCALE_NEW]}
                        for kind, v in _SPLIT_PASSES.items()}

VERSIONS: dict = {
    "old": {
        "label": "the kernels before issue 11 (03fcec1)",
        "backward": "the trainer's path: reduction=\"none\", rows summed with weights, so a "
                    "per-row grad_output != 1 (out-of-place scale_rows)",
        "source": {"git_ref": OLD_REF},
        "jobs": {"forward": _FWD_JOB_OLD, "backward": _BWD_JOB_OLD},
        "passes": _OLD_PASSES,
    },
    "rowwise": {
        "label": "the working tree's per-row kernel alone, as it runs without the split path "
                 "(split=False, the interpreter, rows under 128 KiB; loops by their # LOOP: "
                 "markers)",
        "backward": "the trainer's path: window weights passed in the forward, rows summed, "
                    "so grad_output is 1 (the backward kernel returns at once)",
        "source": {"worktree": True},
        "jobs": {"forward": _FWD_JOB_NEW, "backward": _BWD_JOB_NEW},
        "passes": _ROWWISE_PASSES,
    },
    "new": {
        "label": "the working tree's kernels as the launcher runs them on CUDA at the headline "
                 "case: the per-row kernel for the initiating rows, the split-row kernel for "
                 "the others (loops by their # LOOP: markers)",
        "backward": "the trainer's path: window weights passed in the forward, rows summed, "
                    "so grad_output is 1 (the backward kernel returns at once)",
        "source": {"worktree": True},
        "jobs": {"forward": _FWD_JOB_LOCAL, "split": _SPLIT_JOB, "backward": _BWD_JOB_NEW},
        "passes": _SPLIT_PASSES,
    },
}
# the same kernels, backward with grad_output != 1: only the pass table differs
VERSIONS["new_scaled"] = {
    **VERSIONS["new"],
    "label": "the working tree's kernels (split path), backward with grad_output != 1 "
             "(in-place scale)",
    "backward": "grad_output != 1 per row (fp16 loss scaling, several processes, an outside "
                "weighting): in-place scale of the loss-carrying rows",
    "passes": _SPLIT_PASSES_SCALED,
}
