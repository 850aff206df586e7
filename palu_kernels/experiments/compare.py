"""Compare unlearning methods: run every method from the same model, data and options
(:func:`palu_kernels.train.job.run_unlearning`, one job per method), evaluate each model on
TOFU (:func:`palu_kernels.eval.evaluate_model`), write one table and a Forget Quality /
Model Utility plot. ``palu-compare`` (:mod:`palu_kernels.cli.compare`) and the demo build a
:class:`Comparison` and call :func:`run_comparison`; no command line is involved here.

Writes into ``output_dir``: ``<method>/`` (the unlearned model, its ``run_summary.json`` and
``eval_<split>/eval.{json,md}``), ``original/eval_<split>/``, ``compare.json`` (the rows and
the configuration), ``compare.md`` (the table) and ``compare.png`` (Forget Quality, log
scale, against Model Utility). Forget Quality needs the retain model (``retain_model`` or
``retain_truth_ratios``); without it the table says ``n/a`` and there is no plot.
"""

from __future__ import annotations

import gc
import os
import time
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional

from ..errors import UsageError
from ..eval.table import format_number, format_table
from ..eval.tofu import evaluate_model, forget_truth_ratios, load_eval_model, write_result
from ..outputs import MARKER, atomic_write_json, atomic_write_text, delete_weights
from ..train.job import UnlearningJob, check_job, run_unlearning
from ..train.registry import METHODS

__all__ = ["COLUMNS", "Comparison", "parse_methods", "plot", "run_comparison", "table_markdown"]

DEFAULT_METHODS = "palu,ga,npo"
COLUMNS = (("method", "method"), ("forget_quality", "Forget Quality"),
           ("model_utility", "Model Utility"), ("forget_probability", "forget probability"),
           ("forget_rouge", "forget ROUGE-L"), ("train_time_s", "train time (s)"),
           ("steps", "steps"))


@dataclass
class Comparison:
    """One comparison: ``job`` is the template (its method name and output directory are
    replaced for each of ``methods``; every other option is shared)."""

    job: UnlearningJob
    methods: List[str]
    output_dir: str
    data_dir: str
    forget_split: str = "forget01"
    retain_model: Optional[str] = None
    retain_truth_ratios: Optional[List[float]] = None
    max_samples: Optional[int] = None
    eval_batch_size: int = 8
    max_new_tokens: int = 200
    delete_models: bool = False
    progress: bool = True
    record: dict = field(default_factory=dict)
    """Extra keys for ``compare.json``'s ``config`` (the command line, the options given)."""
    method_options: Dict[str, dict] = field(default_factory=dict)
    """Per method, :class:`~palu_kernels.train.job.MethodSpec` fields and method settings
    that replace the template's (``{"palu": {"alpha": 5.0}}``): each method at its own tuned
    setting (any setting of the registry, passed on as a keyword of ``MethodSpec``)."""


def parse_methods(text: str) -> List[str]:
    """``"palu,ga"`` -> ``["palu", "ga"]``; a :class:`~palu_kernels.errors.UsageError` on
    ``methods`` for unknown or repeated names."""
    methods = [m.strip() for m in text.split(",") if m.strip()]
    if not methods:
        raise UsageError("methods", f"methods: expected a comma-separated list of "
                                    f"{tuple(METHODS)}, got {text!r}")
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise UsageError("methods", f"methods: unknown method(s) {bad}; expected names from "
                                    f"{tuple(METHODS)}")
    if len(set(methods)) != len(methods):
        raise UsageError("methods", f"methods: a method is listed twice in {text!r}")
    return methods


def _row(method: str, result: dict, train_s: Optional[float], steps: Optional[int],
         eval_dir: str) -> dict:
    m = result["metrics"]
    return {"method": method, "forget_quality": m["forget_quality"],
            "model_utility": m["model_utility"],
            "forget_probability": m["forget"]["probability"],
            "forget_rouge": m["forget"]["rouge_l_recall"],
            "train_time_s": None if train_s is None else round(train_s, 2), "steps": steps,
            "eval_dir": eval_dir}


def table_markdown(rows: List[dict]) -> str:
    """The comparison table (one row per method) as markdown."""
    cells = [["-" if r[k] is None and k in ("train_time_s", "steps") else format_number(r[k])
              for k, _ in COLUMNS] for r in rows]
    return format_table([h for _, h in COLUMNS], cells) + "\n"


def plot(rows: List[dict], path: str, title: str) -> Optional[str]:
    """Forget Quality (log y) against Model Utility, one labelled point per row; ``None``
    (nothing written) when no row has a Forget Quality."""
    pts = [r for r in rows if r["forget_quality"] is not None]
    if not pts:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    labels: dict = {}  # one label per point, naming every method that lands on it
    for r in pts:
        fq = max(float(r["forget_quality"]), 1e-300)  # a p-value may underflow to 0
        style = {"marker": "s", "color": "gray"} if r["method"] == "original" else {"marker": "o"}
        ax.scatter([r["model_utility"]], [fq], s=50, label=r["method"], **style)
        labels.setdefault((round(r["model_utility"], 4), float(f"{fq:.4g}")), []).append(r["method"])
    for (mu, fq), names in labels.items():
        ax.annotate(", ".join(names), (mu, fq), textcoords="offset points", xytext=(5, 5),
                    fontsize=9)
    ax.set_yscale("log")
    ax.set_xlim(-0.02, max(1.0, max(r["model_utility"] for r in pts)) + 0.02)
    ax.set_xlabel("Model Utility (higher is better)")
    ax.set_ylabel("Forget Quality, KS p-value (log, higher is better)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _free(model) -> None:
    import torch

    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_comparison(c: Comparison) -> dict:
    """Run every method of ``c``, evaluate, write the outputs; returns
    ``{"config", "rows", "table", "plot"}`` (also in ``<output_dir>/compare.json``)."""
    import torch
    from tqdm.auto import tqdm

    from ..io.records import load_records

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = c.output_dir
    # Everything that can be checked is checked before the first (minutes long) evaluation:
    # every method's job (values, paths, output directories) and the training data.
    jobs = {m: replace(c.job, method=replace(c.job.method, name=m,
                                             **c.method_options.get(m, {})),
                       output=replace(c.job.output, output_dir=os.path.join(out, m)))
            for m in c.methods}
    for job in jobs.values():
        check_job(job)
    try:
        load_records(c.job.data.forget, spans="required", skip_bad=c.job.data.skip_bad_records)
        if c.job.data.retain:
            load_records(c.job.data.retain, spans="ignore", skip_bad=c.job.data.skip_bad_records)
    except ValueError as e:
        raise UsageError(None, f"`forget`/`retain`: {e}") from None
    eval_kw = {"max_samples": c.max_samples, "batch_size": c.eval_batch_size,
               "progress": c.progress}
    os.makedirs(out, exist_ok=True)
    t_all = time.perf_counter()
    retain_ratios = c.retain_truth_ratios
    if c.retain_model:
        rmodel, rtok = load_eval_model(c.retain_model, device)
        retain_ratios = forget_truth_ratios(rmodel, rtok, c.data_dir, c.forget_split,
                                            **eval_kw)
        _free(rmodel)

    def evaluate(model_dir: str, name: str) -> tuple:
        model, tok = load_eval_model(model_dir, device)
        result = evaluate_model(model, tok, c.data_dir, c.forget_split,
                                max_new_tokens=c.max_new_tokens,
                                retain_truth_ratios=retain_ratios, **eval_kw)
        _free(model)
        result["config"].update({"model": os.path.abspath(model_dir), "method": name})
        eval_dir = os.path.join(out, name, f"eval_{c.forget_split}")
        write_result(result, eval_dir, title=f"TOFU evaluation of {name}")
        return result, eval_dir

    rows = []
    result, eval_dir = evaluate(c.job.model.path, "original")
    rows.append(_row("original", result, None, None, eval_dir))
    for method in tqdm(c.methods, desc="palu-compare methods", disable=not c.progress):
        method_dir = os.path.join(out, method)
        t0 = time.perf_counter()
        summary = run_unlearning(jobs[method])
        train_s = time.perf_counter() - t0
        if not os.path.isfile(os.path.join(method_dir, MARKER)):
            raise UsageError(None, f"{method_dir}: no {MARKER}; the {method} run did not "
                                   "finish")
        result, eval_dir = evaluate(method_dir, method)
        rows.append(_row(method, result, train_s, summary.get("steps"), eval_dir))
        if c.delete_models:
            delete_weights(method_dir)

    title = f"Forget Quality vs Model Utility ({c.forget_split})"
    table = table_markdown(rows)
    png = plot(rows, os.path.join(out, "compare.png"), title)
    config = {**c.record, "methods": list(c.methods), "model": os.path.abspath(c.job.model.path),
              "forget": c.job.data.forget, "retain": c.job.data.retain, "data_dir": c.data_dir,
              "forget_split": c.forget_split, "retain_model": c.retain_model,
              "max_samples": c.max_samples, "max_new_tokens": c.max_new_tokens,
              "unlearn_job": {k: v for k, v in c.job.arguments().items()
                              if k not in ("method", "output_dir")},
              "output_dir": os.path.abspath(out), "device": str(device),
              "seconds": round(time.perf_counter() - t_all, 2)}
    report = {"config": config, "rows": rows, "table": table, "plot": png}
    atomic_write_json(os.path.join(out, "compare.json"), report, indent=1, default=str)
    md = [f"# palu-compare on {c.forget_split}", "", table]
    if png is None:
        md.append("No Forget Quality (no retain model, nor the eval.json of its evaluation), so "
                  "no plot.\n")
    else:
        md.append(f"![{title}](compare.png)\n")
    md.append("Forget Quality: KS-test p-value of forget-set truth ratios against the retain "
              "model's (higher = closer to never having seen the data). Model Utility: harmonic "
              "mean of probability, ROUGE-L recall and truth ratio on retain, real authors and "
              "world facts. Train time: the whole unlearning run (loading, measurements, "
              "saving included).\n")
    atomic_write_text(os.path.join(out, "compare.md"), "\n".join(md))
    return report
