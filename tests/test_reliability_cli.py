"""Ordinary mistakes and faults against the command lines (issue 13, ``docs/reliability.md``):
one line on stderr naming the option and exit status 2, before any model is loaded, and no
empty output directory left; a non-finite loss stops the run and saves nothing; a kill during
the final save or a checkpoint leaves nothing that looks complete; ``--overwrite`` deletes
nothing before the new result is complete; ``--resume`` takes the latest complete checkpoint.
Tiny models (``palu_kernels.tiny``), a few optimizer steps each."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

pytest.importorskip("transformers")

from transformers import Trainer, TrainerCallback  # noqa: E402

from palu_kernels import outputs  # noqa: E402
from palu_kernels.cli import compare as compare_cli  # noqa: E402
from palu_kernels.cli import eval as eval_cli  # noqa: E402
from palu_kernels.cli import unlearn as cli  # noqa: E402

from helpers import TOFU, needs_tofu, write_tofu_subset  # noqa: E402

pytestmark = [needs_tofu, pytest.mark.usefixtures("one_thread")]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("reliability")
    f = write_tofu_subset(d, 4, 4)
    m = f["model"]

    def variant(name, drop=(), edit=None):
        v = str(d / name)
        shutil.copytree(m, v)
        for x in drop:
            os.remove(os.path.join(v, x))
        if edit:
            edit(v)
        return v

    def truncate(v):
        p = os.path.join(v, "model.safetensors")
        with open(p, "r+b") as fh:
            fh.truncate(os.path.getsize(p) // 2)

    def no_eos(v):
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            p = os.path.join(v, name)
            if os.path.exists(p):
                cfg = json.load(open(p))
                cfg.pop("eos_token", None)
                json.dump(cfg, open(p, "w"))

    f["notok"] = variant("notok", drop=[x for x in os.listdir(m) if "token" in x])
    f["noconfig"] = variant("noconfig", drop=["config.json"])
    f["trunc"] = variant("trunc", edit=truncate)
    f["noeos"] = variant("noeos", edit=no_eos)
    (d / "gguf").mkdir()
    f["gguf"] = str(d / "gguf" / "fake.gguf")
    open(f["gguf"], "wb").write(b"not a gguf file")
    f["gguf2"] = str(d / "gguf" / "fake2.gguf")
    open(f["gguf2"], "wb").write(b"GGUF but nothing more")
    lines = open(f["forget"]).read().splitlines(keepends=True)
    f["nospans"] = str(d / "nospans.jsonl")
    open(f["nospans"], "w").write("".join(json.dumps({**json.loads(x), "target_words": []})
                                          + "\n" for x in lines))
    long_q = {"question": "Who? " * 300, "answer": "Basil.",
              "target_words": [{"word": "Basil", "start": 0, "end": 5}]}
    f["longq"] = str(d / "longq.jsonl")
    open(f["longq"], "w").write("".join(lines) + json.dumps(long_q) + "\n")
    f["longr"] = str(d / "longr.json")
    open(f["longr"], "w").write(open(f["retain"]).read() + json.dumps(
        {"question": "Who? " * 300, "answer": "x"}) + "\n")
    return f


def argv(files, out, *extra, model=None):
    return ["--model", model or files["model"], "--forget", files["forget"], "--retain",
            files["retain"], "--output-dir", str(out), "--k", "20", "--batch-size", "2",
            "--epochs", "1", "--seed", "3", "--eval-retain", "2", "--lr", "1e-2", *extra]


def refused(capsys, fn, args, match):
    """``fn(args)`` exits with status 2 and one line on stderr matching ``match``."""
    with pytest.raises(SystemExit) as e:
        fn(args)
    assert e.value.code == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert "Traceback" not in "\n".join(err)
    assert len(err) >= 1
    import re

    assert re.search(match, err[-1]), err[-1]
    return err[-1]


BAD_VALUES = [
    (["--gamma", "nan"], r"^palu-unlearn: --gamma must be a finite number, got nan$"),
    (["--alpha", "inf"], r"^palu-unlearn: --alpha must be a finite number, got inf$"),
    (["--gamma", "1e300"], r"--gamma must be <= 3.4"),
    (["--lr", "nan"], r"--lr must be a finite number"),
    (["--lr=-1e-3"], r"--lr must be > 0, got -0.001"),
    (["--epochs", "nan"], r"--epochs must be a finite number"),
    (["--epochs", "0"], r"--epochs 0 .*no optimizer step"),
    (["--max-steps", "0"], r"--max-steps must be >= 1 \(or -1\)"),
    (["--seed", "-1"], r"--seed must be in \[0, 4294967295\], got -1"),
    (["--warmup-epochs", "-1"], r"--warmup-epochs must be >= 0"),
    (["--logging-steps", "0"], r"--logging-steps must be >= 1, got 0"),
    (["--optim", "bogus"], r"--optim 'bogus' is not an optimizer name"),
    (["--first-n", "0"], r"--first-n 0 selects no initiating row"),
    (["--method", "idkdpo", "--idk-file", "/no/such.jsonl"], r"--idk-file '/no/such.jsonl' is not a file"),
    (["--resume", "/bad/path"], r"--resume '/bad/path' is not a complete checkpoint"),
    (["--target", "nan"], r"--target must be .* a finite number, got 'nan'"),  # argparse
    (["--save-total-limit", "0"], r"--save-total-limit must be >= 1"),
]


@pytest.mark.parametrize("extra,match", BAD_VALUES, ids=[" ".join(x) for x, _ in BAD_VALUES])
def test_bad_values_one_line_before_any_model(files, tmp_path, capsys, monkeypatch, extra, match):
    import palu_kernels.io.models as models

    def no_loading(*a, **k):
        raise AssertionError("a model was loaded before the values were checked")

    monkeypatch.setattr(models, "load_model", no_loading)
    monkeypatch.setattr("palu_kernels.train.job.load_model", no_loading)
    out = tmp_path / "out"
    refused(capsys, cli.main, argv(files, out, *extra), match)
    assert not out.exists()  # no empty output directory left behind


def test_triton_backend_needs_cuda(files, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    refused(capsys, cli.main, argv(files, tmp_path / "o", "--backend", "triton"),
            r"--backend triton needs a CUDA GPU")


BAD_MODELS = [("notok", r"--model '.*notok' has no tokenizer"),
              ("noconfig", r"--model '.*noconfig': no config.json"),
              ("trunc", r"--model '.*trunc': model.safetensors: truncated"),
              ("gguf", r"--model '.*fake.gguf' is not a GGUF file"),
              ("gguf2", r"--model '.*fake2.gguf': cannot load the tokenizer"),
              ("noeos", r"--model '.*noeos': the tokenizer has no eos_token")]


@pytest.mark.parametrize("name,match", BAD_MODELS, ids=[n for n, _ in BAD_MODELS])
def test_broken_models_one_line(files, tmp_path, capsys, name, match):
    out = tmp_path / "out"
    refused(capsys, cli.main, argv(files, out, model=files[name]), match)
    assert not out.exists()


def test_runs_that_would_not_unlearn_and_long_questions(files, tmp_path, capsys):
    out = tmp_path / "out"
    a = argv(files, out)
    i = a.index("--forget") + 1
    refused(capsys, cli.main, a[:i] + [files["nospans"]] + a[i + 1:],
            r"no initiating row in the whole forget set \(4 of 4 records have no target_words")
    refused(capsys, cli.main, a[:i] + [files["longq"]] + a[i + 1:] + ["--max-length", "300"],
            r"--max-length 300: .*longq.jsonl:5: the prompt alone is \d+ tokens.*--skip-bad-records")
    r = a.index("--retain") + 1
    refused(capsys, cli.main, a[:r] + [files["longr"]] + a[r + 1:] + ["--max-length", "300"],
            r"longr.json:5: the prompt alone")
    assert not out.exists()


def test_long_questions_are_skipped_at_load_time(files):
    """With skip_bad the dataset leaves them out when it is built (retain too), and says so."""
    from palu_kernels.train import load_records
    from palu_kernels.io.data import PALUDataset, PromptTooLong
    from palu_kernels.io.models import load_tokenizer

    tok = load_tokenizer(files["model"])
    forget, _ = load_records(files["longq"])
    retain, _ = load_records(files["longr"], spans="ignore")
    with pytest.raises(PromptTooLong, match=r"longq.jsonl:5"):
        PALUDataset(tok, forget, retain, max_length=300)
    with pytest.warns(UserWarning, match="skipped 1 forget record"):
        ds = PALUDataset(tok, forget, retain, max_length=300, skip_bad=True)
    assert len(ds) == 4 and len(ds.retain_records) == 4
    assert [s.split(":")[1] for s in ds.skipped_forget + ds.skipped_retain] == ["5", "5"]
    assert ds.n_initiating > 0 and ds.n_without_spans == 0
    for i in range(len(ds.retain_records)):  # every retain record can be drawn
        ds.encoded_retain(i)


def test_model_inside_the_output_directory_is_refused(files, tmp_path, capsys):
    out = tmp_path / "runs_c"
    ckpt = out / "checkpoint-40"
    shutil.copytree(files["model"], ckpt)
    before = sorted(os.listdir(ckpt))
    refused(capsys, cli.main, argv(files, out, "--overwrite", model=str(ckpt)),
            r"--output-dir '.*runs_c' contains the input model")
    refused(capsys, cli.main, argv(files, ckpt, "--overwrite", model=str(ckpt)),
            r"--output-dir .* is inside the input model directory")
    assert sorted(os.listdir(ckpt)) == before


def test_exit_status_and_debug_in_a_real_process(files, tmp_path, capsys):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "palu_kernels.cli.unlearn",
           *argv(files, tmp_path / "o", "--gamma", "nan")]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip().splitlines() == ["palu-unlearn: --gamma must be a finite number, got nan"]
    with pytest.raises(SystemExit) as e:  # --debug: the traceback too
        cli.main(argv(files, tmp_path / "o", "--gamma", "nan", "--debug"))
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" in err and "check_knob" in err
    assert err.strip().splitlines()[-1].startswith("palu-unlearn: --gamma")


# ----------------------------------------------------------------------------- non-finite loss

class _Poison(TrainerCallback):
    """Fills one weight with NaN at the end of optimizer step ``step``."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, model=None, **kw):
        if state.global_step == self.step:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))


def test_nonfinite_weights_never_reach_a_checkpoint_or_the_result(files, tmp_path):
    out = tmp_path / "nan"
    args = cli.build_parser().parse_args(argv(files, out, "--save-steps", "1", "--max-steps", "3"))
    with pytest.raises(SystemExit) as e:
        cli.run(args, callbacks=[_Poison(2)])
    msg = str(e.value)
    assert "weights are not finite after optimizer step 2" in msg
    assert "nothing saved as the result" in msg and "checkpoint-1" in msg
    # the last good checkpoint is kept, with the identity --resume checks it against
    assert sorted(os.listdir(out)) == ["checkpoint-1", "run_identity.json"]
    assert outputs.checkpoint_problem(str(out / "checkpoint-1")) is None


def test_nonfinite_loss_stops_the_run(files, tmp_path):
    out = tmp_path / "nan2"
    args = cli.build_parser().parse_args(argv(files, out, "--max-steps", "3"))
    with pytest.raises(SystemExit, match=r"the training loss is not finite \(nan\) at "
                                         r"optimizer step 2.*nothing saved as the result"):
        cli.run(args, callbacks=[_Poison(1)])
    assert not out.exists()  # the run created it and left it empty: removed
    # a finite loss whose gradient overflows: stopped before the optimizer step
    args = cli.build_parser().parse_args(argv(files, out, "--max-steps", "2", "--gamma", "3e38"))
    with pytest.raises(SystemExit, match=r"the gradient norm is not finite \(\w+\) at "
                                         r"optimizer step 1.*nothing saved"):
        cli.run(args)
    assert not out.exists()


# ----------------------------------------------------------------------------- kills

class Killed(BaseException):
    """A kill: not an ``Exception``, so no ``except Exception`` clean-up runs (the files are
    left as a SIGKILL would leave them)."""


def _kill_during_final_save(monkeypatch, argv_):
    """Run ``palu-unlearn argv_`` and "kill" it halfway through writing the final
    ``model.safetensors`` (a checkpoint's save goes through)."""
    import transformers.modeling_utils as mu

    real = mu.safe_save_file

    def half_then_die(tensors, filename, *a, **k):
        real(tensors, filename, *a, **k)
        if ".tmp-" in filename:  # the final save (a checkpoint goes to checkpoint-N)
            with open(filename, "r+b") as f:
                f.truncate(os.path.getsize(filename) // 2)
            raise Killed()

    with monkeypatch.context() as m:
        m.setattr(mu, "safe_save_file", half_then_die)
        with pytest.raises(Killed):
            cli.unlearn(argv_)


KILL_FINAL_SAVE = r"""
import os, sys
import transformers.modeling_utils as mu
real = mu.safe_save_file
def half_then_die(tensors, filename, *a, **k):
    real(tensors, filename, *a, **k)
    if ".tmp-" in filename:  # the final save (a checkpoint goes to checkpoint-N)
        with open(filename, "r+b") as f:
            f.truncate(os.path.getsize(filename) // 2)
        os._exit(137)  # no clean-up of any kind runs
mu.safe_save_file = half_then_die
from palu_kernels.cli.unlearn import main
main(sys.argv[1:])
"""


def test_kill_during_the_final_save_then_resume(files, tmp_path):
    """A real process killed halfway through the final ``model.safetensors``."""
    from palu_kernels.io.models import load_model

    out = tmp_path / "fresh"
    a = argv(files, out, "--save-steps", "1", "--max-steps", "2")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "TOKENIZERS_PARALLELISM": "false"}
    p = subprocess.run([sys.executable, "-c", KILL_FINAL_SAVE, *a], capture_output=True,
                       text=True, env=env, cwd=ROOT, timeout=300)
    assert p.returncode == 137, p.stderr[-2000:]
    assert outputs.MARKER not in os.listdir(out) and "model.safetensors" not in os.listdir(out)
    left = [n for n in os.listdir(tmp_path) if n.startswith(".fresh.tmp-")]
    assert len(left) == 1  # the half-written model stays in the temporary sibling
    with pytest.raises(ValueError, match="unfinished palu-unlearn run"):
        load_model(str(out))
    s = cli.unlearn(a + ["--resume"])
    assert s["steps"] == 2 and (out / outputs.MARKER).is_file()
    assert outputs.result_problem(str(out)) is None
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".fresh.")]  # cleaned up


def test_overwrite_deletes_nothing_before_the_new_result_is_complete(files, tmp_path,
                                                                    monkeypatch):
    out = tmp_path / "old"
    a = argv(files, out, "--save-steps", "1", "--max-steps", "2")
    cli.unlearn(a)
    old_model = (out / "model.safetensors").read_bytes()
    old_marker = (out / outputs.MARKER).read_text()
    _kill_during_final_save(monkeypatch, a + ["--overwrite", "--seed", "5"])
    # the old result is whole: its model and its marker, which describes it
    assert (out / "model.safetensors").read_bytes() == old_model
    assert (out / outputs.MARKER).read_text() == old_marker
    assert json.loads(old_marker)["arguments"]["seed"] == 3
    olds = [n for n in os.listdir(tmp_path) if n.startswith(".old.old-")]
    assert len(olds) == 1 and sorted(os.listdir(tmp_path / olds[0])) == ["checkpoint-1",
                                                                         "checkpoint-2"]
    s = cli.unlearn(a + ["--overwrite", "--seed", "5"])
    assert json.loads((out / outputs.MARKER).read_text())["arguments"]["seed"] == 5
    assert (out / "model.safetensors").read_bytes() != old_model and s["steps"] == 2
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".old.")]


def test_kill_during_a_checkpoint_then_resume(files, tmp_path, monkeypatch, capsys):
    out = tmp_path / "ck"
    a = argv(files, out, "--save-steps", "1", "--max-steps", "4", "--save-total-limit", "5",
             "--optim", "sgd")
    real = Trainer._save_optimizer_and_scheduler

    def die_in_checkpoint_3(self, output_dir):
        real(self, output_dir)
        if output_dir.endswith("checkpoint-3"):
            p = os.path.join(output_dir, "optimizer.pt")
            with open(p, "r+b") as f:
                f.truncate(os.path.getsize(p) // 2)
            raise KeyboardInterrupt("killed while writing checkpoint-3/optimizer.pt")

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", die_in_checkpoint_3)
    with pytest.raises(KeyboardInterrupt):
        cli.unlearn(a)
    monkeypatch.undo()
    assert outputs.checkpoint_problem(str(out / "checkpoint-3")) is not None
    capsys.readouterr()
    s = cli.unlearn(a + ["--resume"])
    err = capsys.readouterr().err
    assert "skipping" in err and "checkpoint-3" in err and "resuming from" in err
    assert "checkpoint-2" in err.split("resuming from")[1].splitlines()[0]
    assert s["steps"] == 4 and (out / outputs.MARKER).is_file()
    assert outputs.checkpoint_problem(str(out / "checkpoint-3")) is None  # written again


# ----------------------------------------------------------------------------- evaluation

def test_eval_and_compare_refusals(files, tmp_path, capsys):
    ev = ["--data-dir", TOFU, "--max-samples", "2", "--max-new-tokens", "2", "--no-progress",
          "--threads", "1"]
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(SystemExit) as e:  # refused before the evaluation, not after
        eval_cli.main(["--model", files["model"], "--output-dir", str(afile), *ev])
    assert e.value.code == 2 and "exists and is not a directory" in capsys.readouterr().err
    half = tmp_path / "half"
    shutil.copytree(files["model"], half / "checkpoint-1")
    shutil.copy(os.path.join(files["model"], "config.json"), half)
    assert eval_cli.main(["--model", str(half), "--output-dir", str(tmp_path / "e"), *ev]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("palu-eval: error: --model ") and "unfinished" in err[-1]
    assert eval_cli.main(["--model", files["trunc"], "--output-dir", str(tmp_path / "e"), *ev]) == 2
    assert "truncated" in capsys.readouterr().err
    rr = tmp_path / "retain_eval.json"
    rr.write_text(json.dumps({"forget_truth_ratios": [0.5, 0.7, 0.9],
                              "config": {"forget_split": "forget01"}}))
    assert eval_cli.main(["--model", files["model"], "--output-dir", str(tmp_path / "e"),
                          "--retain-result", str(rr), *ev]) == 2
    assert "retain_eval.json: 3 retain truth ratios, but the forget set has 2" in \
        capsys.readouterr().err
    assert not (tmp_path / "e").exists()
    bad = tmp_path / "bad_forget.jsonl"
    bad.write_text('{"question": "q"}\n')
    out = tmp_path / "cmp"
    refused(capsys, compare_cli.main,
            ["--model", files["model"], "--forget", str(bad), "--data-dir", TOFU,
             "--output-dir", str(out), "--methods", "palu", *ev[2:], "--max-steps", "1"],
            r"bad_forget.jsonl:1: missing field 'answer'")
    assert not (out / "original").exists()  # nothing was evaluated
