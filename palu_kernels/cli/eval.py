"""``palu-eval``: evaluate a causal LM on TOFU (forget, retain, real authors, world facts), or
on MUSE with ``--benchmark muse`` (:mod:`palu_kernels.cli.eval_muse`).

Example (a tiny model, two questions per split, on the CPU)::

    palu-eval --model /tmp/tiny-llama --data-dir ../shared/data/tofu --forget-split forget01 \\
        --max-samples 2 --max-new-tokens 16 --output-dir /tmp/eval-tiny

Writes ``<output-dir>/eval.json`` (config, metrics, per-question values, the forget-set
truth ratios) and ``<output-dir>/eval.md`` (a summary), and prints the summary. Forget
Quality needs the retain model: ``--retain-model DIR`` evaluates it on the forget set (truth
ratios only, no generation), ``--retain-result FILE`` reads ``forget_truth_ratios`` from a
previous ``eval.json`` of the retain model.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import List, Optional

from ..eval.tofu import (FORGET_SPLITS, check_output_dir, check_retain_ratios, evaluate_model,
                         forget_truth_ratios, load_split, read_retain_result,
                         split_file, write_result)
from ._errors import DEBUG_HELP, error_text, run_cli
from .eval_muse import load_flagged

from ..io.models import DTYPES


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="palu-eval",
        description="TOFU metrics of a causal LM: probability, ROUGE-L recall, truth ratio, "
                    "Forget Quality, Model Utility, exact memorisation, extraction strength.")
    p.add_argument("--model", required=True,
                   help="model directory (Hugging Face format, model + tokenizer), loaded "
                        "offline")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer directory (default: the model directory)")
    p.add_argument("--benchmark", default="tofu", choices=("tofu", "muse"),
                   help="tofu, or muse: VerbMem, KnowMem, PrivLeak, utility (KnowMem on "
                        "retain), in MUSE's conventions (default: %(default)s)")
    p.add_argument("--data-dir", required=True,
                   help="TOFU data directory (e.g. ../shared/data/tofu), or the MUSE one "
                        "(e.g. ../shared/data/muse_news)")
    p.add_argument("--forget-split", default=None, choices=FORGET_SPLITS,
                   help="TOFU forget set (default: forget01)")
    retain = p.add_mutually_exclusive_group()
    retain.add_argument("--retain-model", default=None,
                        help="retain (retrained) model directory, for Forget Quality / PrivLeak")
    retain.add_argument("--retain-result", default=None,
                        help="eval.json of a previous palu-eval run of the retain model, for "
                             "Forget Quality (TOFU) or PrivLeak (MUSE)")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--target-model", default=None,
                        help="MUSE: the model before unlearning, for the extra column KnowMem "
                             "retain / target's")
    target.add_argument("--target-result", default=None,
                        help="MUSE: eval.json of a previous palu-eval --benchmark muse run of "
                             "the target model, for the extra column KnowMem retain / target's")
    p.add_argument("--max-samples", type=int, default=None,
                   help="evaluate the first N questions of each split (default: all)")
    p.add_argument("--batch-size", type=int, default=8, help="default: %(default)s")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="TOFU: greedy generation limit for ROUGE (default: 200); MUSE has "
                        "its own two flags")
    p.add_argument("--verbmem-max-new-tokens", type=int, default=None,
                   help="MUSE: VerbMem's new tokens, and the length of its reference in tokens "
                        "with BOS (default: MUSE's 128)")
    p.add_argument("--knowmem-max-new-tokens", type=int, default=None,
                   help="MUSE: KnowMem's new tokens (default: MUSE's 32)")
    p.add_argument("--output-dir", default=None,
                   help="where eval.json and eval.md go (default: <model>/eval_<split>, "
                        "MUSE: <model>/eval_muse)")
    p.add_argument("--device", default=None,
                   help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--dtype", default="auto", choices=DTYPES,
                   help="weights dtype (default: the checkpoint's); metrics are fp32 anyway")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice; 1 is often fastest "
                        "for tiny models on a busy machine)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    return p


def _positive(parser, name, value):
    if value is not None and value < 1:
        parser.error(f"{name}: expected a positive integer, got {value}")


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``palu-eval``; Ctrl-C: one line, exit status 130 (eval.json and eval.md
    are written at the end: nothing yet)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_cli("palu-eval", _main, argv,
                   interrupted=lambda: "nothing was written (eval.json is written at the end); "
                                       "rerun the command")


def _main(argv: List[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("max_samples", "batch_size", "max_new_tokens", "verbmem_max_new_tokens",
                 "knowmem_max_new_tokens", "threads"):
        _positive(parser, "--" + name.replace("_", "-"), getattr(args, name))
    if args.benchmark == "muse":
        from .eval_muse import check_muse_args, run_muse

        check_muse_args(parser, args)
    else:
        _check_tofu_args(parser, args)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as e:
        parser.error(f"--device: {e}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device: {device} requested but CUDA is not available")
    output_dir = args.output_dir or os.path.join(
        args.model, "eval_muse" if args.benchmark == "muse" else f"eval_{args.forget_split}")
    try:
        check_output_dir(output_dir)
    except ValueError as e:
        parser.error(error_text(e))
    progress = not args.no_progress
    from transformers.utils import logging as hf_logging

    hf_bars = hf_logging.is_progress_bar_enabled()
    if not progress:
        hf_logging.disable_progress_bar()
    try:
        return (run_muse if args.benchmark == "muse" else _run)(args, device, output_dir,
                                                                  progress)
    finally:
        if hf_bars:
            hf_logging.enable_progress_bar()


def _check_tofu_args(parser, args) -> None:
    for flag in ("target_model", "target_result", "verbmem_max_new_tokens",
                 "knowmem_max_new_tokens"):
        if getattr(args, flag) is not None:
            parser.error(f"--{flag.replace('_', '-')}: applies to --benchmark muse only")
    args.forget_split = args.forget_split or "forget01"
    if args.max_new_tokens is None:
        args.max_new_tokens = 200
    if not os.path.isdir(args.data_dir):
        parser.error(f"--data-dir: TOFU data directory not found: {args.data_dir}")
    missing = [split_file(args.data_dir, s, args.forget_split)
               for s in ("forget", "retain", "real_authors", "world_facts")]
    missing = [m for m in missing if not os.path.isfile(m)]
    if missing:
        parser.error("--data-dir: missing TOFU file(s): " + ", ".join(missing))


def _run(args, device, output_dir: str, progress: bool) -> int:
    t0 = time.perf_counter()
    try:
        retain_ratios = None
        if args.retain_result:
            retain_ratios = read_retain_result(args.retain_result, args.forget_split)
            n = len(load_split(args.data_dir, "forget", args.forget_split, args.max_samples))
            check_retain_ratios(retain_ratios, n, f"--retain-result {args.retain_result}")
        elif args.retain_model:
            rmodel, rtok = load_flagged("--retain-model", args.retain_model, device, args.dtype)
            retain_ratios = forget_truth_ratios(rmodel, rtok, args.data_dir, args.forget_split,
                                                max_samples=args.max_samples,
                                                batch_size=args.batch_size, progress=progress)
            del rmodel
        model, tokenizer = load_flagged("--model", args.model, device, args.dtype, args.tokenizer)
        result = evaluate_model(model, tokenizer, args.data_dir, args.forget_split,
                                max_samples=args.max_samples, batch_size=args.batch_size,
                                max_new_tokens=args.max_new_tokens,
                                retain_truth_ratios=retain_ratios, progress=progress)
    except (OSError, ValueError) as e:
        if args.debug:
            raise
        print(f"palu-eval: error: {error_text(e)}", file=sys.stderr)
        return 2
    result["config"].update({"model": os.path.abspath(args.model),
                             "retain_model": args.retain_model,
                             "retain_result": args.retain_result, "device": str(device),
                             "seconds": round(time.perf_counter() - t0, 2)})
    if args.retain_model:
        result["retain_forget_truth_ratios"] = retain_ratios
    try:
        json_path, md_path = write_result(result, output_dir,
                                          title=f"TOFU evaluation of {args.model}")
    except (OSError, ValueError) as e:
        if args.debug:
            raise
        print(f"palu-eval: error: {error_text(e)}", file=sys.stderr)
        return 2
    with open(md_path, encoding="utf-8") as f:
        md = f.read()
    print(md)
    print(f"wrote {json_path} and {md_path} ({result['config']['seconds']} s)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
