"""Sweep the PALU loss providers and write CSV, a markdown table and PNG plots.

    python -m bench.run --device cpu --quick     # about 5 minutes on 2 cores
    python -m bench.run --device cuda            # one GPU (a call of its own, not in gpu.sh)

Providers: ``triton`` (CUDA only), ``torch`` (the torch backend), ``reference`` (the spec's
formulation, eager), ``reference_compile`` (the same under ``torch.compile``) and
``released`` (the released code's arithmetic). Modes: forward, backward, forward+backward.
Metrics: median time, peak memory above the inputs and, for forward+backward, achieved
bandwidth against the device's peak (see ``bench/common.py``). A provider that fails on a
shape (compilation error, out of memory) is recorded as failed and the sweep goes on.

Output, under ``--out`` (default ``bench/results/<device>/``): ``results.csv`` (one row per
provider, mode, shape, dtype and metric, with device, versions and timestamp),
``results.md``, ``raw.json`` and the plots ``time_memory_vs_rows.png`` and
``time_memory_vs_vocab.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from . import report
from .common import (
    PROVIDERS, Case, RssWindow, Unavailable, copy_bandwidth_gbps, cuda_peak, environment,
    make_inputs, peak_bandwidth_gbps, release_free_memory, run_case, topk_providers,
)
from .grids import SECTIONS, palu_grid, topk_grid
from .worker import run_in_subprocess

REPO_ROOT = Path(__file__).resolve().parent.parent


def _dedupe(grid, providers=None):
    """``{case: (sections, providers)}`` in first-seen order, providers unioned."""
    merged = {}
    for section, case, provs in grid:
        secs, ps = merged.setdefault(case, ([], []))
        if section not in secs:
            secs.append(section)
        for p in provs:
            if p not in ps and (providers is None or p in providers):
                ps.append(p)
    return merged


def measure_palu(device, quick, providers=None, sections=None, reps=3, deadline=None,
                 threads=None):
    """Run the loss grid; returns ``[(sections, record)]``."""
    grid = [g for g in palu_grid(device, quick) if sections is None or g[0] in sections]
    merged = _dedupe(grid, providers)
    total = sum(len(ps) for _, ps in merged.values())
    bar = tqdm(total=total, desc=f"PALU loss on {device}", unit="run", file=sys.stderr)
    out = []
    if device == "cpu":
        # One fresh process per provider (its cases run in it one after the other).
        order = [p for p in report.PROVIDER_ORDER if any(p in ps for _, ps in merged.values())]
        for p in order:
            cases = [c for c, (_, ps) in merged.items() if p in ps]
            bar.set_postfix_str(p)

            def done(rec):
                bar.update(1)
                bar.set_postfix_str(f"{rec['provider']} {Case(**rec['case']).label()}")

            for rec in run_in_subprocess(p, cases, reps=reps, on_result=done, threads=threads):
                out.append((merged[Case(**rec["case"])][0], rec))
    else:
        for case, (secs, ps) in merged.items():
            for p in ps:
                bar.set_postfix_str(f"{p} {case.label()}")
                if deadline is not None and time.perf_counter() > deadline:
                    rec = {"provider": p, "case": case.to_dict(), "device": device,
                           "status": "skipped", "error": "time budget spent"}
                else:
                    rec = run_case(p, case, device)
                out.append((secs, rec))
                bar.update(1)
    bar.close()
    return out


def _time_topk(fn, r, device, reps):
    if torch.device(device).type == "cuda":
        from triton.testing import do_bench

        fn(r)
        ms = do_bench(lambda: fn(r), return_mode="median")
        return ms, cuda_peak(lambda _: fn(r))
    fn(r)
    times, peaks = [], []
    for _ in range(reps):
        with RssWindow() as w:
            t = time.perf_counter()
            res = fn(r)
            times.append(time.perf_counter() - t)
        peaks.append(w.extra)
        del res
    peaks = [p for p in peaks if p is not None]
    return 1e3 * statistics.median(times), (max(peaks) if peaks else None)


def measure_topk(device, quick, reps=3, deadline=None):
    """Top-K selection: ``[(["topk"], record)]`` with one record per provider and shape."""
    grid = topk_grid(device, quick)
    out = []
    for rows, vocab, k, dtype in tqdm(grid, desc=f"top-K on {device}", file=sys.stderr):
        case = Case(rows=rows, vocab=vocab, k=k, init_frac=1.0, common_frac=0.0, dtype=dtype)
        r = make_inputs(case, device, requires_grad=False)[1]
        for name, fn in topk_providers(device, case.k_eff).items():
            rec = {"provider": name, "case": case.to_dict(), "device": str(device)}
            if deadline is not None and time.perf_counter() > deadline:
                rec.update(status="skipped", error="time budget spent")
                out.append((["topk"], rec))
                continue
            try:
                ms, peak = _time_topk(fn, r, device, reps)
                rec.update(status="ok", op=name, **{"forward": {"time_ms": ms, "peak_bytes": peak}})
            except (RuntimeError, Unavailable, NotImplementedError) as e:
                rec.update(status="failed", error=f"{type(e).__name__}: {e}"[:300])
            out.append((["topk"], rec))
        del r
        release_free_memory()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Sweep the PALU loss providers (CSV, table, plots).")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--quick", action="store_true", help="the reduced grid (see bench/grids.py)")
    ap.add_argument("--out", type=Path, help="output folder (default bench/results/<device>)")
    ap.add_argument("--providers", nargs="+", choices=PROVIDERS, help="only these providers")
    ap.add_argument("--sections", nargs="+", choices=SECTIONS, help="only these sections")
    ap.add_argument("--reps", type=int, default=3, help="CPU: timed repeats after one warm-up")
    ap.add_argument("--threads", type=int,
                    help="CPU: torch threads per process (default one per core); with 1, the "
                         "CPU time of a measurement is what it takes on an idle core, even on "
                         "a loaded machine")
    ap.add_argument("--budget-s", type=float,
                    help="CUDA: start no new measurement after this many seconds (the rest "
                         "is recorded as skipped)")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available here")

    if args.threads:
        torch.set_num_threads(args.threads)  # the top-K section runs in this process
    out_dir = args.out or REPO_ROOT / "bench" / "results" / args.device
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    env = environment(args.device)
    peak_bw, bw_source = peak_bandwidth_gbps(args.device)
    env.update(peak_bandwidth_gbps=round(peak_bw, 1), peak_bandwidth_source=bw_source,
               command="python -m bench.run "
               + " ".join(argv if argv is not None else sys.argv[1:]))
    if args.device == "cuda":
        env["measured_copy_gbps"] = round(copy_bandwidth_gbps("cuda", 1 << 30), 1)
    print(f"{env['device_name']}: peak bandwidth {peak_bw:.1f} GB/s ({bw_source})",
          file=sys.stderr)

    records = []
    # The loss sweep may use 85% of the budget; the top-K section gets the rest.
    budget = args.budget_s
    if args.sections is None or set(args.sections) - {"topk"}:
        records += measure_palu(args.device, args.quick, args.providers, args.sections,
                                args.reps, None if budget is None else t0 + 0.85 * budget,
                                args.threads)
    if args.sections is None or "topk" in args.sections:
        records += measure_topk(args.device, args.quick, args.reps,
                                None if budget is None else t0 + budget)
    env["wall_s"] = round(time.perf_counter() - t0, 1)
    # CPU seconds of this process and its workers: what the sweep costs on an idle machine
    # (a loaded machine stretches the wall time, much less the CPU time).
    used = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    env["cpu_s"] = round(sum(u.ru_utime + u.ru_stime for u in used), 1)
    env["load_average_1min_end"] = round(os.getloadavg()[0], 2)

    rows = report.to_rows(records, env)
    report.write_csv(rows, out_dir / "results.csv")
    (out_dir / "raw.json").write_text(json.dumps(
        {"env": env, "records": [{"sections": s, **r} for s, r in records]}, indent=1))
    md = report.markdown(rows, env)
    (out_dir / "results.md").write_text(md)
    plots = report.plots(rows, env, out_dir)
    print(md)
    written = [out_dir / "results.csv", out_dir / "results.md", out_dir / "raw.json", *plots]
    print(f"wrote {', '.join(str(p) for p in written)} in {env['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
