"""What the reliability reruns share (``bench/reliability_cases.py``): the inputs on a tiny
model, the command lines, and how a run is run and described in one table cell."""

from __future__ import annotations

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


class Finished:  # what describe() reads, from a Popen
    def __init__(self, p):
        self.stdout, self.stderr = p.communicate()
        self.returncode = p.returncode


def run_summary(o):
    sp = os.path.join(o, "run_summary.json")
    if not os.path.isfile(sp):
        return "no run_summary.json"
    a = json.load(open(sp))["arguments"]
    return f"run_summary.json: --forget {os.path.basename(a['forget'])} --lr {a['lr']}"

