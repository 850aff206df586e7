"""The static model's profiling subprocess (``python bench/static/worker.py REQUEST OUT``).

Run by ``bench.static.sources.run_profiles`` in a fresh interpreter with one version's
``palu_kernels/`` first on ``sys.path``, so that two versions never share one import of
``palu_kernels``; standard library only at import, so nothing under ``bench/`` is imported
into it.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    sys.path.pop(0)  # run as a script: bench/static/ must not shadow anything in the worker

import json
import os
from pathlib import Path


class SourceError(Exception):
    """A one-line error about this version's source (the parent reports it as it is)."""


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
        res = {"error": msg if type(e).__name__ in ("ProfileError", "SourceError")
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
            raise SourceError(f"cannot import {module} of this version: {type(e).__name__}: {e}")
        if not str(Path(mod.__file__).resolve()).startswith(str(Path(req["src"]).resolve())):
            raise SourceError(f"{module} was imported from {mod.__file__}, not from {req['src']}")
        if not hasattr(mod, fn_name):
            raise SourceError(f"{module} has no kernel {fn_name}")
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



if __name__ == "__main__":
    sys.exit(_worker(*sys.argv[1:3]))
