"""A version's kernel source for the static model: its ``palu_kernels/`` in a temporary
directory (``materialise``), its loops by their ``# LOOP:`` markers (``find_loop_lines``), and
the profile of its kernels from a fresh interpreter (``run_profiles``, which runs
``bench/static/worker.py``)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from .model import ModelError

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO.parent / "shared" / "tools"  # ../shared/tools from the repository root
SASS_PROFILE = TOOLS / "sass_profile.py"
WORKER = Path(__file__).resolve().parent / "worker.py"
LOOP_MARKER = re.compile(r"#\s*LOOP:\s*([A-Za-z_]\w*)\s*$")


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
    dirty = _git("status", "--porcelain", "--", "palu_kernels/backends").strip()  # kernels
    return f"working tree (HEAD {head}{', palu_kernels/backends/ modified' if dirty else ''})"


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
        r = subprocess.run([sys.executable, str(WORKER), str(req_path), str(out_path)],
                           cwd=src, env=env, capture_output=True, text=True, timeout=1800)
    except subprocess.TimeoutExpired:
        raise ModelError("profiling took more than 30 minutes") from None
    if out_path.is_file():
        res = json.loads(out_path.read_text())
        if "error" in res:
            raise ModelError(res["error"])
        return res
    tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
    raise ModelError(f"the profiling subprocess failed (exit {r.returncode}): {tail}")

