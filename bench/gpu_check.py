"""GPU check of the PALU kernels that one 10-minute call can trust: correctness, exactness at
scale, times, achieved bandwidth, a tile sweep and a trainer smoke test.

Run from the repository root (``bash bench/gpu.sh`` runs it after the environment and the
CUDA tests)::

    python3 bench/gpu_check.py --out bench/results/cuda              # on a GPU
    python3 bench/gpu_check.py --out /tmp/dry --dry-run              # the same logic on the CPU

Sections, in this order, each in its own subprocess with its own time limit (a hang, a crash
or an out-of-memory in one section cannot take the later ones with it), each skipped with a
one-line reason when a package it needs is missing. The code of each is in ``bench/gpu/``
(one module per section; ``bench/gpu/core.py`` holds the table of sections, their time caps,
which add up to the default ``--budget-s`` of 200 s, and the packages each needs):

a. ``smoke``      every kernel family against the fp64 reference on small shapes: PASS/FAIL
                  per family with the largest error, never stopping at the first failure.
b. ``exactness``  at the headline case (8192 x 128256 bf16, K = 5000, 10% initiating and 60%
                  common rows): every initiating row's top-K set against a stable sort, and
                  gradient rows outside I and C exactly zero.
c. ``timing``     forward, backward, forward+backward (CUDA events, warm-up, median) of the
                  triton and torch backends and the released code; torch.topk against
                  topk_threshold; the trainer's path (reduction "none", then a weighted sum).
   ``compile``    the same times for ``torch.compile(reference.palu_loss_reference)``.
d. ``bandwidth``  achieved GB/s of the measured times against the device's peak.
e. ``sweep``      the triton forward over tile sizes / warps (one ``sweep.csv`` row per point).
f. ``trainer``    about 20 steps of ``palu-unlearn`` with --backend triton, triton
                  --fused-linear and torch: seconds per step and peak GPU memory.

Files under ``--out``: ``results.json`` (every section's numbers and status, rewritten after
every measurement), ``results.md`` (the same as tables, regenerated with it) and
``sweep.csv``; both rewrites go through a temporary file and ``os.replace``, so a run killed
at any moment leaves complete files holding what was measured so far. A number that was not
measured is never written: a skipped, failed or timed-out entry says so instead.

``--dry-run``: tiny shapes (8 x 300, K = 5), one repeat, CPU tensors through the Triton
interpreter (``TRITON_INTERPRET=1``), ``torch.compile(backend="eager")``, and a 2-step trainer
run on a tiny Llama with --backend torch; it exercises every section and every file write in
well under a minute, and its numbers mean nothing. ``PALU_GPU_CHECK_FAIL=<section>`` makes
that section raise at its start (to test that the later sections still run).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # run as a script: bench, palu_kernels and reference from the tree
    sys.path.insert(0, REPO_ROOT)

from bench.gpu.core import CHECK_BUDGET_S, SECTIONS, plan_text  # noqa: E402
from bench.gpu.runner import (FUNCTIONS, cmd_environment, cmd_record_tests,  # noqa: E402
                              run_all, run_child)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "bench/results/cuda"),
                    help="folder for results.json, results.md and sweep.csv")
    ap.add_argument("--dry-run", action="store_true",
                    help="tiny shapes on the CPU through the Triton interpreter")
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help=f"comma-separated subset of {', '.join(SECTIONS)}")
    ap.add_argument("--budget-s", type=float, default=CHECK_BUDGET_S,
                    help="wall-time budget of all sections together (default: the sum of "
                         f"the sections' caps, {CHECK_BUDGET_S} s)")
    ap.add_argument("--plan", action="store_true",
                    help="print the sections' time caps against --budget-s and exit")
    ap.add_argument("--environment", action="store_true",
                    help="start a fresh results.json with the environment, print it and exit")
    ap.add_argument("--record-tests", metavar="FILE",
                    help="record pytest's summary line of FILE (with --rc) and exit")
    ap.add_argument("--rc", type=int, default=0, help="the exit code of --record-tests' pytest")
    ap.add_argument("--junit", metavar="XML",
                    help="--record-tests: pytest's junit XML, to count the tests when pytest "
                         "was killed before its summary line")
    ap.add_argument("--skip-reason", metavar="TEXT",
                    help="--record-tests: the tests did not run, for this one-line reason")
    ap.add_argument("--child", choices=sorted(FUNCTIONS), help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--tmp", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.dry_run:  # before triton is first imported, here and in every section's process
        os.environ["TRITON_INTERPRET"] = "1"
    args.out = os.path.abspath(args.out)
    if not args.plan:
        os.makedirs(args.out, exist_ok=True)
    os.chdir(REPO_ROOT)
    if args.environment:
        return cmd_environment(args.out, args.dry_run)
    if args.record_tests:
        return cmd_record_tests(args.out, args.record_tests, args.rc, skip=args.skip_reason,
                                junit=args.junit)
    if args.child:
        return run_child(args.child, args.out, args.dry_run, args.deadline or time.time() + 3600,
                         args.tmp or tempfile.gettempdir())
    names = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in names if s not in SECTIONS]
    if unknown:
        ap.error(f"--sections: unknown {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    if args.plan:
        print(plan_text(names, args.budget_s))
        return 0
    return run_all(args.out, args.dry_run, names, args.budget_s)


if __name__ == "__main__":
    sys.exit(main())
