"""Measure one provider on a list of cases in this (fresh) process; used for CPU memory.

Run by :func:`run_in_subprocess`; prints one ``RESULT <json>`` line per case, as soon as it
is measured, so that a process killed half-way (out of memory) still reports what it did.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from .common import Case, run_case, worker_env

PREFIX = "RESULT "
REPO_ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    spec = json.loads((argv or sys.argv[1:])[0])
    if spec.get("threads"):
        import torch

        torch.set_num_threads(int(spec["threads"]))
    if spec.get("torch_chunk_elements"):  # a what-if knob of the torch backend
        import palu_kernels.backends.torch_rows as tb

        tb.CHUNK_ELEMENTS = int(spec["torch_chunk_elements"])
    for case in spec["cases"]:
        rec = run_case(spec["provider"], Case(**case), spec.get("device", "cpu"),
                       reps=spec.get("reps", 3), warmup=spec.get("warmup", 1))
        print(PREFIX + json.dumps(rec), flush=True)
    return 0


def run_in_subprocess(provider: str, cases, *, reps=3, warmup=1, timeout=900,
                      on_result=None, threads=None, torch_chunk_elements=None) -> list[dict]:
    """Measure ``provider`` on ``cases`` in fresh CPU processes, one record per case.

    ``on_result(record)`` is called as each case finishes (for progress bars). A case that
    kills its process, or runs past ``timeout`` seconds, is recorded as failed and the
    remaining cases go on in a new process. ``threads``: torch intra-op threads of the
    worker (default: torch's choice, one per core). ``torch_chunk_elements`` overrides the
    torch backend's ``CHUNK_ELEMENTS`` in the worker (to measure a proposed setting).
    """
    cases = list(cases)
    out = []
    while len(out) < len(cases):
        todo = cases[len(out):]
        spec = {"provider": provider, "device": "cpu", "reps": reps, "warmup": warmup,
                "threads": threads, "torch_chunk_elements": torch_chunk_elements,
                "cases": [c.to_dict() for c in todo]}
        cmd = [sys.executable, "-m", "bench.worker", json.dumps(spec)]
        with tempfile.TemporaryFile("w+") as errf:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errf, text=True,
                                    env=worker_env(), cwd=REPO_ROOT)
            timed_out = []

            def kill(p=proc):
                timed_out.append(True)
                p.kill()

            timer = threading.Timer(timeout, kill)
            timer.start()
            try:
                for line in proc.stdout:
                    if line.startswith(PREFIX):
                        rec = json.loads(line[len(PREFIX):])
                        out.append(rec)
                        if on_result:
                            on_result(rec)
                        timer.cancel()  # one timeout per case
                        timer = threading.Timer(timeout, kill)
                        timer.start()
            finally:
                timer.cancel()
                proc.wait()
            errf.seek(0)
            tail = errf.read().strip().splitlines()[-1:]
        if len(out) < len(cases):  # the next case killed the process
            why = f"timed out after {timeout} s" if timed_out else (
                f"worker exited with {proc.returncode}")
            rec = {"provider": provider, "case": cases[len(out)].to_dict(), "device": "cpu",
                   "status": "failed", "error": "; ".join([why] + tail)[:300]}
            out.append(rec)
            if on_result:
                on_result(rec)
    return out


if __name__ == "__main__":
    sys.exit(main())
