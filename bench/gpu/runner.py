"""Running the sections: the environment, the CUDA tests' record, one section per
subprocess under its own time limit, and the signal handling that keeps results.json whole."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

from bench.gpu.core import (DRY_CAP_FACTOR, IN_PROCESS, RUNNING, SCRIPT, SECTIONS, Context,
                            Results, mark_unfinished, missing_packages, now, one_line,
                            plan_text, versions)
from bench.gpu.exactness import sec_exactness
from bench.gpu.smoke import sec_smoke
from bench.gpu.sweep import sec_sweep
from bench.gpu.timing import sec_bandwidth, sec_compile, sec_timing
from bench.gpu.trainer import sec_trainer

def collect_environment(dry_run: bool) -> dict:
    import torch

    from bench.common import environment, peak_bandwidth_gbps

    device = "cuda" if torch.cuda.is_available() and not dry_run else "cpu"
    env = environment(device)
    env["device"] = device
    env["dry_run"] = dry_run
    env["cuda"] = torch.version.cuda
    env["triton_interpret"] = os.environ.get("TRITON_INTERPRET", "0")
    for mod, version in versions().items():  # the image's, whatever the project pins
        env.setdefault(mod, version)
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env["gpu_memory_bytes"] = props.total_memory
        env["sm_count"] = props.multi_processor_count
        env["capability"] = f"{props.major}.{props.minor}"
    elif not dry_run:
        env["warning"] = "no CUDA device visible to torch"
    try:
        env["peak_GBps"], env["peak_source"] = peak_bandwidth_gbps(device)
    except Exception as e:  # noqa: BLE001 - the GB/s figures then go without a peak
        env["peak_GBps"], env["peak_source"] = None, f"failed: {one_line(e)}"
    return env


def cmd_environment(out: str, dry_run: bool) -> int:
    results = Results(out)
    results.start(dry_run)
    results.set("environment", value={"status": RUNNING})
    try:
        env = collect_environment(dry_run)
        env["status"] = "ok" if dry_run or env["device"] == "cuda" else "failed: no CUDA device"
    except Exception as e:  # noqa: BLE001
        env = {"status": f"failed: {one_line(e)}"}
    results.set("environment", value=env)
    for key, value in env.items():
        print(f"{key}: {value}")
    return 0 if env["status"] == "ok" else 1


def _pytest_summary(lines: list) -> str:
    """pytest's last summary line (``= 3 passed, 1 skipped in 2.1s =``), or ''."""
    for line in reversed(lines):
        if any(w in line for w in (" passed", " failed", " skipped", " error", "no tests ran",
                                   " deselected")) and " in " in line:
            return line.strip("= ")
    return ""


def _count_results(lines: list, junit: str | None) -> str:
    """When pytest wrote no summary line (killed): the outcome counted from its junit XML, or
    from its one-line-per-test (-v) output."""
    counts: dict = {}
    if junit and os.path.isfile(junit):
        import xml.etree.ElementTree as ET

        try:
            for case in ET.parse(junit).getroot().iter("testcase"):
                kids = {c.tag for c in case}
                kind = ("failed" if "failure" in kids else "error" if "error" in kids else
                        "skipped" if "skipped" in kids else "passed")
                counts[kind] = counts.get(kind, 0) + 1
        except ET.ParseError:
            counts = {}
    if not counts:
        for line in lines:
            for word, kind in ((" PASSED", "passed"), (" FAILED", "failed"),
                               (" SKIPPED", "skipped"), (" ERROR", "error")):
                if "::" in line and word in line:
                    counts[kind] = counts.get(kind, 0) + 1
    return ", ".join(f"{v} {k}" for k, v in counts.items())


def cmd_record_tests(out: str, path: str, rc: int, skip: str | None = None,
                     junit: str | None = None) -> int:
    """Record the CUDA tests' outcome: pytest's summary line (or, when it was killed before
    writing one, the tests counted from its junit XML or its per-test lines), exit code."""
    if skip:
        Results(out).set("cuda_tests", value={"status": f"skipped: {skip}", "summary": "",
                                              "exit_code": None})
        print(f"cuda tests: skipped: {skip}")
        return 0
    lines = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = [ln.strip() for ln in f if ln.strip()]
        summary = _pytest_summary(lines)
    except OSError as e:
        summary = f"no output ({one_line(e)})"
    if not summary and not lines:
        summary = "no output"
    elif not summary:
        counted = _count_results(lines, junit)
        summary = f"no pytest summary line; counted: {counted or 'nothing'}"
    interrupted = any("KeyboardInterrupt" in ln for ln in lines)
    if rc == 0:
        status = "ok"
    elif rc in (124, 137) or interrupted:
        status = ("timed out (its limit in bench/gpu.sh); pytest was interrupted and wrote "
                  "its summary" if interrupted else "timed out (its limit in bench/gpu.sh)")
    else:
        status = f"failed: pytest exit code {rc}"
    doc = {"status": status, "summary": summary, "exit_code": rc,
           "output": os.path.basename(path)}
    if junit and os.path.isfile(junit):
        doc["junit"] = os.path.basename(junit)
    Results(out).set("cuda_tests", value=doc)
    print(f"cuda tests: {status}: {summary}")
    return 0


# ---------------------------------------------------------------- running the sections

FUNCTIONS = {"smoke": sec_smoke, "exactness": sec_exactness, "timing": sec_timing,
             "compile": sec_compile, "sweep": sec_sweep, "trainer": sec_trainer}


def run_child(name: str, out: str, dry_run: bool, deadline: float, tmp: str) -> int:
    """One section, in this (sub)process: its status goes to results.json."""
    results = Results(out)
    t0 = time.time()
    try:
        if os.environ.get("PALU_GPU_CHECK_FAIL") == name:
            raise RuntimeError(f"PALU_GPU_CHECK_FAIL={name}: this section was made to fail")
        status = FUNCTIONS[name](Context(out, name, dry_run, deadline, tmp))
    except Exception as e:  # noqa: BLE001 - reported, and the next section still runs
        traceback.print_exc()
        status = f"failed: {one_line(e)}"
    sec = results.section(name)
    mark_unfinished(sec, "failed: not finished")
    sec.update(status=status, seconds=round(time.time() - t0, 1))
    results.set(name, value=sec)
    print(f"=== {name}: {status}", flush=True)
    return 0 if status.startswith(("ok", "skipped")) else 1


def dry_factor() -> float:
    """How much longer than on a GPU a dry run's sections may take: twice GPU_DRY_FACTOR (set
    by bench/gpu.sh, which stretches the steps' limits by it), else DRY_CAP_FACTOR. Twice:
    the steps' limits mostly cover process start-up, the sections' caps the Triton
    interpreter, which a loaded CPU slows most; the step's own limit still bounds them."""
    try:
        return max(1.0, 2 * float(os.environ["GPU_DRY_FACTOR"]))
    except (KeyError, ValueError):
        return float(DRY_CAP_FACTOR)


def section_limit(name: str, order: list, end: float, factor: float = 1.0) -> float:
    """Seconds for ``name``: its cap, less whatever the later sections' floors need (caps and
    floors times ``factor``: DRY_CAP_FACTOR in a dry run, whose budget gpu.sh stretches
    alike)."""
    later = order[order.index(name) + 1:]
    reserve = factor * sum(SECTIONS[s][2] for s in later)
    return min(factor * SECTIONS[name][1], end - time.time() - reserve)


_CURRENT = {"proc": None, "name": None, "results": None}


def _on_signal(signum, frame):
    """Stopped from outside (gpu.sh's timeout): end the running section's process group,
    say so in results.json, and exit."""
    proc, name, results = _CURRENT["proc"], _CURRENT["name"], _CURRENT["results"]
    if proc is not None and proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
    if name and results:
        sec = results.section(name)
        why = f"interrupted: the whole check was stopped (signal {signum})"
        mark_unfinished(sec, why)
        if sec.get("status") in (None, RUNNING):
            sec["status"] = why
        results.set(name, value=sec)
    raise SystemExit(128 + signum)  # run_all's finally removes the scratch folder


def run_all(out: str, dry_run: bool, names: list, budget_s: float) -> int:
    results = Results(out)
    if "environment" not in results.load().get("sections", {}):
        cmd = [sys.executable, SCRIPT, "--environment", "--out", out]
        try:
            subprocess.run(cmd + (["--dry-run"] if dry_run else []), timeout=120, check=False)
        except subprocess.TimeoutExpired:
            results.set("environment", value={"status": "timed out: after 120 s"})
    env = results.section("environment")
    if not dry_run and env.get("device") != "cuda":
        why = ("skipped: no CUDA device visible to torch" if env.get("device") == "cpu" else
               "skipped: the environment step failed, so no CUDA device is known")
        for name in names:
            results.set(name, value={"status": why}, replace=True)
        print(f"=== gpu_check: {why} (use --dry-run on a CPU)", flush=True)
        return 1
    end = time.time() + budget_s
    print(plan_text(names, budget_s) + (f"; dry run: caps x{dry_factor():g}, the Triton "
          "interpreter on a CPU is slow" if dry_run else ""), flush=True)
    # Scratch space of the sections (the trainer's models), removed here even when a section
    # is killed; never under --out.
    tmp = tempfile.mkdtemp(prefix="palu_gpu_check_")
    try:
        return _run_sections(results, dry_run, names, budget_s, end, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run_sections(results: Results, dry_run: bool, names: list, budget_s: float, end: float,
                  tmp: str) -> int:
    out = results.out
    _CURRENT["results"] = results
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    failed = []
    for name in names:
        title = SECTIONS[name][0]
        print(f"\n=== {name}: {title} ({now()})", flush=True)
        missing = missing_packages(SECTIONS[name][3])
        if missing:
            why = f"skipped: needs {', '.join(missing)}, not installed"
            results.set(name, value={"status": why}, replace=True)
            print(f"=== {name}: {why}", flush=True)
            continue
        if name in IN_PROCESS:
            try:
                status = sec_bandwidth(results)
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                status = f"failed: {one_line(e)}"
            # merged: sec_bandwidth wrote its entries there (replacing them lost the table)
            results.set(name, value={"status": status})
            print(f"=== {name}: {status}", flush=True)
            if not status.startswith(("ok", "skipped")):
                failed.append(name)
            continue
        limit = section_limit(name, names, end, dry_factor() if dry_run else 1.0)
        if limit < 5:
            results.set(name, value={"status": f"skipped: no time left in the {budget_s:.0f} s "
                                               "budget"}, replace=True)
            print(f"=== {name}: skipped, no time left", flush=True)
            failed.append(name)
            continue
        results.set(name, value={"status": RUNNING, "limit_s": round(limit)}, replace=True)
        cmd = [sys.executable, SCRIPT, "--child", name, "--out", out,
               "--deadline", f"{time.time() + limit:.1f}", "--tmp", tmp]
        cmd += ["--dry-run"] if dry_run else []
        t0 = time.time()
        proc = subprocess.Popen(cmd, start_new_session=True)  # its own group, to end it whole
        _CURRENT.update(proc=proc, name=name)
        try:
            rc = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
        _CURRENT.update(proc=None, name=None)
        sec = results.section(name)
        if rc is None:
            why = f"timed out: stopped after its {limit:.0f} s limit; what it measured is kept"
            mark_unfinished(sec, why)
            sec["status"] = why
        elif sec.get("status") in (None, RUNNING):  # died without reporting (crash, OOM kill)
            why = (f"failed: the section's process ended with exit code {rc}" if rc >= 0 else
                   f"failed: the section's process was killed by signal {-rc}")
            mark_unfinished(sec, why)
            sec["status"] = why
        sec["seconds"] = round(time.time() - t0, 1)
        results.set(name, value=sec)
        if not str(sec["status"]).startswith(("ok", "skipped")):
            failed.append(name)
    print(f"\n=== gpu_check: {len(names) - len(failed)} of {len(names)} sections ok or skipped"
          + (f"; not ok: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0
