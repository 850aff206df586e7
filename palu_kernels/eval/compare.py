"""``palu-compare``: unlearn with several methods from the same model and data, evaluate each
on TOFU, and write one comparison table and a Forget Quality / Model Utility plot.

Example (a tiny model on the CPU, two questions per evaluation split)::

    palu-compare --model /tmp/tiny-llama --retain-model /tmp/tiny-retain \\
        --forget ../shared/data/tofu/forget01_spans.jsonl \\
        --retain ../shared/data/tofu/retain99.json --data-dir ../shared/data/tofu \\
        --forget-split forget01 --methods palu,ga,npo --output-dir /tmp/compare \\
        --max-samples 2 --max-new-tokens 16 --epochs 1 --batch-size 4 --k 50 --lr 1e-3

Every method runs ``palu-unlearn`` (:func:`palu_kernels.train.cli.run`) with the same
arguments and seed: options that ``palu-compare`` does not know itself (``--epochs``,
``--lr``, ``--batch-size``, ``--max-length``, ``--k``, ``--first-n``, ``--alpha``, ``--gamma``,
``--lora-r``, ...) go to it unchanged. Then :func:`palu_kernels.eval.evaluate_model` scores
the starting model (row ``original``) and every unlearned model.

Writes into ``--output-dir``: ``<method>/`` (the unlearned model, its ``run_summary.json`` and
``eval_<split>/eval.{json,md}``), ``original/eval_<split>/``, ``compare.json`` (the rows and
the configuration), ``compare.md`` (the table, also printed) and ``compare.png`` (Forget
Quality, log scale, against Model Utility). Forget Quality needs the retain model
(``--retain-model`` or ``--retain-result``); without it the table says ``n/a`` and there is
no plot.
"""

from __future__ import annotations

import argparse
import gc
import glob
import json
import os
import shutil
import sys
import time
from typing import List, Optional

from .tofu import EVAL_SPLITS, FORGET_SPLITS, _fmt, split_file, write_result

DEFAULT_METHODS = "palu,ga,npo"
COLUMNS = (("method", "method"), ("forget_quality", "Forget Quality"),
           ("model_utility", "Model Utility"), ("forget_probability", "forget probability"),
           ("forget_rouge", "forget ROUGE-L"), ("train_time_s", "train time (s)"),
           ("steps", "steps"))
_OWN_UNLEARN_FLAGS = ("--method", "--model", "--forget", "--retain", "--output-dir")


def build_parser() -> argparse.ArgumentParser:
    from ..train.registry import add_method_arguments

    p = argparse.ArgumentParser(
        prog="palu-compare", allow_abbrev=False,
        description="Unlearn with several methods from the same model and data, evaluate each "
                    "on TOFU and write a table (Forget Quality, Model Utility, forget "
                    "probability, forget ROUGE, time) and a Forget Quality / Model Utility plot.",
        epilog="Any other option (--epochs, --lr, --batch-size, --max-length, --k, --first-n, "
               "--alpha, --gamma, --grad-accum, --lora-r, --seed, ...) is passed to palu-unlearn "
               "for every method; see palu-unlearn --help.")
    p.add_argument("--model", required=True, help="starting model directory (with tokenizer)")
    p.add_argument("--forget", required=True, help="span-annotated forget records (training)")
    p.add_argument("--retain", default=None, help="retain records (training)")
    p.add_argument("--methods", default=DEFAULT_METHODS,
                   help="comma-separated methods (default: %(default)s)")
    p.add_argument("--output-dir", required=True, help="where models, results and plots go")
    p.add_argument("--data-dir", default=os.path.join("..", "shared", "data", "tofu"),
                   help="TOFU evaluation data directory (default: %(default)s)")
    p.add_argument("--forget-split", default="forget01", choices=FORGET_SPLITS,
                   help="evaluation forget set (default: %(default)s)")
    fq = p.add_mutually_exclusive_group()
    fq.add_argument("--retain-model", default=None, help="retain model directory, for Forget Quality")
    fq.add_argument("--retain-result", default=None,
                    help="eval.json of a palu-eval run of the retain model, for Forget Quality")
    p.add_argument("--max-samples", type=int, default=None,
                   help="evaluate the first N questions of each split (default: all)")
    p.add_argument("--eval-batch-size", type=int, default=8, help="default: %(default)s")
    p.add_argument("--max-new-tokens", type=int, default=200,
                   help="greedy generation limit for ROUGE (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--overwrite", action="store_true",
                   help="allow a non-empty --output-dir (method directories are replaced)")
    p.add_argument("--delete-models", action="store_true",
                   help="delete each unlearned model's weights and checkpoints after its evaluation")
    p.add_argument("--no-progress", action="store_true", help="hide the evaluation progress bars")
    add_method_arguments(p)
    return p


def parse_methods(text: str) -> List[str]:
    """``"palu,ga"`` -> ``["palu", "ga"]``; ``ValueError`` for unknown or repeated names."""
    from ..train.registry import METHODS

    methods = [m.strip() for m in text.split(",") if m.strip()]
    if not methods:
        raise ValueError(f"--methods: expected a comma-separated list of {tuple(METHODS)}, "
                         f"got {text!r}")
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"--methods: unknown method(s) {bad}; expected names from "
                         f"{tuple(METHODS)}")
    if len(set(methods)) != len(methods):
        raise ValueError(f"--methods: a method is listed twice in {text!r}")
    return methods


def unlearn(args) -> dict:
    """Run ``palu-unlearn`` (:func:`palu_kernels.train.cli.run`) on parsed arguments whose
    ``method`` may be any key of :data:`palu_kernels.train.registry.METHODS` (its trainer
    class and :class:`~palu_kernels.train.base.BaselineConfig` come from the registry)."""
    from ..train import cli, registry

    return cli.run(args, trainer_cls=registry.trainer_class(args.method),
                   trainer_kwargs=registry.method_kwargs(args))


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
    lines = ["| " + " | ".join(h for _, h in COLUMNS) + " |",
             "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = ["-" if r[k] is None and k in ("train_time_s", "steps") else _fmt(r[k])
                 for k, _ in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


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


def _delete_weights(directory: str) -> None:
    for pattern in ("*.safetensors", "*.bin", "checkpoint-*", "adapter"):
        for path in glob.glob(os.path.join(directory, pattern)):
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def compare(argv: Optional[List[str]] = None) -> dict:
    """Parse ``argv``, run every method, evaluate, write the outputs; returns
    ``{"config", "rows", "table", "plot"}`` (also in ``<output-dir>/compare.json``)."""
    from .cli import _read_retain_result, load_model_and_tokenizer

    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    try:
        methods = parse_methods(args.methods)
    except ValueError as e:
        parser.error(str(e))
    for flag in rest:
        if flag.split("=", 1)[0] in _OWN_UNLEARN_FLAGS:
            parser.error(f"{flag.split('=', 1)[0]} is set by palu-compare (use --methods, "
                         "--model, --forget, --retain, --output-dir)")
    for name in ("max_samples", "eval_batch_size", "max_new_tokens", "threads"):
        v = getattr(args, name)
        if v is not None and v < 1:
            parser.error(f"--{name.replace('_', '-')}: expected a positive integer, got {v}")
    if not os.path.isdir(args.model):
        parser.error(f"--model: {args.model!r} is not a model directory")
    missing = [f for f in (split_file(args.data_dir, s, args.forget_split) for s in EVAL_SPLITS)
               if not os.path.isfile(f)]
    if missing:
        parser.error("--data-dir: missing TOFU file(s): " + ", ".join(missing))
    out = args.output_dir
    if os.path.isdir(out) and os.listdir(out) and not args.overwrite:
        parser.error(f"--output-dir {out!r} is not empty; pass --overwrite to replace its results")
    retain_ratios = None
    if args.retain_result:
        try:
            retain_ratios = _read_retain_result(args.retain_result, args.forget_split)
        except (FileNotFoundError, ValueError) as e:
            parser.error(str(e))

    from ..train import cli as unlearn_cli

    base = ["--model", args.model, "--forget", args.forget, "--output-dir", "<method>", *rest]
    if args.retain:
        base[4:4] = ["--retain", args.retain]
    if args.overwrite:
        base.append("--overwrite")
    unlearn_parser = unlearn_cli.build_parser()
    unlearn_parser.prog = "palu-compare (options passed to palu-unlearn)"
    unlearn_parser.parse_args(base)  # bad pass-through options fail now, before any training

    import torch
    from tqdm.auto import tqdm

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    progress = not args.no_progress
    eval_kw = {"max_samples": args.max_samples, "batch_size": args.eval_batch_size,
               "progress": progress}
    os.makedirs(out, exist_ok=True)
    t_all = time.perf_counter()
    try:
        if args.retain_model:
            from .tofu import forget_truth_ratios

            rmodel, rtok = load_model_and_tokenizer(args.retain_model, device)
            retain_ratios = forget_truth_ratios(rmodel, rtok, args.data_dir, args.forget_split,
                                                **eval_kw)
            _free(rmodel)

        def evaluate(model_dir: str, name: str) -> tuple:
            from .tofu import evaluate_model

            model, tok = load_model_and_tokenizer(model_dir, device)
            result = evaluate_model(model, tok, args.data_dir, args.forget_split,
                                    max_new_tokens=args.max_new_tokens,
                                    retain_truth_ratios=retain_ratios, **eval_kw)
            _free(model)
            result["config"].update({"model": os.path.abspath(model_dir), "method": name})
            eval_dir = os.path.join(out, name, f"eval_{args.forget_split}")
            write_result(result, eval_dir, title=f"TOFU evaluation of {name}")
            return result, eval_dir

        rows = []
        result, eval_dir = evaluate(args.model, "original")
        rows.append(_row("original", result, None, None, eval_dir))
        for method in tqdm(methods, desc="palu-compare methods", disable=not progress):
            method_dir = os.path.join(out, method)
            argv_m = [method_dir if a == "<method>" else a for a in base]
            uargs = unlearn_parser.parse_args(argv_m)
            uargs.method = method
            for k in ("beta", "delta", "idk_file"):
                setattr(uargs, k, getattr(args, k))
            uargs._argv = argv_m + ["--method", method]
            t0 = time.perf_counter()
            summary = unlearn(uargs)
            train_s = time.perf_counter() - t0
            result, eval_dir = evaluate(method_dir, method)
            rows.append(_row(method, result, train_s, summary.get("steps"), eval_dir))
            if args.delete_models:
                _delete_weights(method_dir)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"palu-compare: error: {e}") from None

    title = f"Forget Quality vs Model Utility ({args.forget_split})"
    table = table_markdown(rows)
    png = plot(rows, os.path.join(out, "compare.png"), title)
    config = {"command": "palu-compare " + " ".join(sys.argv[1:] if argv is None else argv),
              "methods": methods, "model": os.path.abspath(args.model),
              "forget": args.forget, "retain": args.retain, "data_dir": args.data_dir,
              "forget_split": args.forget_split, "retain_model": args.retain_model,
              "retain_result": args.retain_result, "max_samples": args.max_samples,
              "max_new_tokens": args.max_new_tokens, "unlearn_options": rest,
              "output_dir": os.path.abspath(out), "device": str(device), "seconds": round(time.perf_counter() - t_all, 2)}
    report = {"config": config, "rows": rows, "table": table, "plot": png}
    with open(os.path.join(out, "compare.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    md = [f"# palu-compare on {args.forget_split}", "", table]
    if png is None:
        md.append("No Forget Quality (pass --retain-model or --retain-result), so no plot.\n")
    else:
        md.append(f"![{title}](compare.png)\n")
    md.append("Forget Quality: KS-test p-value of forget-set truth ratios against the retain "
              "model's (higher = closer to never having seen the data). Model Utility: harmonic "
              "mean of probability, ROUGE-L recall and truth ratio on retain, real authors and "
              "world facts. Train time: the whole palu-unlearn run (loading, measurements, "
              "saving included).\n")
    with open(os.path.join(out, "compare.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(md))
    return report


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``palu-compare``; prints the table and where the outputs went."""
    report = compare(argv)
    out = report["config"]["output_dir"]
    print("\n=== palu-compare ===")
    print(report["table"])
    print(f"wrote {os.path.join(out, 'compare.md')}, compare.json"
          + (f", plot {report['plot']}" if report["plot"] else " (no plot: no Forget Quality)")
          + f" ({report['config']['seconds']} s)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
