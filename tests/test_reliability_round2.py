"""Reliability, round two (issue 20, ``docs/reliability.md``): an output directory belongs to
one run at a time, ``--resume`` continues only its own run, no command writes over its input,
the experiment cache redoes a damaged file, Ctrl-C ends with one line and status 130, values
are checked before any work, a byte-order mark is accepted, text spans take linear work,
methods without spans take span-less data, and the loss API's meta / numpy cases."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch

pytest.importorskip("transformers")


from palu_kernels import outputs  # noqa: E402
from palu_kernels.cli import experiment as exp_cli  # noqa: E402
from palu_kernels.cli import spans as spans_cli  # noqa: E402
from palu_kernels.cli import unlearn as cli  # noqa: E402
from palu_kernels.errors import UsageError  # noqa: E402

from helpers import FORGET01, TOFU, needs_tofu, write_tofu_subset  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_thread")]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    if not os.path.exists(FORGET01):
        pytest.skip("TOFU data not present in ../shared/data/tofu")
    d = tmp_path_factory.mktemp("round2")
    f = write_tofu_subset(d, 4, 4)
    f["dir"] = d
    return f


def argv(files, out, *extra, forget=None):
    return ["--model", files["model"], "--forget", forget or files["forget"], "--retain",
            files["retain"], "--output-dir", str(out), "--k", "20", "--batch-size", "2",
            "--epochs", "1", "--seed", "3", "--eval-retain", "2", "--lr", "1e-2", *extra]


def refused(capsys, fn, args, match, code=2):
    """``fn(args)`` exits with ``code`` and its last stderr line matches ``match``; no
    traceback."""
    with pytest.raises(SystemExit) as e:
        fn(args)
    assert e.value.code == code
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert err and "Traceback" not in "\n".join(err)
    assert re.search(match, err[-1]), err[-1]
    return err[-1]


# ----------------------------------------------------------------------------- 1. the lock

_HOLDER = ("import sys, time; from palu_kernels.outputs import OutputLock; "
           "OutputLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(600)")


def test_a_second_run_into_a_locked_output_dir_is_refused_naming_the_first(
        files, tmp_path, capsys):
    out = tmp_path / "x"
    env = {**os.environ, "PYTHONPATH": ROOT}
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out)], stdout=subprocess.PIPE,
                              text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for extra in ((), ("--overwrite",), ("--resume",)):
            refused(capsys, cli.main, argv(files, out, *extra),
                    rf"^palu-unlearn: --output-dir '.*x' is in use by another run \(pid "
                    rf"{holder.pid} on ")
        assert os.listdir(out) == [outputs.LOCK]  # nothing written by the refused runs
    finally:
        holder.kill()  # a kill: the lock file stays, its flock goes with the process
        holder.wait()
    assert outputs.lock_owner(str(out)) is None and os.listdir(out) == [outputs.LOCK]
    cli.main(argv(files, out, "--max-steps", "1"))  # the stale lock is reclaimed
    err = capsys.readouterr().err
    assert f"reclaimed the lock of a run that ended without releasing it (pid {holder.pid})" in err
    assert outputs.LOCK not in os.listdir(out) and "run_summary.json" in os.listdir(out)


def test_the_lock_itself_refuses_a_run_that_passed_the_checks(files, tmp_path, capsys,
                                                              monkeypatch):
    """Two runs started together both pass the checks; the lock (taken after them, before
    anything is written) lets one through."""
    out = tmp_path / "y"
    first = outputs.OutputLock(str(out)).acquire()
    try:
        monkeypatch.setattr("palu_kernels.train.checks.lock_owner", lambda d: None)
        refused(capsys, cli.main, argv(files, out, "--overwrite"),
                rf"--output-dir '.*y' is in use by another run \(pid {os.getpid()} ")
    finally:
        first.release()
    assert not out.exists() or os.listdir(out) == []


def test_lock_released_on_errors_and_stale_files_reclaimed(tmp_path):
    d = str(tmp_path / "z")
    with pytest.raises(RuntimeError):
        with outputs.OutputLock(d):
            assert outputs.lock_owner(d)["pid"] == os.getpid()
            raise RuntimeError("boom")
    assert os.listdir(d) == [] and outputs.lock_owner(d) is None
    with open(os.path.join(d, outputs.LOCK), "w") as f:  # a killed run's file, no flock
        json.dump({"pid": 999999999, "host": "h"}, f)
    lock = outputs.OutputLock(d).acquire()
    assert lock.reclaimed["pid"] == 999999999
    with pytest.raises(UsageError) as e:
        outputs.OutputLock(d).acquire()
    assert e.value.option == "output_dir" and f"pid {os.getpid()}" in str(e.value)
    lock.release()
    assert os.listdir(d) == []


# ----------------------------------------------------------------------------- 2. own input

def test_palu_spans_never_writes_over_its_input(tmp_path, capsys):
    src = tmp_path / "g.jsonl"
    src.write_text(json.dumps({"question": "Who?", "answer": "Basil wrote it.",
                               "target_words": [{"word": "Basil", "start": 0, "end": 5}]})
                   + "\n", encoding="utf-8")
    before = src.read_bytes()
    refused(capsys, spans_cli.main, [str(src), "-o", str(src)],
            r"^palu-spans: -o/--output '.*g.jsonl' is the input file; writing there would "
            r"replace it")
    os.symlink(src, tmp_path / "link.jsonl")
    refused(capsys, spans_cli.main, [str(tmp_path / "link.jsonl"), "-o", str(src)],
            r"is the input file")
    other = tmp_path / "in.jsonl"
    other.write_bytes(before)
    refused(capsys, spans_cli.main, [str(other), "--score", str(src), "-o", str(src)],
            r"is the --score file")
    assert src.read_bytes() == before


# ----------------------------------------------------------------------------- 3. --resume

def test_resume_refuses_another_runs_data_and_settings(files, tmp_path, capsys):
    out = tmp_path / "fin"
    cli.main(argv(files, out, "--save-steps", "1", "--max-steps", "2"))
    summary = (out / "run_summary.json").read_bytes()
    ident = json.loads((out / "run_identity.json").read_text())
    assert ident["settings"]["lr"] == 0.01 and len(ident["forget"]["sha256"]) == 64
    other = files["dir"] / "f2.jsonl"
    other.write_text("".join(open(files["forget"]).readlines()[:2]), encoding="utf-8")
    line = refused(capsys, cli.main, argv(files, out, "--save-steps", "1", "--max-steps", "2",
                                          "--resume", "--lr", "5e-3", forget=str(other)),
                   r"^palu-unlearn: --resume .*checkpoint-2 belongs to another run: ")
    assert "--forget " in line and "--lr 0.01 -> 0.005" in line
    assert (out / "run_summary.json").read_bytes() == summary  # the result untouched
    # an unfinished run (checkpoints, no result): refused as well, nothing published
    os.remove(out / "run_summary.json")
    line = refused(capsys, cli.main, argv(files, out, "--save-steps", "1", "--max-steps", "2",
                                          "--resume", "--seed", "4", "--batch-size", "1"),
                   r"belongs to another run")
    assert "--seed 3 -> 4" in line and "--batch-size 2 -> 1" in line
    assert not (out / "run_summary.json").exists()
    line = refused(capsys, cli.main, argv(files, out, "--resume", str(out / "checkpoint-1"),
                                          "--gamma", "2"), r"belongs to another run")
    assert "--gamma None -> 2.0" in line
    # the same run resumes (and a changed --logging-steps does not matter)
    cli.main(argv(files, out, "--save-steps", "1", "--max-steps", "2", "--resume",
                  "--logging-steps", "2"))
    assert (out / "run_summary.json").exists()


# ----------------------------------------------------------------------------- 4. the cache

def _stub_setup(key, d):
    from palu_kernels.experiments.harness import Setup

    return Setup(key=key, dir=d, data_dir=d, forget_split="forget10", forget_spans="",
                 retain="", finetuned_dir="", retain_dir="", retain_truth_ratios=[],
                 retain_metrics={}, finetuned_metrics={}, vocab_size=1, training={}, seconds=0)


def _result(key):
    return {"key": key, "spec": {"method": "palu"}, "seed": 0, "setup": "s", "steps": 1,
            "train_s": 0.1, "metrics": {"forget_quality": 0.5, "model_utility": 0.4,
                                        "forget": {"probability": 0.1, "rouge_l_recall": 0.2},
                                        "retain": {"probability": 0.3}}}


def test_experiment_cache_names_a_damaged_file_and_redoes_it(tmp_path, monkeypatch):
    from palu_kernels.experiments.harness import ExperimentConfig, Harness, RunSpec

    built, ran = [], []
    monkeypatch.setattr(Harness, "_build_setup",
                        lambda self, conf, key, d: built.append(key) or _stub_setup(key, d))
    monkeypatch.setattr(Harness, "_run",
                        lambda self, spec, seed, setup, key: ran.append(key) or _result(key))
    h = Harness(ExperimentConfig(out=str(tmp_path / "e"), generator=lambda *a, **k: None,
                                 quick=True, seeds=(0,), progress=False))
    spec = RunSpec()
    key = h.run_key(spec, 0)
    assert len(built) == 1
    h.run(spec, 0)
    path = tmp_path / "e" / "runs" / f"{key}.json"
    assert ran == [key] and h.run(spec, 0)["key"] == key and ran == [key]  # cached
    for damage in (path.read_text()[:40], "{}", "[1, 2]", json.dumps({**_result(key),
                                                                       "metrics": {}})):
        path.write_text(damage)
        with pytest.warns(UserWarning, match=re.escape(str(path)) + r": damaged cache file"):
            res = h.run(spec, 0)
        assert res["key"] == key and json.loads(path.read_text())["key"] == key
    assert len(ran) == 5
    setup_json = tmp_path / "e" / "setups" / h.setup(0).key / "setup.json"
    for damage in ('{"config": {}, "setup": {"key"', "{}", '{"setup": {}}'):
        setup_json.write_text(damage)
        h2 = Harness(h.cfg)
        with pytest.warns(UserWarning, match=re.escape(str(setup_json)) + ": damaged"):
            assert h2.setup(0).key == h.setup(0).key
        assert json.loads(setup_json.read_text())["setup"]["key"] == h.setup(0).key
    assert len(built) == 4


def test_experiment_out_naming_a_file_and_bad_seeds_are_refused_before_any_work(
        tmp_path, capsys, monkeypatch):
    from palu_kernels.experiments import registry

    def no_work(h):
        raise AssertionError("the experiment ran before the values were checked")

    monkeypatch.setitem(registry.EXPERIMENTS, "k", no_work)
    afile = tmp_path / "afile"
    afile.write_text("x")
    refused(capsys, exp_cli.main, ["k", "--quick", "--out", str(afile)],
            r"^palu-experiment: --out '.*afile' is a file, not a directory$")
    refused(capsys, exp_cli.main, ["k", "--quick", "--out", str(tmp_path / "o"), "--cache",
                                   str(afile)], r"^palu-experiment: --cache .* is a file")
    for seeds in ("-1", "0,4294967296"):
        refused(capsys, exp_cli.main, ["k", "--quick", f"--seeds={seeds}", "--out",
                                       str(tmp_path / "o")], r"--seeds: .*every seed must be in")
    refused(capsys, exp_cli.main, ["k", "--data-dir", str(tmp_path), "--out",
                                   str(tmp_path / "o")], r"^palu-experiment: --data-dir .* has no forget01_spans")
    assert not (tmp_path / "o").exists()
    with pytest.raises(UsageError, match="^out .* is a file, not a directory"):
        from palu_kernels.experiments.harness import ExperimentConfig, Harness

        Harness(ExperimentConfig(out=str(afile), generator=lambda *a, **k: None))


# ----------------------------------------------------------------------------- 5. thresholds

@pytest.mark.parametrize("value", ["nan", "-inf", "inf"])
def test_palu_spans_threshold_must_be_finite(tmp_path, capsys, value, monkeypatch):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"question": "q", "answer": "Basil wrote it."}) + "\n")
    monkeypatch.setattr(spans_cli, "find_spans", lambda *a, **k: pytest.fail("did work"))
    for method in (["--method", "contrast", "--model", str(tmp_path), "--reference",
                    str(tmp_path)], ["--method", "predictability", "--reference",
                                     str(tmp_path)]):
        refused(capsys, spans_cli.main, [str(src), f"--threshold={value}", *method],
                rf"^palu-spans: --threshold must be a finite number, got {value}$")
    refused(capsys, spans_cli.main, [str(src), "--max-df", "nan"], r"--max-df must be in")
    from palu_kernels.spans import ContrastOptions, contrast_spans

    with pytest.raises(UsageError, match="threshold must be a finite number") as e:
        contrast_spans([], None, None, options=ContrastOptions(threshold=float(value)))
    assert e.value.option == "threshold"


# ----------------------------------------------------------------------------- 6. linear spans

class _CountingStr(str):
    """A str that counts the characters its indexing and slicing hand out, and stops the
    test (rather than running for minutes) once they pass ``budget``."""

    copied = 0
    budget = 0

    def __getitem__(self, key):
        out = str.__getitem__(self, key)
        type(self).copied += len(out)
        if type(self).copied > type(self).budget:
            raise AssertionError(f"more than {type(self).budget} characters copied: the work "
                                 "grows faster than the passage")
        return out


def test_text_spans_of_a_5mb_passage_copy_linear_work():
    from palu_kernels.spans.text import text_spans
    from palu_kernels.io.records import QARecord

    unit = ('Basil Mahfouz Al-Kuwaiti wrote "The Sand Road" in 1956 for the University of '
            "Karachi. He was 30 years old; his father (a florist) said: 'Go.' ")
    text = unit * (5_000_000 // len(unit))
    assert len(text) > 4_900_000
    _CountingStr.copied, _CountingStr.budget = 0, 4 * len(text)  # the old code: ~10^12
    passage = _CountingStr(text)
    small = text_spans([QARecord("", text[:len(unit) * 20], raw=True)], use_spacy=False)[0]
    out = text_spans([QARecord("", passage, raw=True)], use_spacy=False)[0]
    assert _CountingStr.copied <= 4 * len(text)
    # the same spans in every repetition of the unit (the rules are local)
    per_unit = len(small.spans) / 20
    assert len(out.spans) == pytest.approx(per_unit * (len(text) // len(unit)), rel=0.01)
    assert all(text[s.start:s.end] == s.word for s in out.spans[:1000])


# ----------------------------------------------------------------------------- 7. no spans

def test_methods_without_spans_take_span_less_records_and_raw_passages(files, tmp_path):
    qa = files["dir"] / "nospans.json"
    with open(os.path.join(TOFU, "forget01.json"), encoding="utf-8") as f:
        qa.write_text("".join(f.readline() for _ in range(4)), encoding="utf-8")
    txt = files["dir"] / "passages.txt"
    txt.write_text("Basil Mahfouz Al-Kuwaiti was born in Kuwait City.\n\nHe wrote novels.\n")
    for i, forget in enumerate((qa, txt)):
        s = cli.unlearn(argv(files, tmp_path / f"npo{i}", "--method", "npo", "--max-steps", "1",
                             forget=str(forget)))
        assert s["steps"] == 1 and s["data"]["forget_skipped"] == []
    with pytest.raises(SystemExit, match="missing field 'target_words'"):  # palu needs them
        cli.unlearn(argv(files, tmp_path / "palu", forget=str(qa)))


# ----------------------------------------------------------------------------- 8. Ctrl-C

_INTERRUPT = """
import os, signal, sys, time
from transformers import TrainerCallback
from palu_kernels.cli import unlearn as cli

class SigInt(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        if state.global_step == STEP:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler raises KeyboardInterrupt here

real = cli.run_unlearning
cli.run_unlearning = lambda job, **kw: real(job, **{**kw, "callbacks": [SigInt()]})
sys.exit(cli.main(ARGV))
"""


def _interrupted(argv_, step):
    """``palu-unlearn argv_`` in a fresh process, SIGINT at the end of optimizer step ``step``:
    ``(exit status, stderr lines without progress-bar redraws)``."""
    code = _INTERRUPT.replace("STEP", str(step)).replace("ARGV", repr(list(argv_)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=600)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip() and not re.search(r"\d+%\|", ln)]
    return p.returncode, lines


def test_ctrl_c_one_line_exit_130_then_resume_finishes(files, tmp_path):
    # a fresh process: a real SIGINT, and stderr exactly as a user sees it
    out = tmp_path / "int"
    rc, err = _interrupted(argv(files, out, "--save-steps", "1", "--max-steps", "4"), 2)
    assert rc == 130 and err and "Traceback" not in "\n".join(err)
    line = err[-1]
    assert re.search(r"^palu-unlearn: interrupted; .*int holds checkpoint-1 \(the last complete "
                     r"checkpoint; no result yet\); continue with: palu-unlearn .* --resume$",
                     line), line
    assert not (out / "run_summary.json").exists() and outputs.LOCK not in os.listdir(out)
    cli.main(line.split("continue with: palu-unlearn ")[1].split())
    assert json.loads((out / "run_summary.json").read_text())["steps"] == 4
    # before any checkpoint: says so
    rc, err = _interrupted(argv(files, tmp_path / "int2", "--max-steps", "3"), 1)
    assert rc == 130 and re.search(r"^palu-unlearn: interrupted; no checkpoint was saved in "
                                   r".*int2; rerun", err[-1]), err[-1]


def test_ctrl_c_in_palu_experiment(tmp_path, capsys, monkeypatch):
    from palu_kernels.experiments import registry

    def interrupted(h):
        os.makedirs(os.path.join(h.out, "runs"), exist_ok=True)
        open(os.path.join(h.out, "runs", "abc.json"), "w").write("{}")
        raise KeyboardInterrupt

    monkeypatch.setitem(registry.EXPERIMENTS, "k", interrupted)
    refused(capsys, exp_cli.main, ["k", "--quick", "--out", str(tmp_path / "o")],
            r"^palu-experiment: interrupted; 1 finished run\(s\) are cached in .*runs; rerun "
            r"the same command to continue", code=130)


# ----------------------------------------------------------------------------- 10. BOM

def test_a_byte_order_mark_is_accepted(files, tmp_path, capsys):
    from palu_kernels.train import load_records
    from palu_kernels.io.records import load_forget

    lines = open(files["forget"], encoding="utf-8").read()
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + lines.encode("utf-8"))
    recs, report = load_records(str(bom), skip_bad=True)
    assert len(recs) == 4 and report.skipped == [] and recs[0].line == 1
    arr = tmp_path / "bom.json"
    arr.write_bytes(b"\xef\xbb\xbf" + json.dumps([json.loads(x) for x in lines.splitlines()])
                    .encode("utf-8"))
    assert len(load_records(str(arr))[0]) == 4
    txt = tmp_path / "bom.txt"
    txt.write_bytes(b"\xef\xbb\xbfFirst passage.\n\nSecond one.\n")
    assert [r.answer for r in load_forget(str(txt))[0]] == ["First passage.", "Second one."]
    s = cli.unlearn(argv(files, tmp_path / "o", "--skip-bad-records", "--max-steps", "1",
                         forget=str(bom)))
    assert s["data"]["forget_skipped"] == [] and "4 of 4 records loaded" in s["data"]["forget"]


# ----------------------------------------------------------------------------- 11. loss API

def test_loss_on_the_meta_device_and_numpy_integers():
    np = pytest.importorskip("numpy")
    from palu_kernels import palu_fused_linear_loss, palu_local_entropy_loss

    z, r = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    i = torch.zeros(2, 5, dtype=torch.bool)
    i[0, 1] = True
    c = ~i
    for dev in ("meta",):
        with pytest.raises(UsageError, match=r"^logits must hold values, got a tensor on the "
                                             r"meta device") as e:
            palu_local_entropy_loss(z.to(dev), r.to(dev), i.to(dev), c.to(dev), k=3)
        assert e.value.option == "logits"
        h, w = torch.randn(2, 5, 4, device=dev), torch.randn(7, 4, device=dev)
        with pytest.raises(UsageError, match=r"^hidden must hold values"):
            palu_fused_linear_loss(h, w, h, w, i.to(dev), c.to(dev), k=3)
    want = palu_local_entropy_loss(z, r, i, c, k=3, gamma=0.5)
    for k, g in ((np.int64(3), 0.5), (np.int32(3), np.float32(0.5)), (3, np.float64(0.5))):
        assert torch.equal(palu_local_entropy_loss(z, r, i, c, k=k, gamma=g), want)
    h, w = torch.randn(2, 5, 4), torch.randn(7, 4)
    assert torch.equal(palu_fused_linear_loss(h, w, h, w, i, c, k=np.int64(3),
                                              chunk_rows=np.int64(4)),
                       palu_fused_linear_loss(h, w, h, w, i, c, k=3, chunk_rows=4))
    for bad in (np.bool_(True), True, 3.0):
        with pytest.raises(TypeError, match="k must be an int"):
            palu_local_entropy_loss(z, r, i, c, k=bad)


def test_reference_forward_kl_without_a_reference_softmax_has_a_nan_gradient():
    from reference.palu import palu_loss_reference

    from palu_kernels import palu_local_entropy_loss

    torch.manual_seed(0)
    for kl in ("forward", "reverse"):
        z = torch.randn(1, 6, dtype=torch.float64, requires_grad=True)
        r = torch.full((1, 6), float("-inf"), dtype=torch.float64)
        i, c = torch.zeros(1, dtype=torch.bool), torch.ones(1, dtype=torch.bool)
        for fn in (palu_loss_reference, palu_local_entropy_loss):
            z.grad = None
            loss = fn(z, r, i, c, k=2, kl=kl)
            loss.backward()
            assert torch.isnan(loss) and torch.isnan(z.grad).all(), (kl, fn.__name__)
    # a zero-probability entry still adds nothing (0 log 0 = 0): finite gradient
    z = torch.randn(1, 6, dtype=torch.float64, requires_grad=True)
    r = torch.tensor([[0.0, 1.0, float("-inf"), 2.0, float("-inf"), 0.5]], dtype=torch.float64)
    palu_loss_reference(z, r, i, c, k=2, kl="forward").backward()
    assert torch.isfinite(z.grad).all()


# ----------------------------------------------------------------------------- smaller ones

def test_palu_spans_input_errors_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q"}\n')
    line = refused(capsys, spans_cli.main, [str(bad)], r"^palu-spans: .*bad.jsonl:1: missing")
    assert "skip_bad=True" not in line and "--skip-bad-records skips it" in line
    refused(capsys, spans_cli.main, [str(tmp_path / "nope.json")], r"input .* is not a file")


@needs_tofu
def test_skipped_records_warn_in_one_line_without_python_source(files, tmp_path):
    bad = files["dir"] / "onebad.jsonl"
    bad.write_text(open(files["forget"]).read() + '{"question": "q"}\n', encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    p = subprocess.run([sys.executable, "-m", "palu_kernels.cli.unlearn",
                        *argv(files, tmp_path / "o", "--skip-bad-records", "--max-steps", "1",
                              forget=str(bad))],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    err = p.stderr.replace("\r", "\n").splitlines()
    i = next(j for j, ln in enumerate(err) if "skipped 1 bad record" in ln)
    assert err[i].startswith("palu-unlearn: warning: skipped 1 bad record(s) of 5 in ")
    assert "onebad.jsonl:5: missing field 'answer'" in err[i + 1]
    assert not any("warnings.warn(" in ln or "UserWarning" in ln for ln in err)


def test_interrupt_message_says_what_is_on_disk(tmp_path):
    out = tmp_path / "o"
    a = ["--model", "m", "--forget", "f", "--output-dir", str(out)]
    assert cli.on_disk(a) == f"no checkpoint was saved in {out}; rerun the command to start again"
    (out / "checkpoint-1").mkdir(parents=True)  # interrupted while writing it
    assert cli.on_disk(a).endswith(f"holds only an unfinished checkpoint-1 (no complete "
                                   f"checkpoint); start again with: palu-unlearn "
                                   f"--model m --forget f --output-dir {out} --overwrite")
    (out / "run_summary.json").write_text("{}")
    assert "holds the earlier result, unchanged" in cli.on_disk(a)
