"""Compile the kernels once, in parallel, before the CUDA tests and the GPU check run.

    python3 -m bench.gpu.warmup --limit-s 58 [--jobs 8] [--dry-run]

Under triton 3.6 one kernel variant takes about 3.7 s to compile, and the CUDA tests and the
sections compile a few dozen variants one after another. Here the tests of
``tests/test_triton_cuda.py`` are split round-robin into ``--jobs`` shards, and each shard runs
as its own pytest process, all at once (plus, on a GPU, the ``smoke`` and ``compile`` sections
of the GPU check, into a scratch folder). Every process compiles into the same Triton cache
(``TRITON_CACHE_DIR``, which bench/gpu.sh sets before every step; torch.compile's inductor
keeps its own cache under /tmp), so the real runs that follow load the compiled kernels
instead of compiling them: the compiles are shared, and done on all CPU cores at once.

Nothing here is a result: the shards' outcomes go to the log only (the tests run again, in
one process, in the next step). Every shard stops at ``--limit-s`` (its process group is
killed), so the step never overruns. Exit status 0 unless the tests could not be listed.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TESTS = "tests/test_triton_cuda.py"
NEEDS = ("pytest", "hypothesis", "torch", "triton")
# Sections of the GPU check run here too, on a GPU: ``smoke`` compiles kernel variants the
# tests do not (its shapes), ``compile`` fills inductor's cache (torch.compile of the
# reference at the headline case), which its real run then loads.
SECTIONS_TOO = ("smoke", "compile")


def cache_files(path: str | None) -> int:
    """How many files the Triton cache holds (0 when it does not exist)."""
    if not path or not os.path.isdir(path):
        return 0
    return sum(len(files) for _, _, files in os.walk(path))


def collect(python: str, timeout: float) -> list:
    """The test ids of ``TESTS`` (pytest --collect-only), in file order."""
    r = subprocess.run([python, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                        TESTS], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
    ids = [ln.strip() for ln in r.stdout.splitlines() if ln.startswith(TESTS + "::")]
    if not ids:
        tail = (r.stdout + r.stderr).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"pytest --collect-only {TESTS} listed no test: {tail[0]}")
    return ids


def shards(ids: list, jobs: int) -> list:
    """``ids`` dealt round-robin into at most ``jobs`` non-empty shards."""
    jobs = max(1, min(jobs, len(ids)))
    return [ids[j::jobs] for j in range(jobs)]


def main(argv=None) -> int:
    from bench.gpu.core import SCRIPT, missing_packages

    ap = argparse.ArgumentParser(prog="bench.gpu.warmup", description=__doc__.split("\n")[0])
    ap.add_argument("--limit-s", type=float, default=58, help="wall-time limit of the step")
    ap.add_argument("--jobs", type=int, default=None,
                    help="pytest processes at once (default: min(8, CPUs); 1 in --dry-run)")
    ap.add_argument("--dry-run", action="store_true",
                    help="on the CPU: the same steps, nothing to compile (the tests skip)")
    a = ap.parse_args(argv)
    t0 = time.time()
    end = t0 + a.limit_s
    missing = missing_packages(NEEDS)
    if missing:
        print(f"warmup: skipped: needs {', '.join(missing)}, not installed", flush=True)
        return 0
    cache = os.environ.get("TRITON_CACHE_DIR")
    before = cache_files(cache)
    jobs = a.jobs or (1 if a.dry_run else min(8, os.cpu_count() or 1))
    if a.dry_run:  # nothing to compile: one shard, the whole file, no separate listing
        ids, groups = [TESTS], [[TESTS]]
    else:
        try:
            ids = collect(sys.executable, timeout=max(5.0, min(60.0, end - time.time())))
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            print(f"warmup: failed: {e}", flush=True)
            return 1
        groups = shards(ids, jobs)
    env = {**os.environ, "PALU_TEST_DEADLINE": f"{end - 3:.1f}"}  # conftest skips after it
    scratch = tempfile.mkdtemp(prefix="palu_warmup_")
    procs = []
    for j, group in enumerate(groups):
        log = open(os.path.join(scratch, f"shard{j}.log"), "w")
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *group]
        what = "the whole file" if a.dry_run else f"{len(group)} tests"
        procs.append((f"tests shard {j + 1}/{len(groups)} ({what})", log,
                      subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)))
    for name in () if a.dry_run else SECTIONS_TOO:  # into a throwaway results folder
        log = open(os.path.join(scratch, f"{name}.log"), "w")
        cmd = [sys.executable, SCRIPT, "--child", name, "--out", os.path.join(scratch, "out"),
               "--deadline", f"{end - 3:.1f}", "--tmp", scratch]
        procs.append((f"the {name} section", log, subprocess.Popen(
            cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)))
    print(f"warmup: {'the' if a.dry_run else len(ids)} CUDA tests in {len(groups)} pytest "
          f"process{'es' if len(groups) > 1 else ''} at once"
          + ("" if a.dry_run else " + the sections " + ", ".join(SECTIONS_TOO))
          + f", limit {a.limit_s:.0f} s, Triton cache {cache or '(triton default)'}", flush=True)
    for label, log, proc in procs:
        try:
            rc = proc.wait(timeout=max(0.1, end - time.time()))
            how = f"exit {rc}"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            how = "stopped at the step's limit"
        log.close()
        with open(log.name, encoding="utf-8", errors="replace") as f:
            last = [ln.strip() for ln in f if ln.strip()][-1:] or ["no output"]
        print(f"warmup: {label}: {how} after {time.time() - t0:.0f} s: {last[0][:160]}",
              flush=True)
    after = cache_files(cache)
    print(f"warmup: done in {time.time() - t0:.0f} s; Triton cache: {before} -> {after} files"
          + (" (the interpreter compiles nothing)" if a.dry_run else ""), flush=True)
    import shutil

    shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    if REPO_ROOT not in sys.path:
        sys.path.insert(0, REPO_ROOT)
    sys.exit(main())
