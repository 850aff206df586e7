"""bench/gpu.sh --dry-run: every step and every section of the GPU check, on the CPU.

The dry run (tiny shapes, one repeat, the Triton interpreter, a 2-step trainer run) takes
about a minute on 2 cores (two on a loaded machine); a second, shorter run checks that a
section that raises is reported as failed while the sections after it still run. The rest
(the CUDA tests' record, the warm-up's shards, a section whose package is missing, the test
deadline) runs in well under a second each, but the deadline test's pytest.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WRITTEN = {"gpu.log", "environment.txt", "cuda_tests.txt", "cuda_tests.xml", "results.json",
           "results.md", "sweep.csv"}
VERSIONED = ("torch", "triton", "transformers", "accelerate", "safetensors", "hypothesis")
SECTIONS = ("environment", "cuda_tests", "smoke", "exactness", "timing", "compile", "bandwidth",
            "sweep", "trainer")


def dry_run(out, **env):
    """``bash bench/gpu.sh --dry-run`` with ``OUT=out``; returns the CompletedProcess."""
    full_env = {**os.environ, "OUT": str(out), "TRITON_INTERPRET": "1",
                "PYTHON": sys.executable, **env}
    return subprocess.run(["bash", "bench/gpu.sh", "--dry-run"], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=1500)  # gpu.sh: 3 x 480 s at most


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
    # the bandwidth against both floors: the dense one counts the zero gradient rows too
    bw = doc["sections"]["bandwidth"]
    assert bw["dense_min_bytes"] > bw["min_bytes"] > 0
    fb = [e for e in bw["entries"] if e["mode"] == "forward+backward" and e["fraction_of_peak"]]
    assert fb, bw
    for e in fb:
        assert e["fraction_of_peak_dense"] == pytest.approx(
            e["fraction_of_peak"] * bw["dense_min_bytes"] / bw["min_bytes"])
    md = (out / "results.md").read_text()
    assert "DRY RUN" in md
    for name in SECTIONS:
        assert f"| {name} |" in md, name
    with open(out / "sweep.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and rows[0]["point"] == "default" and rows[0]["status"] == "ok", rows
    log = (out / "gpu.log").read_text()
    for step in ("environment", "warmup", "cuda_tests", "gpu_check"):
        assert f"=== {step}: exit 0" in log, step


def test_the_first_lines_give_the_planned_budget_and_the_versions(clean_run):
    """The plan (every step's limit, their sum at most GPU_TOTAL_S = 480 s) and the versions of
    the six packages the steps use come first, on the terminal and in gpu.log; the run ends
    inside the budget and says so."""
    out, proc = clean_run
    first = proc.stdout.splitlines()[:3]
    m = re.match(r"=== plan: budget (\d+) s \(GPU_TOTAL_S\): environment (\d+) \+ warmup (\d+) "
                 r"\+ cuda_tests (\d+) \+ gpu_check (\d+) \+ fsdp (\d+) \+ tofu (\d+) = (\d+) s "
                 r"planned, "
                 r"(\d+) s margin", first[0])
    assert m, first
    total, *steps, planned, margin = map(int, m.groups())
    assert total == 480 and sum(steps) == planned <= total and margin == total - planned > 0
    assert steps[5] == 0  # the TOFU-scale step is not in the dry run: it says so
    assert "=== tofu: skipped in --dry-run" in proc.stdout
    assert first[1].startswith("=== versions: "), first
    for name in VERSIONED:
        assert re.search(rf"\b{name} \S+", first[1]), (name, first[1])
    log = (out / "gpu.log").read_text().splitlines()
    assert log[:2] == first[:2]
    done = [ln for ln in log if ln.startswith("=== done in ")]
    assert done and int(done[-1].split()[3]) <= 3 * total, done  # dry run: limits x3
    # the sections' caps fit the check's planned step
    from bench.gpu.core import CHECK_BUDGET_S, SECTIONS
    assert CHECK_BUDGET_S == sum(s[1] for s in SECTIONS.values()) <= steps[3]


def test_a_plan_over_the_total_is_refused(tmp_path):
    proc = dry_run(tmp_path, GPU_TOTAL_S="300")
    assert proc.returncode == 2, describe(proc)
    assert "plan refused" in proc.stdout
    assert not (tmp_path / "results.json").exists()  # nothing ran


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


# ----------------------------------------------------------------- pieces, without a run

def test_record_tests_counts_the_tests_when_pytest_was_killed(tmp_path):
    """No summary line (pytest killed at its hard limit): the tests are counted from the junit
    XML, else from the -v lines; with a skip reason, the step is recorded as skipped."""
    from bench.gpu.core import Results
    from bench.gpu.runner import cmd_record_tests

    out = tmp_path
    Results(str(out)).start(dry_run=True)
    txt = out / "cuda_tests.txt"
    txt.write_text("tests/test_triton_cuda.py::test_a PASSED [ 50%]\n"
                   "tests/test_triton_cuda.py::test_b FAILED [100%]\n")
    xml = out / "cuda_tests.xml"
    xml.write_text('<testsuites><testsuite><testcase name="a"/><testcase name="b"><failure/>'
                   '</testcase><testcase name="c"><skipped/></testcase></testsuite></testsuites>')
    cmd_record_tests(str(out), str(txt), 137, junit=str(xml))
    rec = Results(str(out)).section("cuda_tests")
    assert rec["status"].startswith("timed out")
    assert rec["summary"] == "no pytest summary line; counted: 1 passed, 1 failed, 1 skipped"
    xml.unlink()
    cmd_record_tests(str(out), str(txt), 137, junit=str(xml))
    assert Results(str(out)).section("cuda_tests")["summary"].endswith("1 passed, 1 failed")
    txt.write_text("...\n!!! KeyboardInterrupt !!!\n========= 3 passed, 1 skipped in 80.1s ====\n")
    cmd_record_tests(str(out), str(txt), 124)
    rec = Results(str(out)).section("cuda_tests")
    assert rec["summary"] == "3 passed, 1 skipped in 80.1s"
    assert "interrupted and wrote its summary" in rec["status"]
    cmd_record_tests(str(out), str(txt), 0, skip="needs hypothesis, not installed")
    assert Results(str(out)).section("cuda_tests")["status"] == \
        "skipped: needs hypothesis, not installed"


def test_a_section_whose_package_is_missing_is_skipped_with_its_reason(tmp_path, monkeypatch):
    from bench.gpu import core, runner

    assert core.missing_packages(["json", "no_such_package_xyz"]) == ["no_such_package_xyz"]
    assert core.versions(["no_such_package_xyz"]) == {"no_such_package_xyz": "not installed"}
    results = core.Results(str(tmp_path))
    results.start(dry_run=True)
    results.set("environment", value={"status": "ok", "device": "cpu"})
    title, cap, floor, _ = core.SECTIONS["bandwidth"]
    monkeypatch.setitem(core.SECTIONS, "bandwidth", (title, cap, floor, ("no_such_package_xyz",)))
    assert runner.run_all(str(tmp_path), True, ["bandwidth"], 10) == 0
    assert results.section("bandwidth")["status"] == "skipped: needs no_such_package_xyz, not " \
                                                      "installed"
    md = (tmp_path / "results.md").read_text()
    assert "| bandwidth | skipped: needs no_such_package_xyz" in md


def test_warmup_shards_deal_every_test_once():
    from bench.gpu.warmup import shards

    ids = [f"t{i}" for i in range(31)]
    for jobs in (1, 2, 8, 31, 50):
        got = shards(ids, jobs)
        assert len(got) == min(jobs, len(ids)) and all(got)
        assert sorted(sum(got, [])) == sorted(ids)
        assert max(map(len, got)) - min(map(len, got)) <= 1
    assert shards(["a"], 0) == [["a"]]


def test_tests_past_the_deadline_skip_and_pytest_still_sums_up():
    env = {**os.environ, "PALU_TEST_DEADLINE": "1"}  # long past
    proc = subprocess.run([sys.executable, "-m", "pytest", "tests/test_masks.py", "-q", "-rs",
                           "-p", "no:cacheprovider"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "time budget of this run is spent" in proc.stdout
    assert re.search(r"\b\d+ skipped in ", proc.stdout) and " passed" not in proc.stdout


def test_warmup_lists_every_cuda_test():
    """The warm-up's shards come from pytest's own listing of tests/test_triton_cuda.py (also
    on a CPU, where the tests then skip): parametrised tests one id per case."""
    from bench.gpu.warmup import TESTS, collect

    ids = collect(sys.executable, timeout=300)
    assert ids and all(i.startswith(TESTS + "::") for i in ids)
    assert len(ids) == len(set(ids)) >= 30
    assert sum("test_bf16_subnormals_at_the_top_k_boundary[" in i for i in ids) == 4
