"""Rerun the failures of issues 13 and 20 (reliability) against the command lines; one table
row each.

Usage (from the repository root; a few minutes on a CPU, issue 20's rows ``r2-*`` ten more)::

    python bench/reliability_cases.py [--work /tmp/rel13] [--only 1a,6c,r2-1] > table.md

Each case runs ``python -m palu_kernels.cli.<tool> ...`` in a subprocess on a tiny model
(:mod:`palu_kernels.tiny`) and the first lines of ``../shared/data/tofu``, and reports the exit
status, whether stderr holds a traceback, the last stderr line and what is left in the output
directory. ``docs/reliability.md`` holds the table of this script before and after the fixes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOFU = os.environ.get("PALU_TOFU", os.path.join(os.path.dirname(ROOT), "shared", "data", "tofu"))


def setup(work: str) -> dict:
    from palu_kernels.tiny import save_tiny_model, tofu_texts

    os.makedirs(work, exist_ok=True)
    f = {"work": work}
    forget = os.path.join(TOFU, "forget01_spans.jsonl")
    retain = os.path.join(TOFU, "retain99.json")
    with open(forget, encoding="utf-8") as fh:
        lines = [next(fh) for _ in range(4)]
    f["forget"] = os.path.join(work, "forget.jsonl")
    open(f["forget"], "w").write("".join(lines))
    with open(retain, encoding="utf-8") as fh:
        rl = [next(fh) for _ in range(4)]
    f["retain"] = os.path.join(work, "retain.json")
    open(f["retain"], "w").write("".join(rl))
    f["nospans"] = os.path.join(work, "nospans.jsonl")
    open(f["nospans"], "w").write("".join(
        json.dumps({**json.loads(x), "target_words": []}) + "\n" for x in lines))
    f["longq"] = os.path.join(work, "longq.jsonl")
    long = {"question": "Who? " * 400, "answer": "Basil.",
            "target_words": [{"word": "Basil", "start": 0, "end": 5}]}
    open(f["longq"], "w").write("".join(lines) + json.dumps(long) + "\n")
    f["longr"] = os.path.join(work, "longr.json")
    open(f["longr"], "w").write("".join(rl) + json.dumps({"question": "Who? " * 400,
                                                           "answer": "x"}) + "\n")
    with open(forget, encoding="utf-8") as fh:  # issue 20's sizes
        many = [next(fh) for _ in range(16)]
    with open(retain, encoding="utf-8") as fh:
        many_r = [next(fh) for _ in range(16)]
    for name, text in (("f16", many), ("r16", many_r), ("f4", many[:4])):
        f[name] = os.path.join(work, name + (".json" if name[0] == "r" else ".jsonl"))
        open(f[name], "w").write("".join(text))
    m = os.path.join(work, "model")
    if not os.path.isdir(m):
        save_tiny_model(m, texts=tofu_texts(forget) + tofu_texts(retain, limit=40),
                        vocab_size=300, hidden_size=32, num_layers=1, num_heads=2)
    f["model"] = m
    # broken models
    def variant(name, drop=(), edit=None):
        d = os.path.join(work, name)
        if os.path.isdir(d):
            shutil.rmtree(d)
        shutil.copytree(m, d)
        for x in drop:
            os.remove(os.path.join(d, x))
        if edit:
            edit(d)
        return d

    f["notok"] = variant("notok", drop=[x for x in os.listdir(m) if "token" in x])
    f["noconfig"] = variant("noconfig", drop=["config.json"])

    def trunc(d):
        p = os.path.join(d, "model.safetensors")
        data = open(p, "rb").read()
        open(p, "wb").write(data[:len(data) // 2])

    f["trunc"] = variant("trunc", edit=trunc)

    def noeos(d):
        p = os.path.join(d, "tokenizer_config.json")
        cfg = json.load(open(p))
        cfg.pop("eos_token", None)
        json.dump(cfg, open(p, "w"))
        sp = os.path.join(d, "special_tokens_map.json")
        if os.path.exists(sp):
            c = json.load(open(sp))
            c.pop("eos_token", None)
            json.dump(c, open(sp, "w"))

    f["noeos"] = variant("noeos", edit=noeos)
    f["gguf"] = os.path.join(work, "fake.gguf")
    open(f["gguf"], "wb").write(b"GGUF not really")
    f["notjson"] = os.path.join(work, "notjson.json")
    open(f["notjson"], "w").write("this is not json\n")
    f["afile"] = os.path.join(work, "afile")
    open(f["afile"], "w").write("x")
    return f


def unlearn(f, out, *extra, model=None):
    return ["unlearn", "--model", model or f["model"], "--forget", f["forget"], "--retain",
            f["retain"], "--output-dir", out, "--k", "20", "--batch-size", "2", "--max-steps", "2",
            "--epochs", "1", "--eval-retain", "2", *extra]


def evaluate(f, model, out, *extra):
    return ["eval", "--model", model, "--data-dir", TOFU, "--max-samples", "2",
            "--max-new-tokens", "4", "--output-dir", out, "--no-progress", "--threads", "1",
            *extra]


def run(tool_argv, env_extra=None, timeout=600):
    tool, *argv = tool_argv
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONWARNINGS": "ignore", **(env_extra or {})}
    p = subprocess.run([sys.executable, "-m", f"palu_kernels.cli.{tool}", *argv],
                       capture_output=True, text=True, env=env, timeout=timeout)
    return p


def describe(p, out=None) -> str:
    err = [ln for ln in p.stderr.replace("\r", "\n").splitlines()
           if ln.strip() and "%|" not in ln and "it/s]" not in ln and "warn" not in ln.lower()]
    tb = "Traceback" in p.stderr
    last = err[-1] if err else ""
    for ln in p.stderr.replace("\r", "\n").splitlines():  # a message amid progress bars
        for prog in ("palu-unlearn:", "palu-eval:", "palu-compare:", "palu-spans:",
                     "palu-experiment:"):
            if prog in ln:
                last = ln[ln.index(prog):]
    if len(last) > 150:
        last = last[:147] + "..."
    s = f"exit {p.returncode}{', traceback' if tb else ''}: {last}".replace("|", "\\|")
    if out is not None:
        if not os.path.exists(out):
            s += " [no output dir]"
        elif os.path.isdir(out):
            items = sorted(os.listdir(out))
            s += f" [output: {', '.join(items) if items else 'EMPTY dir'}]"
    return s


def weights_finite(d) -> str:
    from safetensors.torch import load_file

    p = os.path.join(d, "model.safetensors")
    if not os.path.exists(p):
        return "no model.safetensors"
    t = load_file(p)
    bad = sum(int(not v.float().isfinite().all()) for v in t.values())
    return f"{bad} of {len(t)} tensors non-finite"


def cases(f):
    w = f["work"]

    def out(name):
        d = os.path.join(w, "out_" + name)
        if os.path.exists(d):
            shutil.rmtree(d) if os.path.isdir(d) else os.remove(d)
        return d

    def plain(name, argv_fn):
        def go():
            o = out(name)
            p = run(argv_fn(o))
            return describe(p, o)
        return go

    c = {}
    def nan_case(flag, value):
        def go():
            o = out("nan")
            p = run(unlearn(f, o, flag, value))
            s = describe(p, o)
            if os.path.exists(os.path.join(o, "model.safetensors")):
                s += "; " + weights_finite(o)
            return s
        return go

    c["1a gamma nan"] = nan_case("--gamma", "nan")
    c["1b alpha inf"] = nan_case("--alpha", "inf")
    c["1c gamma 1e300"] = nan_case("--gamma", "1e300")
    c["1d gamma 3e38 (finite; the loss overflows in training)"] = nan_case("--gamma", "3e38")

    def model_in_output():
        o = out("c")
        p = run(unlearn(f, o, "--save-steps", "1"))
        ck = os.path.join(o, "checkpoint-2")
        state = open(os.path.join(ck, "trainer_state.json")).read()
        os.utime(ck, (1, 1))
        p = run(unlearn(f, o, "--overwrite", model=ck))
        same = (os.path.isfile(os.path.join(ck, "trainer_state.json"))
                and open(os.path.join(ck, "trainer_state.json")).read() == state
                and os.stat(ck).st_mtime == 1)
        return describe(p) + ("; the input checkpoint-2 untouched" if same else
                              "; the input checkpoint-2 was DELETED (and rewritten by the run)")
    c["3 --model runs/c/checkpoint-2 --output-dir runs/c --overwrite"] = model_in_output

    def half_checkpoint():
        o = out("half")
        args = ["--save-steps", "1", "--max-steps", "3", "--save-total-limit", "3"]
        p = run(unlearn(f, o, *args))
        for name in os.listdir(o):  # as if killed while writing checkpoint-2/optimizer.pt
            if not name.startswith("checkpoint-"):
                p_ = os.path.join(o, name)
                shutil.rmtree(p_) if os.path.isdir(p_) else os.remove(p_)
        shutil.rmtree(os.path.join(o, "checkpoint-3"))
        ck2 = os.path.join(o, "checkpoint-2")
        opt = os.path.join(ck2, "optimizer.pt")
        open(opt, "r+b").truncate(os.path.getsize(opt) // 2)
        os.remove(os.path.join(ck2, "trainer_state.json"))
        p = run(unlearn(f, o, *args, "--resume"))
        skipped = [ln[ln.index("palu-unlearn:"):] for ln in p.stderr.splitlines()
                   if "palu-unlearn: --resume: skipping" in ln or "resuming from" in ln]
        done = os.path.isfile(os.path.join(o, "run_summary.json"))
        return describe(p) + "; " + "; ".join(skipped) + ("; finished" if done else "")
    c["4 --resume with a half-written last checkpoint"] = half_checkpoint

    c["5a --epochs 0"] = plain("e0", lambda o: unlearn(f, o, "--epochs", "0", "--max-steps", "-1"))
    c["5b --first-n 0"] = plain("fn0", lambda o: unlearn(f, o, "--first-n", "0"))
    c["5c target_words [] everywhere"] = plain(
        "nosp", lambda o: unlearn(f, o, "--forget", f["nospans"]))
    c["6a model dir without tokenizer"] = plain("m", lambda o: unlearn(f, o, model=f["notok"]))
    c["6b no config.json"] = plain("m", lambda o: unlearn(f, o, model=f["noconfig"]))
    c["6c truncated weights"] = plain("m", lambda o: unlearn(f, o, model=f["trunc"]))
    c["6d fake .gguf"] = plain("m", lambda o: unlearn(f, o, model=f["gguf"]))
    c["6e tokenizer without EOS"] = plain("m", lambda o: unlearn(f, o, model=f["noeos"]))
    c["6f --resume /bad/path"] = plain("r", lambda o: unlearn(f, o, "--resume", "/bad/path"))
    for flag, val in (("--lr", "nan"), ("--lr=-1e-3", None), ("--epochs", "nan"),
                      ("--seed", "-1"), ("--warmup-epochs", "-1"), ("--logging-steps", "0"),
                      ("--optim", "bogus"), ("--backend", "triton"), ("--target", "nan")):
        extra = [flag] if val is None else [flag, val]
        c[f"6 {' '.join(extra)}"] = plain("v", lambda o, extra=extra: unlearn(f, o, *extra))
    c["6 missing --idk-file"] = plain(
        "v", lambda o: unlearn(f, o, "--method", "idkdpo", "--idk-file", "/no/such.jsonl"))
    def skipped(name, argv_fn):
        def go():
            o = out(name)
            p = run(argv_fn(o))
            s = describe(p, o)
            sp = os.path.join(o, "run_summary.json")
            if os.path.exists(sp):
                d = json.load(open(sp))["data"]
                s += f"; skipped: {d['forget_skipped'] + d['retain_skipped']}"
            return s
        return go

    c["6g long question, --skip-bad-records (forget)"] = skipped(
        "v", lambda o: unlearn(f, o, "--forget", f["longq"], "--skip-bad-records",
                               "--max-length", "300"))
    c["6h long question, no skip (forget)"] = plain(
        "v", lambda o: unlearn(f, o, "--forget", f["longq"], "--max-length", "300"))
    c["6i long question (retain), --skip-bad-records"] = skipped(
        "v", lambda o: unlearn(f, o, "--retain", f["longr"], "--skip-bad-records",
                               "--max-length", "300", "--eval-retain", "1"))
    c["6j palu-eval --output-dir is a file"] = lambda: describe(
        run(evaluate(f, f["model"], f["afile"])))
    c["6k palu-eval --retain-result not JSON"] = plain(
        "ev", lambda o: evaluate(f, f["model"], o, "--retain-result", f["notjson"]))

    def half_model():
        o = out("hm")
        run(unlearn(f, o, "--save-steps", "1"))
        os.remove(os.path.join(o, "run_summary.json"))
        p = os.path.join(o, "model.safetensors")
        data = open(p, "rb").read()
        open(p, "wb").write(data[: len(data) // 2])
        return describe(run(evaluate(f, o, out("ev"))))
    c["6l palu-eval on a half-written model"] = half_model

    def retain_mismatch():
        o = out("ret")
        run(evaluate(f, f["model"], o))
        rr = os.path.join(o, "eval.json")
        o2 = out("ret2")
        s = describe(run(evaluate(f, f["model"], o2, "--retain-result", rr)[:0] + [
            "eval", "--model", f["model"], "--data-dir", TOFU, "--max-samples", "4",
            "--max-new-tokens", "4", "--output-dir", o2, "--no-progress", "--threads", "1",
            "--retain-result", rr]))
        if os.path.exists(os.path.join(o2, "eval.json")):
            s += f"; FQ = {json.load(open(os.path.join(o2, 'eval.json')))['metrics']['forget_quality']}"
        return s
    c["7a --retain-result of another --max-samples"] = retain_mismatch

    def nan_ratios():
        o = out("retn")
        run(evaluate(f, f["model"], o))
        rr = os.path.join(o, "eval.json")
        d = json.load(open(rr))
        d["forget_truth_ratios"] = [float("nan")] * len(d["forget_truth_ratios"])
        json.dump(d, open(rr, "w"))
        o2 = out("retn2")
        s = describe(run(evaluate(f, f["model"], o2, "--retain-result", rr)))
        if os.path.exists(os.path.join(o2, "eval.json")):
            s += f"; FQ = {json.load(open(os.path.join(o2, 'eval.json')))['metrics']['forget_quality']}"
        return s
    c["7b NaN retain truth ratios"] = nan_ratios

    def compare_bad_forget():
        o = out("cmp")
        bad = os.path.join(w, "bad_forget.jsonl")
        open(bad, "w").write('{"question": "q"}\n')
        p = run(["compare", "--model", f["model"], "--forget", bad, "--data-dir", TOFU,
                 "--output-dir", o, "--max-samples", "2", "--max-new-tokens", "4",
                 "--methods", "palu", "--no-progress", "--threads", "1", "--max-steps", "1"])
        return describe(p, o) + ("; evaluated the original first" if os.path.isdir(
            os.path.join(o, "original")) else "")
    c["7d palu-compare with bad --forget data"] = compare_bad_forget
    c.update(cases20(f, out))
    return c


# ----------------------------------------------------------------------------- issue 20

def py(code: str, timeout=600):
    """``python -c code``; its stdout's last line (or the last line of stderr)."""
    # the code under test is PYTHONPATH's (default: this checkout), not the current directory's
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.environ.get("PYTHONPATH") or ROOT}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       cwd=os.path.dirname(TOFU), timeout=timeout)
    lines = (p.stdout.strip() or p.stderr.strip()).splitlines()
    return (lines[-1] if lines else f"exit {p.returncode}").replace("|", "\\|")


def popen(tool_argv, **kw):
    """A CLI in a subprocess with SIGINT at its default (a shell's background job ignores it)."""
    import signal

    tool, *argv = tool_argv
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, "-m", f"palu_kernels.cli.{tool}", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **kw)


class _P:  # what describe() reads, from a Popen
    def __init__(self, p):
        self.stdout, self.stderr = p.communicate()
        self.returncode = p.returncode


def _summary(o):
    sp = os.path.join(o, "run_summary.json")
    if not os.path.isfile(sp):
        return "no run_summary.json"
    a = json.load(open(sp))["arguments"]
    return f"run_summary.json: --forget {os.path.basename(a['forget'])} --lr {a['lr']}"


def cases20(f, out):
    from palu_kernels import outputs

    w = f["work"]
    c = {}

    def plain(name, argv_fn):
        def go():
            o = out(name)
            return describe(run(argv_fn(o)), o)
        return go

    def u16(o, *extra, forget=None):
        return ["unlearn", "--model", f["model"], "--forget", forget or f["f16"], "--retain",
                f["r16"], "--epochs", "2", "--batch-size", "2", "--save-steps", "2", "--k", "20",
                "--eval-retain", "2", "--output-dir", o, *extra]

    def two_runs(*extra):
        def go():
            o = out("two")
            if extra:  # --overwrite over a finished run
                run(u16(o, "--lr", "1e-4"))
            ps = [popen(u16(o, "--lr", lr, *extra)) for lr in ("1e-3", "1e-5")]
            rs = [_P(p) for p in ps]
            said = sum("model:" in r.stdout for r in rs)
            return ("; ".join(f"lr {lr}: {describe(r)}" for lr, r in zip(("1e-3", "1e-5"), rs))
                    + f"; {said} printed 'model:'; {_summary(o)}")
        return go
    c["r2-1 two runs into one --output-dir"] = two_runs()
    c["r2-1b two --overwrite runs into one finished dir"] = two_runs("--overwrite")

    def spans_own_input():
        g = os.path.join(w, "g.jsonl")
        shutil.copy(os.path.join(TOFU, "forget01_spans.jsonl"), g)
        before = open(g, "rb").read()
        p = run(["spans", g, "-o", g])
        same = open(g, "rb").read() == before
        return describe(p) + ("; input unchanged" if same else "; **input REPLACED**")
    c["r2-2 palu-spans IN -o IN"] = spans_own_input

    def resume_other(finished):
        def go():
            o = out("fin")
            run(u16(o, "--lr", "1e-3"))
            if not finished:
                os.remove(os.path.join(o, "run_summary.json"))
            p = run(u16(o, "--lr", "5e-3", "--resume", forget=f["f4"]))
            steps = ""
            sp = os.path.join(o, "run_summary.json")
            if os.path.isfile(sp):
                steps = f" (steps {json.load(open(sp))['steps']})"
            return describe(p) + f"; {_summary(o)}{steps}"
        return go
    c["r2-3 --resume a finished run with other --forget/--lr"] = resume_other(True)
    c["r2-3b --resume an unfinished run with other --forget/--lr"] = resume_other(False)

    def experiment_cache():
        o = os.path.join(w, "exp")
        shutil.rmtree(o, ignore_errors=True)
        first = run(["experiment", "k", "--quick", "--out", o, "--no-progress"])
        if first.returncode != 0:
            return "first run failed: " + describe(first)
        runs = sorted(os.listdir(os.path.join(o, "runs")))
        p0 = os.path.join(o, "runs", runs[0])
        open(p0, "r+").truncate(50)
        a = run(["experiment", "k", "--quick", "--out", o, "--no-progress"])
        redone = "redone" if json.load(open(p0)).get("key") else "not redone"
        setup = next(os.path.join(o, "setups", d, "setup.json")
                     for d in os.listdir(os.path.join(o, "setups")))
        open(setup, "w").write("{}")
        b = run(["experiment", "k", "--quick", "--out", o, "--no-progress"])
        afile = os.path.join(w, "afile")
        d = run(["experiment", "k", "--quick", "--out", afile, "--no-progress"])
        return (f"truncated run file: {describe(a)} ({redone}); setup.json `{{}}`: "
                f"{describe(b)}; --out a file: {describe(d)}")
    c["r2-4 palu-experiment cache: damaged files, --out a file"] = experiment_cache

    def threshold(value):
        def go():
            p = run(["spans", f["forget"], "--method", "contrast", "--model", f["model"],
                     "--reference", f["model"], f"--threshold={value}", "--json"])
            n = ""
            if p.returncode == 0:
                n = f"; {json.loads(p.stdout)['n_spans']} spans"
            return describe(p) + n
        return go
    c["r2-5 palu-spans --threshold nan"] = threshold("nan")
    c["r2-5b palu-spans --threshold=-inf"] = threshold("-inf")

    def long_passage(mb):
        def go():
            import time

            unit = ('Basil Mahfouz Al-Kuwaiti wrote "The Sand Road" in 1956 for the University '
                    "of Karachi. He was 30 years old; his father was a florist. ")
            txt = os.path.join(w, f"passage{mb}.txt")
            open(txt, "w").write(unit * int(mb * 1e6 // len(unit)))
            t0 = time.time()
            p = run(["spans", txt, "-o", os.path.join(w, "passage.jsonl")], timeout=3600)
            return describe(p) + f"; {time.time() - t0:.1f} s wall (shared CPU)"
        return go
    c["r2-6 palu-spans on a 1 MB passage"] = long_passage(1)
    c["r2-6b palu-spans on a 5 MB passage"] = long_passage(5)

    def npo_raw():
        o = out("npo")
        raw = os.path.join(w, "forget01_4.json")
        with open(os.path.join(TOFU, "forget01.json"), encoding="utf-8") as fh:
            open(raw, "w").write("".join(next(fh) for _ in range(4)))
        p = run(unlearn(f, o, "--method", "npo", "--forget", raw))
        return describe(p, o)
    c["r2-7 --method npo on records without spans"] = npo_raw

    def ctrl_c(tool_argv, o, wait_for):
        import signal
        import time

        def go():
            p = popen(tool_argv)
            t0 = time.time()
            while time.time() - t0 < 900 and p.poll() is None and not wait_for():
                time.sleep(0.5)
            p.send_signal(signal.SIGINT)
            r = _P(p)
            return describe(r) + (f" [output: {', '.join(sorted(os.listdir(o)))}]"
                                  if os.path.isdir(o) else "")
        return go

    o8 = out("int")
    c["r2-8 Ctrl-C in palu-unlearn"] = ctrl_c(
        u16(o8, "--lr", "1e-3", "--epochs", "200"), o8,
        lambda: os.path.isdir(o8) and any(  # a complete checkpoint
            outputs.checkpoint_problem(os.path.join(o8, n)) is None
            for n in os.listdir(o8) if n.startswith("checkpoint-")))
    o8e = os.path.join(w, "exp_int")
    c["r2-8b Ctrl-C in palu-experiment"] = ctrl_c(
        ["experiment", "k", "--quick", "--out", o8e, "--no-progress"], o8e,
        lambda: os.path.isdir(os.path.join(o8e, "runs")) and os.listdir(os.path.join(o8e, "runs")))

    def seeds():
        o = os.path.join(w, "exp_seeds")
        shutil.rmtree(o, ignore_errors=True)
        p = run(["experiment", "k", "--quick", "--seeds=-1", "--out", o, "--no-progress"])
        return describe(p, o)
    c["r2-9 palu-experiment --seeds=-1"] = seeds

    def bom():
        o = out("bom")
        b = os.path.join(w, "bom.jsonl")
        open(b, "wb").write(b"\xef\xbb\xbf" + open(f["forget"], "rb").read())
        p = run(unlearn(f, o, "--forget", b, "--skip-bad-records"))
        s = describe(p)
        sp = os.path.join(o, "run_summary.json")
        if os.path.isfile(sp):
            s += "; " + json.load(open(sp))["data"]["forget"].split(": ", 1)[1]
        return s
    c["r2-10 byte-order mark, --skip-bad-records"] = bom

    c["r2-11 the loss on device='meta'"] = lambda: py(
        "import torch\nfrom palu_kernels import palu_local_entropy_loss as L\n"
        "z=torch.randn(2,5,7,device='meta'); i=torch.zeros(2,5,dtype=torch.bool,device='meta')\n"
        "try:\n    L(z, z, i, ~i, k=3); print('no error')\n"
        "except Exception as e:\n    print(type(e).__name__ + ': ' + str(e).splitlines()[0][:120])")

    def spans_exit():
        bad = os.path.join(w, "bad_forget.jsonl")
        open(bad, "w").write('{"question": "q"}\n')
        return describe(run(["spans", bad]))
    c["r2-s1 palu-spans on a bad input file"] = spans_exit
    c["r2-s2 one bad record, no --skip-bad-records"] = plain(
        "v", lambda o: unlearn(f, o, "--forget", os.path.join(w, "bad_forget.jsonl")))

    def warn_source():
        o = out("warn")
        b = os.path.join(w, "onebad.jsonl")
        open(b, "w").write(open(f["forget"]).read() + '{"question": "q"}\n')
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        p = subprocess.run([sys.executable, "-m", "palu_kernels.cli.unlearn",
                            *unlearn(f, o, "--forget", b, "--skip-bad-records")[1:]],
                           capture_output=True, text=True, env=env, timeout=600)
        lines = [ln for ln in p.stderr.replace("\r", "\n").splitlines() if "skipped 1 bad" in ln]
        src = sum("warnings.warn(" in ln for ln in p.stderr.splitlines())
        return (f"exit {p.returncode}: `{lines[0].strip()[:110] if lines else '?'}`; "
                f"{src} line(s) of Python source")
    c["r2-s3 --skip-bad-records warning"] = warn_source
    c["r2-s4 the loss with k=np.int64(3)"] = lambda: py(
        "import torch, numpy as np\nfrom palu_kernels import palu_local_entropy_loss as L\n"
        "z=torch.randn(2,5,7); i=torch.zeros(2,5,dtype=torch.bool); i[0,1]=True\n"
        "try:\n    print('loss', round(float(L(z, z, i, ~i, k=np.int64(3))), 4), '== k=3:',"
        " bool(L(z, z, i, ~i, k=np.int64(3)) == L(z, z, i, ~i, k=3)))\n"
        "except Exception as e:\n    print(type(e).__name__ + ': ' + str(e)[:120])")
    c["r2-ref reference forward KL, reference row all -inf"] = lambda: py(
        "import torch\nfrom reference.palu import palu_loss_reference as R\n"
        "z=torch.randn(1,6,dtype=torch.float64,requires_grad=True)\n"
        "r=torch.full((1,6),float('-inf'),dtype=torch.float64)\n"
        "i=torch.zeros(1,dtype=torch.bool)\nv=R(z,r,i,~i,k=2,kl='forward'); v.backward()\n"
        "print('loss', v.item(), 'grad', z.grad.tolist())")
    return c


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/rel13")
    ap.add_argument("--only", default=None)
    a = ap.parse_args()
    f = setup(a.work)
    only = a.only.split(",") if a.only else None
    print("| case | result |\n|---|---|")
    for name, fn in cases(f).items():
        if only and name.split()[0] not in only:
            continue
        try:
            r = fn()
        except Exception as e:  # noqa: BLE001 - the driver reports, never stops
            r = f"driver error {type(e).__name__}: {e}"
        print(f"| {name} | {r} |", flush=True)


if __name__ == "__main__":
    main()
