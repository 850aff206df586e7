"""Side by side on the CPU: the torch backend against the released formulation and the reference.

Forward plus backward of the PALU loss at N = 4096 rows, V = 32000, K = 5000, 10% initiating
rows, 60% common rows (disjoint), fp32, all three providers measured in one run, each in a
fresh process: median time (one warm-up call, then ``--reps`` repeats) and the extra peak
resident memory above the inputs (see ``bench/common.py`` for how it is measured).

    python -m bench.compare_cpu            # a few minutes on 2 idle cores
    python -m bench.compare_cpu --rows 1024 --reps 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

import palu_kernels.backends.torch_rows as tb

from .common import Case, cpu_name, environment
from .worker import run_in_subprocess

PROVIDERS = ("torch", "released", "reference")
MODE = "forward+backward"


def _mib(b):
    return "n/a" if b is None else f"{b / 2**20:,.0f} MiB"


def compare(case: Case, reps: int, providers=PROVIDERS, threads=None, chunk=None) -> list[dict]:
    recs = []
    for p in providers:
        print(f"measuring {p} ...", file=sys.stderr, flush=True)
        recs.extend(run_in_subprocess(p, [case], reps=reps, warmup=1, threads=threads,
                                      torch_chunk_elements=chunk))
    return recs


def _ratio(a, b):
    return f"{a / b:.2f}x" if a and b else "n/a"


def table(recs: list[dict]) -> str:
    """Markdown table of forward+backward, ratios against the torch backend."""
    base = next((r for r in recs if r["provider"] == "torch" and r["status"] == "ok"), None)
    lines = [
        "| provider | fwd+bwd wall (median) | fwd+bwd CPU time | forward wall | backward wall "
        "| extra peak memory | wall / torch | CPU time / torch | memory / torch |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in recs:
        if r["status"] != "ok":
            lines.append(f"| {r['provider']} | {r['status']}: {r.get('error', '')} |"
                         + " |" * 8)
            continue
        fb = r[MODE]
        b = base[MODE] if base else {}
        lines.append(
            f"| {r['provider']} | {fb['time_ms']:,.0f} ms | {fb['cpu_ms']:,.0f} ms | "
            f"{r['forward']['time_ms']:,.0f} ms | {r['backward']['time_ms']:,.0f} ms | "
            f"{_mib(fb['peak_bytes'])} | {_ratio(fb['time_ms'], b.get('time_ms'))} | "
            f"{_ratio(fb['cpu_ms'], b.get('cpu_ms'))} | "
            f"{_ratio(fb['peak_bytes'], b.get('peak_bytes'))} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--k", type=int, default=5000)
    ap.add_argument("--reps", type=int, default=5, help="timed repeats after one warm-up")
    ap.add_argument("--threads", type=int,
                    help="torch threads per provider process (default: one per core); 1 "
                         "gives times that a loaded machine disturbs less")
    ap.add_argument("--torch-chunk-elements", type=int,
                    help="override palu_kernels.backends.torch_rows.CHUNK_ELEMENTS (what-if)")
    ap.add_argument("--json", help="also write the raw records to this file")
    args = ap.parse_args(argv)

    case = Case(rows=args.rows, vocab=args.vocab, k=args.k, init_frac=0.1, common_frac=0.6,
                dtype="fp32")
    env = environment("cpu")
    t0 = time.perf_counter()
    recs = compare(case, args.reps, threads=args.threads, chunk=args.torch_chunk_elements)
    wall = time.perf_counter() - t0
    inputs_mib = case.input_bytes / 2**20
    threads = args.threads or torch.get_num_threads()
    print(f"PALU loss, forward+backward on CPU: {cpu_name()}, {threads} torch thread(s), "
          f"torch {env['torch']}, commit {env['commit']}, {env['timestamp']}")
    print(f"N={case.rows} V={case.vocab} K={case.k_eff} fp32, |I|={case.n_init} "
          f"|C|={case.n_common}; inputs (logits + ref_logits) {inputs_mib:,.0f} MiB; "
          f"median of {args.reps} repeats after 1 warm-up, each provider in a fresh process; "
          f"extra peak = resident peak above the inputs (includes the {inputs_mib / 2:,.0f} MiB "
          f"gradient)")
    if args.torch_chunk_elements:
        print(f"torch backend run with CHUNK_ELEMENTS = {args.torch_chunk_elements} (override; "
              f"the library default is {tb.CHUNK_ELEMENTS})")
    print()
    print(table(recs))
    print()
    ok = {r["provider"]: r for r in recs if r["status"] == "ok"}
    if "torch" in ok and "released" in ok:
        t, rel = ok["torch"][MODE], ok["released"][MODE]
        speed = rel["time_ms"] / t["time_ms"]
        cpu = rel["cpu_ms"] / t["cpu_ms"]
        mem = rel["peak_bytes"] / t["peak_bytes"] if t["peak_bytes"] else float("nan")
        verdict = "met" if min(speed, cpu) >= 3 and mem >= 3 else "NOT met"
        print(f"torch backend vs released: {speed:.2f}x faster (wall), {cpu:.2f}x less CPU "
              f"time, {mem:.2f}x less extra peak memory (goal >= 3x each: {verdict})")
    load = os.getloadavg()[0]
    print(f"wall time {wall:.0f} s; load average at the end {load:.1f} on {os.cpu_count()} "
          f"cores (wall times are inflated on a loaded machine, CPU times much less so)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "case": case.to_dict(), "records": recs}, f, indent=1)
    return 0 if len(ok) == len(recs) else 1


if __name__ == "__main__":
    sys.exit(main())
