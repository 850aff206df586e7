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

Adding a version: an entry of ``VERSIONS`` (``bench/static/versions.py``) names its source,
its sass_profile jobs (kernel, signature, constexprs, warps; loops by role with elements per
iteration) and its pass table. The code is in ``bench/static/`` (``model.py`` the arithmetic,
``versions.py`` the tables, ``sources.py`` and ``worker.py`` the profiling, ``report.py``).
``tests/test_static_model.py`` covers the arithmetic; this script itself needs triton's NVIDIA
backend (ptxas) and takes a while, so it is not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if __name__ == "__main__":  # run as a script: the repository root, not bench/, on sys.path
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench.static.model import MACHINES, ModelError  # noqa: E402
from bench.static.report import parse_machines, report  # noqa: E402
from bench.static.versions import VERSIONS  # noqa: E402


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
    sys.exit(main())
