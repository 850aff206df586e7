"""bench/gpu.sh --dry-run: every step and every section of the GPU check, on the CPU.

The dry run (tiny shapes, one repeat, the Triton interpreter, a 2-step trainer run) takes
about 35 s on 2 cores; a second, shorter run checks that a section that raises is reported
as failed while the sections after it still run.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WRITTEN = {"gpu.log", "environment.txt", "cuda_tests.txt", "results.json", "results.md",
           "sweep.csv"}
SECTIONS = ("environment", "cuda_tests", "smoke", "exactness", "timing", "compile", "bandwidth",
            "sweep", "trainer")


def dry_run(out, **env):
    """``bash bench/gpu.sh --dry-run`` with ``OUT=out``; returns the CompletedProcess."""
    full_env = {**os.environ, "OUT": str(out), "TRITON_INTERPRET": "1",
                "PYTHON": sys.executable, **env}
    return subprocess.run(["bash", "bench/gpu.sh", "--dry-run"], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=240)


def describe(proc) -> str:
    return f"exit {proc.returncode}\n--- stdout (end)\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-3000:]}"


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_dry")
    proc = dry_run(out)
    return out, proc


def test_dry_run_passes_and_writes_at_most_8_files(clean_run):
    out, proc = clean_run
    assert proc.returncode == 0, describe(proc)
    files = sorted(os.listdir(out))
    assert len(files) <= 8, files
    assert set(files) == WRITTEN, files


def test_results_name_every_section_and_the_markdown_shows_them(clean_run):
    out, proc = clean_run
    doc = json.loads((out / "results.json").read_text())
    assert doc["dry_run"] is True
    for name in SECTIONS:
        assert name in doc["sections"], (name, describe(proc))
        status = doc["sections"][name]["status"]
        assert status.startswith(("ok", "skipped")), (name, status)
    smoke = doc["sections"]["smoke"]["families"]
    assert {f["result"] for f in smoke.values()} == {"PASS"}, smoke
    assert set(smoke) == {"topk_threshold", "palu_local_entropy_loss", "palu_fused_linear_loss"}
    exact = doc["sections"]["exactness"]
    assert exact["topk_sets"]["rows_with_a_wrong_set"] == 0
    assert exact["gradient"]["of_them_with_a_nonzero_gradient"] == 0
    assert doc["sections"]["trainer"]["runs"]["torch"]["steps"] == 2
    md = (out / "results.md").read_text()
    assert "DRY RUN" in md
    for name in SECTIONS:
        assert f"| {name} |" in md, name
    with open(out / "sweep.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and rows[0]["point"] == "default" and rows[0]["status"] == "ok", rows
    log = (out / "gpu.log").read_text()
    for step in ("environment", "cuda_tests", "gpu_check"):
        assert f"=== {step}: exit 0" in log, step


def test_a_section_that_raises_is_failed_and_the_later_ones_still_run(tmp_path):
    proc = dry_run(tmp_path, PALU_GPU_CHECK_FAIL="exactness",
                   GPU_CHECK_SECTIONS="exactness,timing,bandwidth")
    assert proc.returncode == 1, describe(proc)
    assert len(os.listdir(tmp_path)) <= 8
    doc = json.loads((tmp_path / "results.json").read_text())
    secs = doc["sections"]
    assert secs["exactness"]["status"].startswith("failed: RuntimeError: PALU_GPU_CHECK_FAIL")
    assert secs["timing"]["status"] == "ok", secs["timing"]
    assert secs["timing"]["providers"]["triton"]["forward+backward_ms"] > 0
    assert secs["bandwidth"]["status"].startswith("ok"), secs["bandwidth"]
    md = (tmp_path / "results.md").read_text()
    assert "| exactness | failed: RuntimeError: PALU_GPU_CHECK_FAIL" in md
