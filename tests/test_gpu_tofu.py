"""bench/gpu_tofu.sh (tofu-smollm2 at TOFU's scale on a GPU) and the model's two-call carry
(bench/gpu/tofu_carry.py), on the CPU: the dry run at the toy size (a tiny model, seconds), a
budget that runs out, no GPU, bad arguments; the halves joined and checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOFU = os.path.join(ROOT, "..", "shared", "data", "tofu")
needs_tofu = pytest.mark.skipif(not os.path.isdir(TOFU),
                                reason="../shared/data/tofu is absent (the TOFU data beside "
                                       "the repository)")


def script(tmp_path, *args, **env):
    full = {**os.environ, "OUT": str(tmp_path / "out"), "TMPDIR": str(tmp_path),
            "PYTHON": sys.executable, "GPU_CARRY": str(tmp_path / "no-carry"), **env}
    full.pop("TRITON_INTERPRET", None)
    return subprocess.run(["bash", "bench/gpu_tofu.sh", *args], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=900)


def describe(proc) -> str:
    return f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-2000:]}"


@needs_tofu
def test_dry_run_reports_every_method_and_keeps_the_runs(tmp_path):
    proc = script(tmp_path, "--dry-run")
    assert proc.returncode == 0, describe(proc)
    out = tmp_path / "out"
    assert sorted(os.listdir(out)) == ["results.csv", "results.md", "results.png", "runs.json",
                                       "tofu.log"]
    md = (out / "results.md").read_text()
    assert md.startswith("# TOFU forget05 at TOFU's scale") and "INCOMPLETE" not in md
    for m in ("palu", "tpo", "npo", "graddiff", "simnpo"):
        assert f"| {m} |" in md
    runs = json.loads((out / "runs.json").read_text())
    assert len(runs) == 5 and {r["spec"]["method"] for r in runs} == {
        "palu", "tpo", "npo", "graddiff", "simnpo"}
    log = (out / "tofu.log").read_text()
    assert "device cpu" in log and "--forget-split forget05" in log and "run exit 0" in log


@needs_tofu
def test_a_budget_that_runs_out_leaves_no_report_that_looks_complete(tmp_path):
    proc = script(tmp_path, "--dry-run", GPU_TOFU_S="1")
    assert proc.returncode == 1, describe(proc)
    assert "the 1 s budget ran out" in proc.stdout
    out = tmp_path / "out"
    assert not (out / "results.md").exists()  # nothing finished: no report at all
    assert json.loads((out / "runs.json").read_text()) == []


def test_without_a_gpu_it_says_so_in_one_line(tmp_path):
    proc = script(tmp_path, CUDA_VISIBLE_DEVICES="")
    assert proc.returncode == 1, describe(proc)
    assert "=== tofu: skipped: torch sees no GPU here" in proc.stdout


@pytest.mark.parametrize("args,env,needle", [
    (["--fast"], {}, "usage: bash bench/gpu_tofu.sh [--dry-run]"),
    (["--dry-run"], {"GPU_TOFU_S": "5m"}, "GPU_TOFU_S: expected a whole number of seconds, "
                                           "got '5m'")])
def test_bad_arguments_exit_2(tmp_path, args, env, needle):
    proc = script(tmp_path, *args, **env)
    assert proc.returncode == 2 and needle in proc.stderr, describe(proc)


def test_halves_join_back_into_the_same_file(tmp_path):
    from bench.gpu.tofu_carry import CarryError, join, sha256, split

    src = tmp_path / "m.gguf"
    src.write_bytes(os.urandom(100_001))  # odd: the halves differ by a byte
    parts = split(str(src), str(tmp_path / "carry"))
    assert [os.path.getsize(p) for p in parts] == [50_001, 50_000]
    out = join(str(tmp_path / "carry"), str(tmp_path / "back" / "m.gguf"))
    assert sha256(out) == sha256(str(src)) and open(out, "rb").read() == src.read_bytes()
    # a half from something else: refused, nothing left behind
    with open(parts[1], "r+b") as f:
        f.write(b"x")
    with pytest.raises(CarryError, match="SHA-256"):
        join(str(tmp_path / "carry"), str(tmp_path / "bad.gguf"))
    assert not any(n.startswith("bad.gguf") for n in os.listdir(tmp_path))
    os.remove(parts[1])
    with pytest.raises(CarryError, match="model.part-1"):
        join(str(tmp_path / "carry"), str(tmp_path / "bad.gguf"))


def test_join_cli_exits_1_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bench.gpu.tofu_carry", "join",
                           str(tmp_path / "none"), str(tmp_path / "m.gguf")], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("tofu_carry: carry: ")
