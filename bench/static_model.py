"""Static H100/H200 performance model of the fused PALU Triton kernels (model, not measured).

    python -m bench.static_model [--version old|new|new_scaled|both] [--machine h100|h200|both]
                                 [--out DIR]

No GPU is needed and nothing here is a measurement. For one kernel version (``VERSIONS``):

1. That version's ``palu_kernels/`` (a git ref, extracted with ``git archive``, or a snapshot
   of the working tree) goes to a temporary directory; a subprocess with that directory first
   on ``sys.path`` (so two versions never share one import of ``palu_kernels``) compiles its
   kernels for sm_90a with ``../shared/tools/sass_profile.py`` (triton's own ``ptxas`` and
   disassembler, no GPU) and returns the static profile.
2. The loops that matter are found by marker comments on the line of their ``for``
   (``# LOOP: select``, ``# LOOP: kl_stream``, ...), or, in versions written before the
   markers, by a line number (checked to be a ``for`` line). Per loop the report gives the
   SASS instructions per element and their mix, registers, spills, global access widths and
   sass_profile's issue-bound model, and whether the loop would be issue- or memory-bound.
3. A hand-written table per version (``passes``) says which loops each kind of row runs, over
   which tensors, how often, and which reads are second reads that may hit L2. With the
   issue-bound time per element of each loop it predicts, for each machine (``MACHINES``:
   H100 SXM and H200 SXM), the time of the forward and of forward+backward of the headline
   case (``CASE``) and the fraction of the HBM roofline.

The model (every figure it prints is a model, not a measurement)
-----------------------------------------------------------------
* Issue bound of a loop (sass_profile's model, its constants are read from the tool): a warp
  iteration of ``n`` SASS instructions, ``n_int`` integer and ``n_mufu`` MUFU ones, costs
  ``max(n, 2 n_int, 8 n_mufu)`` scheduler cycles; 132 SMs x 4 schedulers at 1.98 GHz. One
  element costs ``cycles / (132 * 4 * 1.98e9 * 32 * e)`` seconds of the whole GPU, ``e`` =
  elements per thread per iteration (unrolled iterations included, see ``unroll_factor``).
  Static counts: every instruction of a loop body once per iteration, all branch paths.
  One source loop that compiles to several SASS loops (``tl.static_range`` over the
  selection's digit passes) charges each pass its own SASS loop, in program order, when the
  pass table has as many passes of it in that phase (``loop_instances``); else its largest.
* HBM bytes of a pass over a row: first reads and writes in full; a re-read of data this row
  read before hits L2 with probability ``h = min(1, L2 / (P * reuse * row))``: ``P`` rows in
  flight (132 SMs x the kernel's resident programs per SM, from its registers), each streaming
  ``reuse`` rows of its own between the two touches of an element (all rows in flight are
  assumed to stream at the same rate and to share the L2 evenly; an LRU cache would do worse,
  hence the bounds printed with h = 0 and h = 1). L2: what PyTorch reported on the machines
  this project is lent, 50 MB on the H100 and 60 MB on the H200. The rows of the headline
  case are in a random order (the benchmark draws the kinds by a seeded permutation), so the
  rows in flight are a mix of every kind.
* Time of a pass: ``rows * max(HBM bytes / B, V * repeat * issue time per element)``, B the
  machine's HBM bandwidth (H100 3.35 TB/s, H200 4.8 TB/s; the chip, and so the issue bound, is
  the same), summed over passes and row kinds (no overlap between memory-bound and
  issue-bound work of different rows; the perfect-overlap bound ``max(sum bytes / B, sum
  issue)`` is printed too). Not modelled: work outside the loops (per-row set-up, reductions between
  passes), launch overhead, memory latency, L2 bandwidth, divergence, tail effects.
* Roofline: the minimum traffic of forward+backward with a dense [N, V] gradient is one read
  of ``z``, one read of ``r`` and one write of the gradient per loss-carrying row
  (``docs/spec.md``), plus one write of a zero gradient row per row without a loss (issue 23:
  those are unavoidable, and leaving them out capped a perfect kernel at 87.5% on the
  headline case); ideal time = that / B; fraction = ideal time / predicted time. The report
  also gives the fraction against the loss rows alone, the floor before issue 23.

Adding a version: an entry of ``VERSIONS`` names its source, its sass_profile jobs (kernel,
signature, constexprs, warps; loops by role with elements per iteration) and its pass table.
``tests/test_static_model.py`` covers the arithmetic; this script itself needs triton's NVIDIA
backend (ptxas) and takes a while, so it is not part of the test suite.
"""

from __future__ import annotations

import sys

if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    sys.path.pop(0)  # run as a script: bench/ must not shadow anything in the worker

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO.parent / "shared" / "tools"  # ../shared/tools from the repository root
SASS_PROFILE = TOOLS / "sass_profile.py"
OLD_REF = "03fcec1"  # today's kernels: radix select over int64 keys, scale_rows backward
KINDS = ("initiating", "common", "other")
PHASES = ("forward", "backward")
LOOP_MARKER = re.compile(r"#\s*LOOP:\s*([A-Za-z_]\w*)\s*$")
NOTE = "model, not measured"


class ModelError(Exception):
    """A one-line, user-facing error; ``lines`` is what the report had printed before it."""

    def __init__(self, msg: str, lines: list[str] | None = None):
        super().__init__(msg)
        self.lines = lines or []


# --------------------------------------------------------------------------------------------
# The machine, the headline case, the pass table
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Machine:
    """One GPU as the model sees it; the defaults are the H200 SXM of sass_profile.

    ``sms``, ``schedulers``, ``ghz`` and the integer / MUFU rates are the chip's (H100 and H200
    share the GH100 processor; sass_profile's constants replace them when it is loaded, see
    ``with_tool``); ``hbm_tbs`` and ``l2_bytes`` are the part's own (``MACHINES``).
    """

    sms: int = 132
    schedulers: int = 4
    ghz: float = 1.98
    hbm_tbs: float = 4.8
    int_cycles: int = 2  # integer pipe at half rate: 64 results/clock/SM
    mufu_cycles: int = 8  # MUFU: 16 results/clock/SM
    l2_bytes: int = 50 * 2**20  # not in sass_profile
    name: str = "H200"

    @property
    def hbm_bytes_per_s(self) -> float:
        return self.hbm_tbs * 1e12

    @property
    def label(self) -> str:
        return (f"{self.name}: {self.sms} SMs x {self.schedulers} schedulers at {self.ghz} GHz, "
                f"HBM {self.hbm_tbs} TB/s, L2 {self.l2_bytes / 2**20:.0f} MiB")

    @classmethod
    def from_tool(cls, consts: dict) -> "Machine":
        names = {"SMS": "sms", "SCHEDULERS": "schedulers", "GHZ": "ghz", "HBM_TBS": "hbm_tbs",
                 "INT_CYCLES": "int_cycles", "MUFU_CYCLES": "mufu_cycles"}
        return cls(**{names[k]: v for k, v in consts.items() if k in names})

    def with_tool(self, consts: dict) -> "Machine":
        """This part with sass_profile's chip constants (SMs, schedulers, clock, pipe rates);
        its HBM bandwidth and L2 stay its own."""
        names = {"SMS": "sms", "SCHEDULERS": "schedulers", "GHZ": "ghz",
                 "INT_CYCLES": "int_cycles", "MUFU_CYCLES": "mufu_cycles"}
        return replace(self, **{names[k]: v for k, v in consts.items() if k in names})


# The parts this project can be lent (docs: /work/.library/device/KINDS.md and H200.md).
# HBM: the datasheets' peaks (H100 SXM 80 GB HBM3 3.35 TB/s, H200 141 GB HBM3e 4.8 TB/s;
# a device-to-device copy reached about 3.0 and 4.3 TB/s here). L2: what PyTorch reported
# on those machines, 50 MB on the H100 and 60 MB on the H200. Both: 132 SMs, 1.98 GHz boost.
MACHINES = {
    "h100": Machine(hbm_tbs=3.35, l2_bytes=50 * 2**20, name="H100"),
    "h200": Machine(hbm_tbs=4.8, l2_bytes=60 * 2**20, name="H200"),
}


@dataclass(frozen=True)
class Case:
    """The headline case; rows of each kind rounded as ``bench.common.Case`` does."""

    rows: int = 8192
    vocab: int = 128256
    k: int = 5000
    dtype: str = "bf16"
    elem_size: int = 2
    init_frac: float = 0.1
    common_frac: float = 0.6

    def kind_rows(self) -> dict:
        n_init = round(self.rows * self.init_frac)
        n_common = min(round(self.rows * self.common_frac), self.rows - n_init)
        return {"initiating": n_init, "common": n_common, "other": self.rows - n_init - n_common}

    @property
    def row_bytes(self) -> int:
        """One row of one [N, V] tensor (z, r or a gradient)."""
        return self.vocab * self.elem_size

    @property
    def loss_min_bytes(self) -> int:
        """Read z, read r, write the gradient, once per loss-carrying row (the floor before
        issue 23, which left out the zero gradient rows)."""
        n = self.kind_rows()
        return 3 * (n["initiating"] + n["common"]) * self.row_bytes

    @property
    def min_bytes(self) -> int:
        """The floor of a dense gradient: ``loss_min_bytes`` plus one write of a zero gradient
        row for every row without a loss (the gradient is [N, V]: those rows are written
        too, whatever the kernel)."""
        return self.loss_min_bytes + self.kind_rows()["other"] * self.row_bytes


CASE = Case()


@dataclass(frozen=True)
class Pass:
    """One loop's pass(es) over one row: which tensors it reads first, re-reads and writes.

    ``repeat``: how many times the loop runs over the whole row. ``reads``: tensors this row
    reads for the first time (from HBM). ``rereads``: tensors this row read before (L2 or
    HBM); ``reuse``: rows of its own traffic between the two touches of an element (the L2
    model's reuse distance), or ``l2_hit`` to state the hit fraction outright. ``writes``:
    tensors written. Each tensor is one row of ``V`` elements of the kernel's dtype.
    """

    loop: str
    why: str
    repeat: int = 1
    reads: tuple = ()
    rereads: tuple = ()
    reuse: float = 0.0
    writes: tuple = ()
    l2_hit: float | None = None
    reverse: bool = False


def l2_hit_fraction(p: Pass, rows_in_flight: int, row_bytes: int, l2_bytes: int) -> float:
    """Fraction of ``p``'s re-reads served by L2 (see the module docstring).

    ``reverse``: the pass walks the row in the opposite direction to the pass before it, so
    the reuse distance of an element grows from 0 (the tile read last is needed first) to
    twice the average ``reuse``, uniformly; an element hits when its distance fits in the
    row's share of the L2 (``C = L2 / (P * row)`` rows): ``h = min(1, C / (2 * reuse))``.
    """
    if p.l2_hit is not None:
        return p.l2_hit
    if not p.rereads or p.reuse <= 0:
        return 0.0
    share = l2_bytes / (rows_in_flight * row_bytes)
    if p.reverse:
        return min(1.0, share / (2.0 * p.reuse))
    return min(1.0, share / p.reuse)


# --------------------------------------------------------------------------------------------
# Versions
# --------------------------------------------------------------------------------------------
# Each loop of a job: role -> {"elements": elements one program handles per iteration of the
# source loop (an int, or the name of a constexpr), "tensors": [N, V] tensors it loads +
# stores per element (to spot a loop that ptxas unrolled), "fallback": "file.py:LINE" of its
# `for` when the source has no `# LOOP: role` marker (None: the marker is required)}.

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
# (palu_kernels.ops.topk.default_select_method): "bracket" before 3.9 (tl.histogram lowers
# to warp ballots there), "radix" from 3.9 (shared-memory atomics).
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
    "kernel": "palu_kernels.ops.palu_loss:_palu_fwd_kernel",
    "signature": {"z_ptr": "*bf16", "r_ptr": "*bf16", "order_ptr": "*i32", "kind_ptr": "*i32",
                  "w_ptr": "*fp32", "loss_ptr": "*fp32", "g_ptr": "*bf16", "T": "i32",
                  "V": "i32", "K": "i32", "target_value": "fp32", "stride_zb": "i32",
                  "stride_zt": "i32", "stride_rb": "i32", "stride_rt": "i32"},
    "constexprs": {"TARGET": 0, "KL": 1, "TOPK_ALL": False, "WRITE_GRAD": True,
                   "KEY_BITS": 16, "BLOCK_V": 8192, "BLOCK_SEL": 4096, "VEC": 8,
                   "G_HINT": True, "NUM_STAGES": 3, "BRACKET": SELECT_NEW == "bracket",
                   "RC": 32},
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
    "kernel": "palu_kernels.ops.palu_loss:_scale_rows_kernel",
    "signature": {"g_ptr": "*bf16", "s_ptr": "*fp32", "kind_ptr": "*i32", "V": "i32"},
    "constexprs": {"stride_s": 1, "BLOCK_V": 8192},
    "num_warps": 8,
    "num_stages": None,
    "divisible_by_16": ["g_ptr", "s_ptr", "kind_ptr", "V"],
    "loops": {"scale": {"elements": "BLOCK_V", "tensors": 2, "fallback": None}},
}

# Pass table of the working tree's kernels, headline case (bf16, K < V, no tie across the
# boundary, so the rare j_last pass of ops/topk.py does not run). Rows are launched through
# a device-built order, initiating rows first, so the rows in flight together are mostly of
# one kind; the L2 share per row is L2 / (132 rows in flight x one 256 KB row) = 1.55 rows.
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
    # topk_search_bracket (topk.py): a sample of 4096 entries (16 KB of r, not counted),
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

_NEW_PASSES = {
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
_NEW_PASSES_SCALED = {kind: {"forward": v["forward"],
                             "backward": [] if kind == "other" else [_SCALE_NEW]}
                      for kind, v in _NEW_PASSES.items()}

VERSIONS: dict = {
    "old": {
        "label": "the kernels before issue 11 (03fcec1)",
        "backward": "the trainer's path: reduction=\"none\", rows summed with weights, so a "
                    "per-row grad_output != 1 (out-of-place scale_rows)",
        "source": {"git_ref": OLD_REF},
        "jobs": {"forward": _FWD_JOB_OLD, "backward": _BWD_JOB_OLD},
        "passes": _OLD_PASSES,
    },
    "new": {
        "label": "the working tree's kernels (loops by their # LOOP: markers)",
        "backward": "the trainer's path: window weights passed in the forward, rows summed, "
                    "so grad_output is 1 (the backward kernel returns at once)",
        "source": {"worktree": True},
        "jobs": {"forward": _FWD_JOB_NEW, "backward": _BWD_JOB_NEW},
        "passes": _NEW_PASSES,
    },
}
# the same kernels, backward with grad_output != 1: only the pass table differs
VERSIONS["new_scaled"] = {
    **VERSIONS["new"],
    "label": "the working tree's kernels, backward with grad_output != 1 (in-place scale)",
    "backward": "grad_output != 1 per row (fp16 loss scaling, several processes, an outside "
                "weighting): in-place scale of the loss-carrying rows",
    "passes": _NEW_PASSES_SCALED,
}


# --------------------------------------------------------------------------------------------
# Pure arithmetic (tested in tests/test_static_model.py)
# --------------------------------------------------------------------------------------------

def issue_cycles(instructions: int, n_int: int, n_mufu: int, m: Machine) -> tuple[int, str]:
    """Scheduler cycles of one warp iteration and the term that sets them (sass_profile's)."""
    terms = {"issue": instructions, "int": m.int_cycles * n_int, "MUFU": m.mufu_cycles * n_mufu}
    bound = max(terms, key=terms.get)
    return terms[bound], bound


def issue_seconds_per_element(instructions: int, n_int: int, n_mufu: int,
                              elements_per_thread: float, m: Machine) -> float:
    """Whole-GPU issue-bound seconds per element of a loop (``e`` elements/thread/iteration)."""
    cycles, _ = issue_cycles(instructions, n_int, n_mufu, m)
    return cycles / (m.sms * m.schedulers * m.ghz * 1e9 * 32 * elements_per_thread)


def unroll_factor(global_bytes_per_thread: int, elements_per_thread: float,
                  bytes_per_element: float) -> int:
    """How many source iterations one SASS iteration of a loop covers (ptxas unrolling).

    The loop's global loads + stores per thread per SASS iteration against what one source
    iteration moves (elements per thread x bytes per element); a loop without global
    accesses counts as not unrolled. Raises ModelError when the ratio is not a whole number.
    """
    expected = elements_per_thread * bytes_per_element
    if global_bytes_per_thread <= 0 or expected <= 0:
        return 1
    ratio = global_bytes_per_thread / expected
    if ratio < 0.95 or abs(ratio - round(ratio)) > 0.05 * round(ratio):
        raise ModelError(f"{global_bytes_per_thread} B per thread per iteration is not a whole "
                         f"multiple of the {expected:g} B one source iteration moves")
    return round(ratio)


def loop_instances(passes: list, loops: dict) -> list:
    """The loop figures that charge each pass of one row kind and phase, in order.

    A role whose source ``for`` compiles to several SASS loops (``tl.static_range`` unrolls
    one source loop into one SASS loop per pass: the selection's digit passes) lists them in
    ``loops[role]["instances"]``, in program order. When the phase has exactly as many passes
    of that role as there are instances, the j-th pass is charged the j-th loop's own cost;
    otherwise (a remainder loop beside an unrolled one, a run-time loop over the passes)
    every pass is charged the role's main loop, ``loops[role]`` itself.
    """
    count: dict = {}
    for p in passes:
        count[p.loop] = count.get(p.loop, 0) + 1
    seen: dict = {}
    out = []
    for p in passes:
        lp = loops[p.loop]
        inst = lp.get("instances") or []
        j = seen.get(p.loop, 0)
        seen[p.loop] = j + 1
        out.append({**lp, **inst[j]} if len(inst) > 1 and len(inst) == count[p.loop] else lp)
    return out


def predict(case: Case, m: Machine, loops: dict, passes: dict, l2_hit: float | None = None):
    """Predicted time of each pass, phase and the whole, for ``case``.

    ``loops``: role -> {"s_per_element": issue-bound seconds per element (whole GPU),
    "rows_in_flight": rows resident on the GPU when that loop's kernel runs, and optionally
    "instances": [{"s_per_element", "label"}...], one per SASS loop of the role (see
    ``loop_instances``)}. ``passes``: the version's pass table. ``l2_hit`` overrides every
    re-read's hit fraction (the bounds). Returns {"passes": [...], "phase_s": {...},
    "total_s", "overlap_s", "min_bytes" (the dense floor), "loss_min_bytes", "ideal_s",
    "roofline" (against the dense floor), "loss_roofline" (against the loss rows' floor
    alone), "forward_roofline"}.
    """
    check_passes(passes, loops)
    rows_of = case.kind_rows()
    out, phase_s = [], dict.fromkeys(PHASES, 0.0)
    sum_bytes, sum_issue = 0.0, 0.0
    for kind in KINDS:
        for phase in PHASES:
            lst = passes[kind][phase]
            for p, lp in zip(lst, loop_instances(lst, loops)):
                h = l2_hit if (l2_hit is not None and p.rereads) else l2_hit_fraction(
                    p, lp["rows_in_flight"], case.row_bytes, m.l2_bytes)
                per_row = p.repeat * case.row_bytes * (
                    len(p.reads) + len(p.rereads) * (1.0 - h) + len(p.writes))
                n = rows_of[kind]
                hbm = n * per_row
                mem_s = hbm / m.hbm_bytes_per_s
                issue_s = n * p.repeat * case.vocab * lp["s_per_element"]
                t = max(mem_s, issue_s)
                phase_s[phase] += t
                sum_bytes += hbm
                sum_issue += issue_s
                out.append({"kind": kind, "phase": phase, "loop": p.loop, "rows": n,
                            "sass": lp.get("label"), "repeat": p.repeat, "l2_hit": h,
                            "hbm_bytes_per_row": per_row,
                            "hbm_bytes": hbm, "mem_s": mem_s, "issue_s": issue_s, "time_s": t,
                            "bound": "memory" if mem_s >= issue_s else "issue", "pass": p})
    total = sum(phase_s.values())
    ideal = case.min_bytes / m.hbm_bytes_per_s
    return {"passes": out, "phase_s": phase_s, "total_s": total,
            "overlap_s": max(sum_bytes / m.hbm_bytes_per_s, sum_issue), "hbm_bytes": sum_bytes,
            "min_bytes": case.min_bytes, "loss_min_bytes": case.loss_min_bytes,
            "ideal_s": ideal, "roofline": ideal / total,
            "loss_roofline": case.loss_min_bytes / m.hbm_bytes_per_s / total,
            "forward_roofline": ideal / phase_s["forward"]}


def check_passes(passes: dict, loops: dict, where: str = "passes") -> None:
    """A pass table has every kind and phase, each a list of Pass over known loop roles."""
    for kind in KINDS:
        for phase in PHASES:
            lst = (passes.get(kind) or {}).get(phase)
            if lst is None:
                raise ModelError(f"the pass table is not written yet: {where}[{kind!r}][{phase!r}]"
                                 " is None (TODO in bench/static_model.py VERSIONS)")
            for p in lst:
                if p.loop not in loops:
                    raise ModelError(f"{where}[{kind!r}][{phase!r}] names loop {p.loop!r}, which "
                                     f"no job profiles (roles: {', '.join(sorted(loops))})")


def last_line(case: Case, roofline: float, m: Machine) -> str:
    return (f"predicted forward+backward at {case.rows} x {case.vocab} {case.dtype} on the "
            f"{m.name}: {roofline * 100:.0f}% of the HBM roofline, the dense zero gradient rows "
            f"in the floor ({NOTE})")


def find_loop_lines(src_root: Path, loops: dict) -> dict:
    """role -> ("file.py", line, how) of each loop's `for`, as sass_profile names loops.

    A loop is found by the comment ``# LOOP: <role>`` at the end of its `for` line anywhere
    under ``src_root`` (exactly one), else by its ``fallback`` "file.py:LINE", which must be
    a `for` line of a file of that name under ``src_root``. ModelError names what is missing.
    """
    files = sorted(p for p in Path(src_root).rglob("*.py") if "__pycache__" not in p.parts)
    text = {p: p.read_text(encoding="utf-8").splitlines() for p in files}
    markers: dict = {}
    for p, lines in text.items():
        for i, line in enumerate(lines, 1):
            if mk := LOOP_MARKER.search(line):
                markers.setdefault(mk.group(1), []).append((p, i, line))
    found = {}
    for role, spec in loops.items():
        hits = markers.get(role, [])
        if len(hits) > 1:
            raise ModelError(f"marker `# LOOP: {role}` appears {len(hits)} times: " + ", ".join(
                f"{p.relative_to(src_root)}:{i}" for p, i, _ in hits))
        if hits:
            p, i, line = hits[0]
            if not _is_for(line):
                raise ModelError(f"marker `# LOOP: {role}` at {p.relative_to(src_root)}:{i} is "
                                 "not on the line of a `for`")
            found[role] = (p.name, i, "marker")
            continue
        fallback = spec.get("fallback")
        if not fallback:
            raise ModelError(f"marker `# LOOP: {role}` not found in {src_root.name}/ (it goes "
                             f"at the end of the line of the {role} loop's `for`)")
        name, _, num = fallback.partition(":")
        cands = [p for p in files if p.name == name]
        if len(cands) != 1:
            raise ModelError(f"loop {role}: fallback {fallback}: {len(cands)} files named {name}")
        lines = text[cands[0]]
        i = int(num)
        if not (1 <= i <= len(lines) and _is_for(lines[i - 1])):
            raise ModelError(f"loop {role}: no marker `# LOOP: {role}`, and its fallback "
                             f"{fallback} is not a `for` line in this version")
        found[role] = (name, i, "line fallback")
    return found


def _is_for(line: str) -> bool:
    return line.split("#", 1)[0].strip().startswith("for ")


# --------------------------------------------------------------------------------------------
# Profiling (a subprocess per version)
# --------------------------------------------------------------------------------------------

def _git(*args, text=True) -> str | bytes:
    r = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=text)
    if r.returncode:
        err = r.stderr if text else r.stderr.decode(errors="replace")
        raise ModelError(f"git {' '.join(args)}: {(err.strip().splitlines() or ['failed'])[-1]}")
    return r.stdout


def materialise(source: dict, dest: Path) -> str:
    """Put the version's palu_kernels/ under ``dest``; return where it came from."""
    if "git_ref" in source:
        ref = source["git_ref"]
        commit = _git("rev-parse", "--short", f"{ref}^{{commit}}").strip()
        data = _git("archive", "--format=tar", commit, "palu_kernels", text=False)
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, filter="data")
            else:
                tar.extractall(dest)
        return f"git {commit}"
    shutil.copytree(REPO / "palu_kernels", dest / "palu_kernels",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    head = _git("rev-parse", "--short", "HEAD").strip()
    dirty = _git("status", "--porcelain", "--", "palu_kernels/ops").strip()  # the kernels
    return f"working tree (HEAD {head}{', palu_kernels/ops/ modified' if dirty else ''})"


def run_profiles(src: Path, jobs: dict) -> dict:
    """Profile every job of a version in a fresh interpreter with ``src`` first on sys.path."""
    if not SASS_PROFILE.is_file():
        raise ModelError(f"{SASS_PROFILE} is missing (the shared tools sit at ../shared/tools)")
    req = {"src": str(src), "tools": str(TOOLS),
           "jobs": {name: {k: v for k, v in job.items() if k != "loops"}
                    for name, job in jobs.items()}}
    req_path, out_path = src / "static_model_request.json", src / "static_model_result.json"
    req_path.write_text(json.dumps(req))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compile, never
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # interpret; the JIT's default fp fusion
    try:
        r = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker",
                            str(req_path), str(out_path)], cwd=src, env=env,
                           capture_output=True, text=True, timeout=1800)
    except subprocess.TimeoutExpired:
        raise ModelError("profiling took more than 30 minutes") from None
    if out_path.is_file():
        res = json.loads(out_path.read_text())
        if "error" in res:
            raise ModelError(res["error"])
        return res
    tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
    raise ModelError(f"the profiling subprocess failed (exit {r.returncode}): {tail}")


def _worker(request_path: str, out_path: str) -> int:
    """In the subprocess: profile the jobs, write JSON (or {"error": one line})."""
    req = json.loads(Path(request_path).read_text())
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    sys.path[:0] = [req["src"], req["tools"]]
    try:
        res = _profile_jobs(req)
    except Exception as e:  # one line for the parent, whatever it was
        msg = " ".join(str(e).split()) or type(e).__name__
        res = {"error": msg if type(e).__name__ in ("ProfileError", "ModelError")
               else f"{type(e).__name__}: {msg}"}
    Path(out_path).write_text(json.dumps(res))
    return 1 if "error" in res else 0


def _profile_jobs(req: dict) -> dict:
    import importlib

    import sass_profile as sp

    captured = {}
    parse = getattr(sp, "_parse_sass", None)
    if parse is not None:  # keep the parsed SASS for the per-loop access widths
        def keep(text):
            captured["ins"] = parse(text)
            return captured["ins"]
        sp._parse_sass = keep
    out = {"tool_constants": {k: getattr(sp, k) for k in
                              ("SMS", "SCHEDULERS", "GHZ", "HBM_TBS", "INT_CYCLES", "MUFU_CYCLES")
                              if hasattr(sp, k)}, "jobs": {}}
    for name, job in req["jobs"].items():
        module, _, fn_name = job["kernel"].partition(":")
        try:
            mod = importlib.import_module(module)
        except Exception as e:
            raise ModelError(f"cannot import {module} of this version: {type(e).__name__}: {e}")
        if not str(Path(mod.__file__).resolve()).startswith(str(Path(req["src"]).resolve())):
            raise ModelError(f"{module} was imported from {mod.__file__}, not from {req['src']}")
        if not hasattr(mod, fn_name):
            raise ModelError(f"{module} has no kernel {fn_name}")
        captured.clear()
        r = sp.profile(getattr(mod, fn_name), job["signature"], job["constexprs"],
                       num_warps=job["num_warps"], num_stages=job.get("num_stages"),
                       divisible_by_16=job.get("divisible_by_16", ()), arch=90, min_instr=1)
        r["triton_file"] = mod.__file__
        for lp in r["loops"]:
            lp["widths"] = _loop_widths(lp, r["loops"], captured.get("ins"), sp)
        out["jobs"][name] = r
    return out


def _loop_widths(lp: dict, loops: list, ins, sp):
    """{"LDG": {bytes: count}, "STG": {...}} of a loop's own body (nested loops excluded)."""
    if ins is None:
        return None
    gbytes = getattr(sp, "_gbytes", None) or (lambda op: 4)
    lo, hi = int(lp["head"], 16), int(lp["tail"], 16)
    kids = [(int(c["head"], 16), int(c["tail"], 16)) for c in loops if c["label"] in lp["nested"]]
    widths = {"LDG": {}, "STG": {}}
    for addr, op, _, _ in ins:
        kind = op.split(".")[0]
        if kind in widths and lo <= addr <= hi and not any(a <= addr <= b for a, b in kids):
            b = str(gbytes(op))
            widths[kind][b] = widths[kind].get(b, 0) + 1
    return widths


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------

WIDTH_NAMES = {"16": "v4.b32", "8": "v2.b32", "4": "b32", "2": "b16", "1": "b8"}


def _width_text(widths) -> str:
    if widths is None:
        return "n/a (this sass_profile keeps no per-instruction SASS)"
    parts = []
    for kind in ("LDG", "STG"):
        for b, n in sorted(widths[kind].items(), key=lambda kv: -int(kv[0])):
            parts.append(f"{kind} {b} B ({WIDTH_NAMES.get(b, '?')}) x{n}")
    return ", ".join(parts) or "no global access"


def _loop_figures(lp: dict, elements: int, threads: int, tensors: int, case: Case,
                  m: Machine) -> dict:
    """One SASS loop's per-element figures (raises ModelError from ``unroll_factor``)."""
    unroll = unroll_factor(lp["global_bytes_per_thread"], elements / threads,
                           tensors * case.elem_size)
    e = unroll * elements / threads
    g = lp["groups"]
    cycles, bound = issue_cycles(lp["instructions"], g["int"], g["special"], m)
    s_el = issue_seconds_per_element(lp["instructions"], g["int"], g["special"], e, m)
    return {"label": lp["label"], "unroll": unroll, "e": e, "cycles": cycles, "bound": bound,
            "s_per_element": s_el, "instructions_per_element": lp["instructions"] / e,
            "b_el": lp["global_bytes_per_thread"] / e}


def loop_table(version: dict, profiles: dict, where: dict, case: Case, machines):
    """Per role: the loop's profile and model figures; and the report lines of section 1.

    ``machines``: one Machine or a list; the issue bound uses the first (H100 and H200 share
    the chip), the memory- or issue-bound verdict is given against each one's HBM.
    """
    machines = [machines] if isinstance(machines, Machine) else list(machines)
    m = machines[0]
    loops, lines = {}, []
    for job_name, job in version["jobs"].items():
        r = profiles["jobs"][job_name]
        lines += [f"{r['kernel']} ({job_name}; {job['kernel']}, num_warps {r['num_warps']}): "
                  f"registers {r['registers']}, spills {r['spill_store_bytes']} B stored / "
                  f"{r['spill_load_bytes']} B loaded, stack {r['stack_bytes']} B, shared "
                  f"{r['shared_bytes']} B, {r['programs_per_sm']} programs/SM (limited by "
                  f"{r['occupancy_limit']}) = {r['programs_per_sm'] * m.sms} rows in flight",
                  "  PTX global accesses: " + (", ".join(
                      f"{k} x{v}" for k, v in sorted(r["ptx_global"].items())) or "none")]
        for role, spec in job["loops"].items():
            fname, line, how = where[role]
            src = f"{fname}:{line}"
            hits = [lp for lp in r["loops"] if lp["source"] == src]
            if not hits:
                raise ModelError(f"loop {role} ({src}, {how}) is not a loop in the SASS of "
                                 f"{r['kernel']}; its loops: " + ", ".join(
                                     f"{lp['label']} {lp['source']}" for lp in r["loops"]), lines)
            lp = max(hits, key=lambda x: x["instructions"])
            elements = spec["elements"]
            elements = job["constexprs"][elements] if isinstance(elements, str) else elements
            threads = 32 * job["num_warps"]
            try:
                fig = _loop_figures(lp, elements, threads, spec["tensors"], case, m)
            except ModelError as e:
                raise ModelError(f"loop {role} ({src}): {e}", lines) from None
            # every SASS loop of this source line, in program order: one per pass when the
            # source loop was unrolled by tl.static_range (see loop_instances)
            instances = []
            for h in sorted(hits, key=lambda x: int(x["head"], 16)):
                try:
                    instances.append(_loop_figures(h, elements, threads, spec["tensors"], case,
                                                   m))
                except ModelError:
                    instances = []
                    break
            e, unroll, s_el, b_el = fig["e"], fig["unroll"], fig["s_per_element"], fig["b_el"]
            gbs = b_el / s_el / 1e9
            verdicts = {mm.name: "memory-bound" if gbs > mm.hbm_tbs * 1e3 else "issue-bound"
                        for mm in machines}
            loops[role] = {"s_per_element": s_el, "label": lp["label"],
                           "rows_in_flight": r["programs_per_sm"] * m.sms, "kernel": r["kernel"],
                           "source": src, "instructions_per_element": lp["instructions"] / e,
                           "verdict": verdicts[machines[-1].name], "verdicts": verdicts,
                           "registers": r["registers"],
                           "spill_bytes": r["spill_store_bytes"] + r["spill_load_bytes"],
                           "instances": instances if len(instances) > 1 else []}
            g = lp["groups"]
            n_el = lambda k: g[k] / e  # noqa: E731
            on = ", ".join(f"{gbs / mm.hbm_tbs / 10:.0f}% of the {mm.name}'s {mm.hbm_tbs} TB/s"
                           for mm in machines)
            verdict = (next(iter(verdicts.values())) if len(set(verdicts.values())) == 1
                       else ", ".join(f"{v} on the {k}" for k, v in verdicts.items()))
            lines += [
                f"  {role:<10} {src} ({how}; SASS {lp['label']}): {elements} elements per "
                f"source iteration" + (f", unrolled x{unroll} by ptxas" if unroll > 1 else "")
                + f" -> {e:g} elements/thread/iteration",
                f"    {lp['instructions']} SASS instructions/iteration = "
                f"{lp['instructions'] / e:.1f}/element: int {n_el('int'):.1f}, fp32 "
                f"{n_el('fp32'):.1f}, MUFU {n_el('special'):.2f}, memory (global + shared) "
                f"{n_el('memory'):.1f}, "
                f"other {n_el('other'):.1f}; {lp['inner_branches']} branches inside (all paths "
                "counted)",
                f"    global per thread-iteration: {_width_text(lp.get('widths'))}; "
                f"{b_el:g} B/element",
                f"    {NOTE}: {fig['cycles']} cycles/warp-iteration ({fig['bound']}) -> "
                f"{1 / s_el / 1e9:.0f} G elements/s = {s_el * 1e12:.2f} ps/element; at "
                f"{b_el:g} B/element {gbs:.0f} GB/s ({on}): {verdict}",
            ]
            if len(instances) > 1:
                lines.append(f"    {len(instances)} SASS loops at {src}, in program order: "
                             + ", ".join(f"{f['label']} {f['instructions_per_element']:.1f}/"
                                         f"element ({f['s_per_element'] * 1e12:.2f} ps)"
                                         for f in instances)
                             + f"; a phase with {len(instances)} {role} passes is charged "
                             "each its own loop, in this order")
        lines += [f"  warning: {w}" for w in r.get("warnings", [])]
    return loops, lines


def _fmt_bytes(b: float) -> str:
    return f"{b / 1e9:.2f} GB" if b >= 1e9 else f"{b / 1e6:.1f} MB" if b >= 1e6 else \
        f"{b / 1e3:.1f} KB"


def pass_lines(pred: dict, case: Case, m: Machine) -> list:
    rows = case.kind_rows()
    out = [f"row = V x {case.elem_size} B = {_fmt_bytes(case.row_bytes)} of one tensor; "
           f"L2 hit of a re-read = min(1, L2 {m.l2_bytes / 2**20:.0f} MiB / (rows in flight x "
           "reuse x row)), reuse = rows this row streams between the two reads (a reversed "
           "pass: reuse grows from 0 to 2 x its average, h = min(1, share / (2 x reuse)))",
           f"  {'kind':<11}{'phase':<9}{'loop':<10}{'x':>2}  {'reads':<7}{'re-reads':<9}"
           f"{'reuse':>5}{'L2 hit':>7}  {'writes':<9}{'HBM/row':>10}  why"]
    for r in pred["passes"]:
        p = r["pass"]
        reuse = f"{p.reuse:g}" if p.rereads else "-"
        hit = f"{r['l2_hit']:.2f}" if p.rereads else "-"
        out.append(f"  {r['kind']:<11}{r['phase']:<9}{p.loop:<10}{p.repeat:>2}  "
                   f"{' '.join(p.reads) or '-':<7}{' '.join(p.rereads) or '-':<9}"
                   f"{reuse:>5}{hit:>7}  "
                   f"{' '.join(p.writes) or '-':<9}{_fmt_bytes(r['hbm_bytes_per_row']):>10}  "
                   f"{p.why}")
    out.append("  rows: " + ", ".join(f"{k} {v}" for k, v in rows.items()))
    return out


def time_lines(pred: dict, case: Case, m: Machine, bounds: dict) -> list:
    out = [f"  {'kind':<11}{'rows':>5}  {'phase':<9}{'loop':<10}{'SASS':<5}{'HBM':>9}"
           f"{'memory ms':>10}{'issue ms':>10}{'time ms':>9}  bound"]
    for r in pred["passes"]:
        out.append(f"  {r['kind']:<11}{r['rows']:>5}  {r['phase']:<9}{r['loop']:<10}"
                   f"{r.get('sass') or '-':<5}"
                   f"{_fmt_bytes(r['hbm_bytes']):>9}{r['mem_s'] * 1e3:>10.3f}"
                   f"{r['issue_s'] * 1e3:>10.3f}{r['time_s'] * 1e3:>9.3f}  {r['bound']}")
    f_s, b_s, t_s = pred["phase_s"]["forward"], pred["phase_s"]["backward"], pred["total_s"]
    ideal = pred["ideal_s"]
    n = case.kind_rows()
    loss_ideal = pred["loss_min_bytes"] / m.hbm_bytes_per_s
    out += [
        f"predicted forward: {f_s * 1e3:.3f} ms ({NOTE})",
        f"predicted backward: {b_s * 1e3:.3f} ms ({NOTE})",
        f"predicted forward+backward: {t_s * 1e3:.3f} ms, {_fmt_bytes(pred['hbm_bytes'])} of "
        f"HBM traffic ({NOTE})",
        f"minimum traffic of a dense gradient: (3 x {n['initiating'] + n['common']} "
        f"loss-carrying rows + 1 x {n['other']} zero gradient rows) x "
        f"{_fmt_bytes(case.row_bytes)} = {_fmt_bytes(pred['min_bytes'])} = {ideal * 1e3:.3f} ms "
        f"at {m.hbm_tbs} TB/s (the HBM roofline)",
        f"fraction of the HBM roofline: forward {pred['forward_roofline'] * 100:.1f}%, "
        f"forward+backward {pred['roofline'] * 100:.1f}% ({NOTE})",
        f"against the loss-carrying rows alone ({_fmt_bytes(pred['loss_min_bytes'])} = "
        f"{loss_ideal * 1e3:.3f} ms, the floor before issue 23): forward+backward "
        f"{pred['loss_roofline'] * 100:.1f}% ({NOTE})",
        f"bounds of the same model: every re-read from L2 {bounds[1.0] * 1e3:.3f} ms, none "
        f"{bounds[0.0] * 1e3:.3f} ms; perfect overlap of memory- and issue-bound work "
        f"{pred['overlap_s'] * 1e3:.3f} ms ({NOTE})",
    ]
    return out


def parse_machines(choice: str) -> list:
    """``h100``, ``h200`` or ``both`` -> Machines (H100 first); ModelError names the option."""
    if choice == "both":
        return [MACHINES["h100"], MACHINES["h200"]]
    if choice not in MACHINES:
        raise ModelError(f"--machine {choice!r}: choose from {', '.join(MACHINES)}, both")
    return [MACHINES[choice]]


def report(name: str, case: Case = CASE, machines=None) -> tuple[list, dict]:
    """The report lines of one version and its forward+backward roofline fraction per machine
    name (``machines``: Machines, default the H200 alone)."""
    version = VERSIONS[name]
    machines = [MACHINES["h200"]] if machines is None else list(machines)
    if not SASS_PROFILE.is_file():
        raise ModelError(f"{SASS_PROFILE} is missing (the shared tools sit at ../shared/tools)")
    with tempfile.TemporaryDirectory(prefix="static_model_") as tmp:
        tmp = Path(tmp)
        origin = materialise(version["source"], tmp)
        all_loops = {role: spec for job in version["jobs"].values()
                     for role, spec in job["loops"].items()}
        where = find_loop_lines(tmp / "palu_kernels", all_loops)
        profiles = run_profiles(tmp, version["jobs"])
    machines = [m.with_tool(profiles["tool_constants"]) for m in machines]
    n = case.kind_rows()
    names = " and ".join(m.name for m in machines)
    lines = [
        f"static {names} model of the PALU Triton kernels, version {name}: {version['label']} "
        f"({origin}) -- {NOTE}",
        f"triton {profiles['jobs'][next(iter(version['jobs']))]['triton']}, compiled for "
        f"sm_90a by ../shared/tools/sass_profile.py",
        *(f"  {m.label}" for m in machines),
        f"headline case: {case.rows} rows x V {case.vocab}, {case.dtype}, K {case.k}, "
        f"{n['initiating']} initiating / {n['common']} common / {n['other']} other rows, target "
        "mean, reverse KL, gradient written; backward: " + version.get(
            "backward", "the trainer's path"),
        "",
        "1. Kernel loops (SASS for sm_90a; per-element figures are per element of V handled; "
        "the issue bound is the same on both parts)",
    ]
    loops, sec1 = loop_table(version, profiles, where, case, machines)
    lines += sec1
    try:
        check_passes(version["passes"], loops, f"VERSIONS[{name!r}]['passes']")
    except ModelError as e:
        raise ModelError(str(e), lines) from None
    fractions, tail = {}, []
    for m in machines:
        pred = predict(case, m, loops, version["passes"])
        bounds = {h: predict(case, m, loops, version["passes"], l2_hit=h)["total_s"]
                  for h in (0.0, 1.0)}
        lines += ["", f"2. {m.name}: passes per row (hand-written from the kernel source, see "
                  "VERSIONS in bench/static_model.py)"]
        lines += pass_lines(pred, case, m)
        lines += ["", f"3. {m.name}: predicted time, per row kind and loop max(HBM bytes / "
                  f"{m.hbm_tbs} TB/s, issue-bound time), summed ({NOTE})"]
        lines += time_lines(pred, case, m, bounds)
        fractions[m.name] = pred["roofline"]
        tail.append(last_line(case, pred["roofline"], m))
    lines += ["", *tail]
    return lines, fractions


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--version", choices=(*VERSIONS, "both"), default="both",
                    help="kernel version to model (default: both, i.e. every version, old first)")
    ap.add_argument("--machine", choices=(*MACHINES, "both"), default="both",
                    help="the GPU to model: h100 (3.35 TB/s), h200 (4.8 TB/s) or both "
                         "(default)")
    ap.add_argument("--out", type=Path, help="also write each report to DIR/<version>.txt")
    a = ap.parse_args(argv)
    names = list(VERSIONS) if a.version == "both" else [a.version]
    machines = parse_machines(a.machine)
    for i, name in enumerate(names):
        try:
            lines, _ = report(name, machines=machines)
        except ModelError as e:
            if e.lines:
                print("\n".join(e.lines), flush=True)
            print(f"static_model: error: version {name}: {e}", file=sys.stderr)
            return 1
        text = "\n".join(lines) + "\n"
        print(("\n" if i else "") + text, end="", flush=True)
        if a.out:
            a.out.mkdir(parents=True, exist_ok=True)
            atomic = a.out / f".{name}.txt.tmp"
            atomic.write_text(text)
            os.replace(atomic, a.out / f"{name}.txt")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        sys.exit(_worker(*sys.argv[2:4]))
    sys.exit(main())
