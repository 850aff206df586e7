"""``palu-compare``: unlearn with several methods from the same model and data, evaluate each
on TOFU, and write one comparison table and a Forget Quality / Model Utility plot.

Example (a tiny model on the CPU, two questions per evaluation split)::

    palu-compare --model /tmp/tiny-llama --retain-model /tmp/tiny-retain \\
        --forget ../shared/data/tofu/forget01_spans.jsonl \\
        --retain ../shared/data/tofu/retain99.json --data-dir ../shared/data/tofu \\
        --forget-split forget01 --methods palu,ga,npo --output-dir /tmp/compare \\
        --max-samples 2 --max-new-tokens 16 --epochs 1 --batch-size 4 --k 50 --lr 1e-3

The command line becomes a :class:`~palu_kernels.experiments.compare.Comparison`: options
that ``palu-compare`` does not know itself (``--epochs``, ``--lr``, ``--batch-size``,
``--max-length``, ``--k``, ``--first-n``, ``--lora-r``, the method settings ``--gamma``,
``--alpha``, ``--beta``, ... of :mod:`palu_kernels.cli.options`) are read with
``palu-unlearn``'s parser into the template :class:`~palu_kernels.train.job.UnlearningJob`
that every method shares (a method ignores the settings it does not have);
:func:`~palu_kernels.experiments.compare.
run_comparison` does the rest (see that module for the outputs).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from ._errors import DEBUG_HELP, error_text, flags_in_errors, run_cli
from ..eval.tofu import (EVAL_SPLITS, FORGET_SPLITS, check_retain_ratios, load_split,
                         read_retain_result, split_file)
from ..experiments.compare import (COLUMNS, DEFAULT_METHODS, Comparison, parse_methods, plot,  # noqa: F401
                                   run_comparison, table_markdown)

_OWN_UNLEARN_FLAGS = ("--method", "--model", "--forget", "--retain", "--output-dir")


def build_parser() -> argparse.ArgumentParser:
    from .options import knob_flags

    p = argparse.ArgumentParser(
        prog="palu-compare", allow_abbrev=False,
        description="Unlearn with several methods from the same model and data, evaluate each "
                    "on TOFU and write a table (Forget Quality, Model Utility, forget "
                    "probability, forget ROUGE, time) and a Forget Quality / Model Utility plot.",
        epilog="Any other option (--epochs, --lr, --batch-size, --max-length, --k, --first-n, "
               "--grad-accum, --lora-r, --seed, ...) is passed to palu-unlearn for every method, "
               f"the method settings ({', '.join(knob_flags())}) too: each method takes those "
               "it has and ignores the others; see palu-unlearn --help.")
    p.add_argument("--model", required=True, help="starting model directory (with tokenizer)")
    p.add_argument("--forget", required=True, help="span-annotated forget records (training)")
    p.add_argument("--retain", default=None, help="retain records (training)")
    p.add_argument("--methods", default=DEFAULT_METHODS,
                   help="comma-separated methods (default: %(default)s)")
    p.add_argument("--output-dir", required=True, help="where models, results and plots go")
    p.add_argument("--data-dir", required=True,
                   help="TOFU evaluation data directory (e.g. ../shared/data/tofu)")
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
    p.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    return p


def comparison_from_argv(argv: Optional[List[str]] = None) -> Comparison:
    """Parse ``palu-compare``'s command line into a :class:`Comparison` (``SystemExit`` with
    the parser's message on bad options, before any work)."""
    from .unlearn import build_parser as unlearn_parser, job_from_args

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    try:
        methods = parse_methods(args.methods)
    except ValueError as e:
        parser.error(error_text(e))
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
    if os.path.exists(out) and not os.path.isdir(out):
        parser.error(f"--output-dir {out!r} exists and is not a directory")
    if os.path.isdir(out) and os.listdir(out) and not args.overwrite:
        parser.error(f"--output-dir {out!r} is not empty; pass --overwrite to replace its results")
    retain_ratios = None
    if args.retain_result:
        try:
            retain_ratios = read_retain_result(args.retain_result, args.forget_split)
            n = len(load_split(args.data_dir, "forget", args.forget_split, args.max_samples))
            check_retain_ratios(retain_ratios, n, f"--retain-result {args.retain_result}")
        except (FileNotFoundError, ValueError) as e:
            parser.error(error_text(e))

    base = ["--model", args.model, "--forget", args.forget, "--output-dir", out, *rest]
    if args.retain:
        base[4:4] = ["--retain", args.retain]
    if args.overwrite:
        base.append("--overwrite")
    uparser = unlearn_parser()
    uparser.prog = "palu-compare (options passed to palu-unlearn)"
    uargs = uparser.parse_args(base)  # bad pass-through options fail now, before any training
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    with flags_in_errors("palu-compare"):  # e.g. a bad --k or --first-n
        job = job_from_args(uargs)
    return Comparison(
        job=job, methods=methods, output_dir=out, data_dir=args.data_dir,
        forget_split=args.forget_split, retain_model=args.retain_model,
        retain_truth_ratios=retain_ratios, max_samples=args.max_samples,
        eval_batch_size=args.eval_batch_size, max_new_tokens=args.max_new_tokens,
        delete_models=args.delete_models, progress=not args.no_progress,
        record={"command": "palu-compare " + " ".join(argv),
                "retain_result": args.retain_result, "unlearn_options": rest})


def compare(argv: Optional[List[str]] = None) -> dict:
    """Parse ``argv`` and run the comparison; returns ``{"config", "rows", "table", "plot"}``
    (also in ``<output-dir>/compare.json``). A mistake: ``SystemExit`` with one line naming
    the flag."""
    comparison = comparison_from_argv(argv)
    with flags_in_errors("palu-compare"):
        return run_comparison(comparison)


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``palu-compare``; prints the table and where the outputs went. An
    ordinary error: one line on stderr, exit status 2 (``--debug``: the traceback)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_cli("palu-compare", _main, argv)


def _main(argv: List[str]) -> int:
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
