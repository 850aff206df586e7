"""Issue 20's reliability cases (rows ``r2-*`` of ``bench/reliability_cases.py``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from bench.reliability_common import (TOFU, Finished, describe, popen, py, run, run_summary,
                                      unlearn)


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
            rs = [Finished(p) for p in ps]
            said = sum("model:" in r.stdout for r in rs)
            return ("; ".join(f"lr {lr}: {describe(r)}" for lr, r in zip(("1e-3", "1e-5"), rs))
                    + f"; {said} printed 'model:'; {run_summary(o)}")
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
            return describe(p) + f"; {run_summary(o)}{steps}"
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
            r = Finished(p)
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

