"""What every section of the GPU check shares: the results files, the section table and its
time budget, the per-section context and the timer.

Only one process writes the results at a time (the parent waits for each section's
subprocess), so a read-modify-write needs no lock.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import os
import statistics
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO_ROOT, "bench", "gpu_check.py")  # the sections' subprocesses run it

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
SWEEP_CSV = "sweep.csv"

# name: (title, time cap in s, time floor in s, packages it needs). Each section gets at most
# its cap, and never eats into the floors of the sections after it (see runner.section_limit);
# the caps add up to CHECK_BUDGET_S, the budget bench/gpu.sh plans for this step. A section
# whose packages are missing is skipped with a one-line reason. "bandwidth" only does
# arithmetic on measured times and runs in the parent process.
KERNELS = ("torch", "triton")
SECTIONS = {
    "smoke": ("a. compile smoke test against the fp64 reference", 35, 15, KERNELS),
    "exactness": ("b. exactness at the headline case", 20, 10, KERNELS),
    "timing": ("c. forward / backward times at the headline case", 35, 15, KERNELS),
    "compile": ("c. torch.compile of the reference at the headline case", 30, 10, ("torch",)),
    "bandwidth": ("d. achieved bandwidth against the device's peak", 0, 0, ()),
    "sweep": ("e. tile / warps sweep of the triton forward", 20, 10, KERNELS),
    "trainer": ("f. palu-unlearn smoke test", 60, 30,
                (*KERNELS, "transformers", "accelerate", "safetensors")),
}
CHECK_BUDGET_S = sum(s[1] for s in SECTIONS.values())  # 200
DRY_CAP_FACTOR = 6  # --dry-run: caps and floors x6 (twice bench/gpu.sh's GPU_DRY_FACTOR)
IN_PROCESS = ("bandwidth",)
VERSIONED = ("torch", "triton", "transformers", "accelerate", "safetensors", "hypothesis")


def missing_packages(names) -> list:
    """The packages of ``names`` that cannot be imported here (found without importing)."""
    out = []
    for name in names:
        try:
            if importlib.util.find_spec(name) is None:
                out.append(name)
        except (ImportError, ValueError):
            out.append(name)
    return out


def versions(names=VERSIONED) -> dict:
    """name -> installed version (package metadata, nothing imported), or "not installed"."""
    from importlib import metadata

    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def plan_text(names, budget_s: float) -> str:
    """One line: each section's cap, their sum and the budget."""
    caps = [(n, SECTIONS[n][1]) for n in names if SECTIONS[n][1]]
    total = sum(c for _, c in caps)
    return ("gpu_check plan: " + " + ".join(f"{n} {c}" for n, c in caps)
            + f" = {total} s of caps in a {budget_s:.0f} s budget (each section also leaves "
            "the floors of the later ones)")


HEADLINE = dict(rows=8192, vocab=128256, k=5000, init_frac=0.1, common_frac=0.6, dtype="bf16")
DRY_CASE = dict(rows=8, vocab=300, k=5, init_frac=0.1, common_frac=0.6, dtype="bf16")

RUNNING = "running"


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def one_line(e: BaseException) -> str:
    """``Type: first line of the message`` (at most 300 characters)."""
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0] if msg else ''}"[:300]


class Results:
    """``results.json`` and ``results.md`` under ``out``, rewritten atomically on every change.

    Only one process writes at a time (the parent waits for each section's subprocess), so a
    read-modify-write needs no lock.
    """

    def __init__(self, out: str):
        self.out = out
        self.path = os.path.join(out, RESULTS_JSON)

    def load(self) -> dict:
        try:
            with open(self.path, encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def start(self, dry_run: bool) -> None:
        """A fresh file (the previous run's numbers are dropped)."""
        self.save({"script": "bench/gpu_check.py", "dry_run": dry_run, "started": now(),
                   "sections": {}})

    def save(self, doc: dict) -> None:
        doc["updated"] = now()
        _write_atomic(self.path, json.dumps(doc, indent=1, default=str) + "\n")
        from bench.gpu.report import render_markdown

        _write_atomic(os.path.join(self.out, RESULTS_MD), render_markdown(doc))

    def section(self, name: str) -> dict:
        return self.load().get("sections", {}).get(name, {})

    def set(self, section: str, *path, value, replace: bool = False) -> None:
        """``sections[section][path[0]]...[path[-1]] = value``; with no ``path``, ``value`` (a
        dict) is merged into the section, or replaces it with ``replace=True``."""
        doc = self.load()
        doc.setdefault("sections", {})
        if replace:
            doc["sections"][section] = {}
        node = doc["sections"].setdefault(section, {})
        if not path:
            node.update(value)
        else:
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = value
        self.save(doc)


def _write_atomic(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def mark_unfinished(node, why: str) -> None:
    """Every entry still marked ``running`` under ``node`` gets ``why`` as its status."""
    if isinstance(node, dict):
        if node.get("status") == RUNNING:
            node["status"] = why
        for value in node.values():
            mark_unfinished(value, why)


# --------------------------------------------------------------------------- the context

class Context:
    """What a section needs: device, shapes, repeats, its deadline and the results file."""

    def __init__(self, out: str, section: str, dry_run: bool, deadline: float, tmp: str):
        import torch

        self.out, self.section, self.dry, self.deadline = out, section, dry_run, deadline
        self.tmp = tmp  # scratch folder, removed by the parent process
        self.results = Results(out)
        if dry_run:
            self.device = "cpu"
        elif torch.cuda.is_available():
            self.device = "cuda"
        else:
            raise RuntimeError("no CUDA device visible to torch (use --dry-run on a CPU)")
        self.cuda = self.device == "cuda"
        from bench.common import Case

        self.case = Case(**(DRY_CASE if dry_run else HEADLINE))
        self.reps = 1 if dry_run else 5
        self.warmup = 1 if dry_run else 2

    def put(self, *path, value) -> None:
        self.results.set(self.section, *path, value=value)

    def left(self) -> float:
        return self.deadline - time.time()

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def free(self) -> None:
        import gc

        import torch

        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()


def time_ms(ctx: Context, fn, setup=None) -> float:
    """Median time of ``fn(setup())`` in ms over ``ctx.reps`` repeats after ``ctx.warmup``
    calls (CUDA events on a GPU, ``perf_counter`` on the CPU); ``setup`` is not timed."""
    import torch

    for _ in range(ctx.warmup):
        fn(setup() if setup else None)
    ctx.sync()
    times = []
    for _ in range(ctx.reps):
        arg = setup() if setup else None
        if ctx.cuda:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn(arg)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            fn(arg)
            times.append(1e3 * (time.perf_counter() - t))
    return statistics.median(times)

def _run_entry(ctx: Context, path: tuple, measure) -> bool:
    """Run ``measure(note)`` as the entry ``path`` of the section: marked running first, each
    ``note(key, value)`` written at once, then the status (ok, or failed with what was noted
    before the failure kept)."""
    label = " / ".join(path)
    res = {"status": RUNNING}
    ctx.put(*path, value=res)
    print(f"-- {label} ...", flush=True)

    def note(key, value):
        res[key] = value
        ctx.put(*path, value=res)

    try:
        measure(note)
        res["status"] = "ok"
    except Exception as e:  # noqa: BLE001 - an out-of-memory baseline is a result
        res["status"] = f"failed: {one_line(e)}"
    ctx.put(*path, value=res)
    print(f"   {label}: {res}", flush=True)
    ctx.free()
    return res["status"] == "ok"

def _gbps(nbytes, ms):
    """GB/s of ``nbytes`` moved in ``ms``; None when either is missing or not positive."""
    if not nbytes or not ms or ms <= 0:
        return None
    return nbytes / ms / 1e6


def _fraction(gbps, peak):
    if gbps is None or not peak or peak <= 0:
        return None
    return gbps / peak
