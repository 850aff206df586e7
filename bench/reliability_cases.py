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
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # run as a script: bench, palu_kernels and reference from the tree
    sys.path.insert(0, REPO_ROOT)

from bench.reliability_cases20 import cases20  # noqa: E402
from bench.reliability_common import (TOFU, describe, evaluate, run, setup,  # noqa: E402
                                      unlearn, weights_finite)


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
