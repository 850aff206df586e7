"""Write ``docs/api.md``, the API reference, from the docstrings of the public API.

    python docs/gen_api.py            # rewrite docs/api.md
    python docs/gen_api.py --check    # exit 1 if docs/api.md is not what this writes

``tests/test_readme.py`` checks that the committed page is current. What is documented:
every name of ``palu_kernels.__all__`` (the loss), then the entry points a user calls to
train, evaluate, compare and find spans (``SECTIONS``); a name that moves is changed here.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "api.md")

# (title, introduction, [(module, name), ...]); None as the list: palu_kernels.__all__.
SECTIONS = [
    ("The loss: `palu_kernels`",
     "The drop-in loss and its helpers: `from palu_kernels import ...` (core layer; needs torch "
     "only, Triton for the GPU backend). Guide: [`loss.md`](loss.md); semantics: "
     "[`spec.md`](spec.md).",
     None),
    ("Unlearning a model: `palu_kernels.train`",
     "What `palu-unlearn` runs, from Python (needs the `train` extra): build an "
     "`UnlearningJob` from its parts and call `run_unlearning(job)`.",
     [("palu_kernels.train.job", "run_unlearning"),
      ("palu_kernels.train.spec", "UnlearningJob"),
      ("palu_kernels.train.spec", "ModelSpec"),
      ("palu_kernels.train.spec", "DataSpec"),
      ("palu_kernels.train.spec", "MethodSpec"),
      ("palu_kernels.train.spec", "TrainingOptions"),
      ("palu_kernels.train.spec", "OutputSpec")]),
    ("Evaluating a model: `palu_kernels.eval`",
     "What `palu-eval` runs (needs the `eval` extra).",
     [("palu_kernels.eval.tofu", "load_eval_model"),
      ("palu_kernels.eval", "evaluate_model"),
      ("palu_kernels.eval", "forget_truth_ratios"),
      ("palu_kernels.eval.muse", "evaluate_muse")]),
    ("Comparing methods and the demo",
     "What `palu-compare` and `palu-unlearn demo` run.",
     [("palu_kernels.experiments.compare", "Comparison"),
      ("palu_kernels.experiments.compare", "run_comparison"),
      ("palu_kernels.demo", "DemoConfig"),
      ("palu_kernels.demo.run", "run"),
      ("palu_kernels.demo", "generate_benchmark")]),
    ("Sensitive spans: `palu_kernels.spans`",
     "What `palu-spans` runs.",
     [("palu_kernels.spans", "SpanOptions"),
      ("palu_kernels.spans", "read_span_inputs"),
      ("palu_kernels.spans", "find_spans"),
      ("palu_kernels.spans", "write_span_records"),
      ("palu_kernels.spans", "score_records")]),
    ("Errors",
     "Below the command lines a mistake in an option or argument raises this; the command lines "
     "turn it into one line and exit status 2 ([`reliability.md`](reliability.md)).",
     [("palu_kernels.errors", "UsageError")]),
]

ROLE = re.compile(r":(?:func|class|meth|mod|data|attr|exc|obj):`(~?)([^`]+)`")
SECTION = re.compile(r"^(Args|Arguments|Returns|Raises|Yields|Example|Examples|Attributes):$")
WIDTH = 92


def _markdown(doc: str) -> str:
    """A docstring in markdown: reST roles and ````literals```` as code spans, ``::`` blocks
    and ``>>>`` examples fenced."""
    doc = ROLE.sub(lambda m: "`" + (m.group(2).rsplit(".", 1)[-1] if m.group(1)
                                    else m.group(2)) + "`", doc)
    doc = re.sub(r"``([^`]+)``", r"`\1`", doc)
    out, lines, i = [], doc.split("\n"), 0
    while i < len(lines):
        line = lines[i]
        if SECTION.match(line) and i + 1 < len(lines) and lines[i + 1].startswith("    "):
            # a Google-style section: its heading in bold, its indented body preformatted
            j, block = i + 1, []
            while j < len(lines) and (not lines[j].strip() or lines[j].startswith("    ")):
                block.append(lines[j][4:])
                j += 1
            while block and not block[-1].strip():
                block.pop()
            out += [f"**{line.strip()}**", "", "```"] + block + ["```", ""]
            i = j
            continue
        if line.rstrip().endswith("::") and i + 1 < len(lines):
            out.append(line.rstrip()[:-1] if not line.rstrip().endswith(" ::")
                       else line.rstrip()[:-3])
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            block = []
            while j < len(lines) and (not lines[j].strip() or lines[j].startswith("    ")):
                block.append(lines[j][4:])
                j += 1
            while block and not block[-1].strip():
                block.pop()
            out += ["", "```"] + block + ["```", ""]
            i = j
            continue
        if line.lstrip().startswith(">>>"):
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(lines[i])
                i += 1
            out += ["```"] + block + ["```"]
            continue
        out.append(line)
        i += 1
    return "\n".join(out).strip()


def _signature(name: str, obj) -> str:
    """``name(params)``, one parameter per line when it would be wider than ``WIDTH``."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return name
    if inspect.isclass(obj):
        sig = sig.replace(return_annotation=inspect.Signature.empty)
    one = f"{name}{sig}"
    if len(one) <= WIDTH:
        return one
    params = []
    seen_kwonly = False
    for p in sig.parameters.values():
        if p.kind is p.KEYWORD_ONLY and not seen_kwonly:
            params.append("*")
        seen_kwonly = seen_kwonly or p.kind in (p.KEYWORD_ONLY, p.VAR_POSITIONAL)
        params.append(str(p))
    ret = "" if sig.return_annotation is inspect.Signature.empty else \
        f" -> {inspect.formatannotation(sig.return_annotation)}"
    return f"{name}(\n" + "".join(f"    {p},\n" for p in params) + f"){ret}"


def _methods(cls) -> list:
    """Public methods defined on ``cls`` itself, with a docstring of their own."""
    out = []
    for attr, value in cls.__dict__.items():
        if attr.startswith("_") and attr != "__call__":
            continue
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        if inspect.isfunction(value) and value.__doc__:
            out.append((attr, value))
    return out


def _entry(module: str, name: str) -> str:
    obj = getattr(importlib.import_module(module), name)
    kind = "class" if inspect.isclass(obj) else "function"
    lines = [f"### `{name}`", "", f"`from {module} import {name}`", "",
             "```", ("class " if kind == "class" else "") + _signature(name, obj), "```", ""]
    doc = inspect.getdoc(obj) if obj.__doc__ else None
    if kind == "class" and dataclasses.is_dataclass(obj) and doc and doc.startswith(name + "("):
        doc = None  # the dataclass's generated docstring repeats the signature
    lines += [_markdown(doc) if doc else "(no docstring)", ""]
    if kind == "class":
        for attr, fn in _methods(obj):
            lines += [f"#### `{name}.{attr}`", "", "```", _signature(attr, fn), "```", "",
                      _markdown(inspect.getdoc(fn)), ""]
    return "\n".join(lines)


def render() -> str:
    """The whole page."""
    import palu_kernels

    parts = ["# API reference", "",
             "Generated from the docstrings by `python docs/gen_api.py` (do not edit by hand; "
             "`tests/test_readme.py` fails when this page is stale). The command lines are in "
             "[`cli.md`](cli.md), the layers in [`architecture.md`](architecture.md).", ""]
    for title, intro, entries in SECTIONS:
        if entries is None:
            entries = [("palu_kernels", n) for n in sorted(palu_kernels.__all__)]
        parts += [f"## {title}", "", intro, ""]
        parts += [_entry(m, n) for m, n in entries]
    return "\n".join(parts).rstrip() + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Write docs/api.md from the docstrings.")
    ap.add_argument("--check", action="store_true",
                    help="exit 1 if docs/api.md differs from what would be written")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        with open(OUT, encoding="utf-8") as f:
            stale = f.read() != text
        print("docs/api.md is " + ("stale: run python docs/gen_api.py" if stale else "current"))
        return int(stale)
    with open(OUT, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
