"""``palu-eval --benchmark muse``: the MUSE part of :mod:`palu_kernels.cli.eval` (which parses
the command line; this module checks the MUSE options and runs the evaluation).

Example (a tiny model, four items per set, on the CPU)::

    palu-eval --benchmark muse --model /tmp/tiny-llama --data-dir ../shared/data/muse_news \\
        --max-samples 4 --output-dir /tmp/eval-muse

Writes ``<output-dir>/eval.json`` (config, metrics, Min-K% scores, per-item outputs) and
``<output-dir>/eval.md``, and prints the summary. PrivLeak needs the retrained model:
``--retain-model DIR`` (its forget/holdout Min-K% AUC is computed, no generation) or
``--retain-result FILE`` (``metrics.privleak_auc`` of its ``eval.json``). Utility is MUSE's, the
absolute KnowMem on retain; the extra column "KnowMem retain / target's" (not a MUSE metric)
needs the target model: ``--target-model DIR`` (its KnowMem on retain) or ``--target-result
FILE``. New tokens: ``--verbmem-max-new-tokens`` (MUSE: 128) and ``--knowmem-max-new-tokens``
(MUSE: 32). Metric definitions and conventions: :mod:`palu_kernels.eval.muse`.
"""

from __future__ import annotations

import os
import sys
import time

from ..eval.muse import (KNOWMEM_MAX_NEW_TOKENS, VERBMEM_MAX_NEW_TOKENS, evaluate_muse,
                         retain_model_auc, target_model_knowmem_retain)
from ..eval.muse_files import MUSE_FILES, read_muse_result, write_muse_result
from ..eval.tofu import load_eval_model
from ..errors import UsageError
from ._errors import error_text

__all__ = ["check_muse_args", "run_muse"]


def check_muse_args(parser, args) -> None:
    """Refuse TOFU-only options and a data directory without the MUSE files (exit 2)."""
    if args.forget_split is not None:
        parser.error("--forget-split: applies to --benchmark tofu only")
    if args.max_new_tokens is not None:
        parser.error("--max-new-tokens: applies to --benchmark tofu only; MUSE has "
                     "--verbmem-max-new-tokens (default 128) and --knowmem-max-new-tokens "
                     "(default 32)")
    if not os.path.isdir(args.data_dir):
        parser.error(f"--data-dir: MUSE data directory not found: {args.data_dir}")
    missing = [os.path.join(args.data_dir, rel) for rel in MUSE_FILES.values()]
    missing = [m for m in missing if not os.path.isfile(m)]
    if missing:
        parser.error("--data-dir: missing MUSE file(s): " + ", ".join(missing))
    for flag in ("retain_model", "target_model"):
        path = getattr(args, flag)
        if path is not None and not os.path.isdir(path):
            parser.error(f"--{flag.replace('_', '-')}: model directory not found: {path}")


def load_flagged(flag: str, path: str, device, dtype: str, tokenizer=None):
    """:func:`load_eval_model`, its errors naming ``flag``."""
    try:
        return load_eval_model(path, device, dtype, tokenizer)
    except UsageError as e:
        raise UsageError(flag, error_text(e)) from e
    except (OSError, ValueError) as e:
        raise type(e)(f"{flag} {e}") from e


def run_muse(args, device, output_dir: str, progress: bool) -> int:
    t0 = time.perf_counter()
    verb_new = args.verbmem_max_new_tokens or VERBMEM_MAX_NEW_TOKENS
    know_new = args.knowmem_max_new_tokens or KNOWMEM_MAX_NEW_TOKENS
    common = dict(max_samples=args.max_samples, batch_size=args.batch_size, progress=progress)
    try:
        retain_auc = target_km = None
        if args.retain_result:
            retain_auc = read_muse_result(args.retain_result, "--retain-result", "privleak_auc",
                                          args.max_samples)
        elif args.retain_model:
            rmodel, rtok = load_flagged("--retain-model", args.retain_model, device, args.dtype)
            retain_auc = retain_model_auc(rmodel, rtok, args.data_dir, **common)
            del rmodel
        if args.target_result:
            target_km = read_muse_result(args.target_result, "--target-result",
                                         "knowmem_retain", args.max_samples)
        elif args.target_model:
            tmodel, ttok = load_flagged("--target-model", args.target_model, device, args.dtype)
            target_km = target_model_knowmem_retain(tmodel, ttok, args.data_dir,
                                                    max_new_tokens=know_new, **common)
            del tmodel
        model, tokenizer = load_flagged("--model", args.model, device, args.dtype, args.tokenizer)
        result = evaluate_muse(model, tokenizer, args.data_dir,
                               verbmem_max_new_tokens=verb_new, knowmem_max_new_tokens=know_new,
                               retain_auc=retain_auc, target_knowmem_retain=target_km, **common)
    except (OSError, ValueError) as e:
        if getattr(args, "debug", False):
            raise
        print(f"palu-eval: error: {error_text(e)}", file=sys.stderr)
        return 2
    result["config"].update({"model": os.path.abspath(args.model),
                             "retain_model": args.retain_model,
                             "retain_result": args.retain_result,
                             "target_model": args.target_model,
                             "target_result": args.target_result, "device": str(device),
                             "seconds": round(time.perf_counter() - t0, 2)})
    json_path, md_path = write_muse_result(result, output_dir,
                                           title=f"MUSE evaluation of {args.model}")
    with open(md_path, encoding="utf-8") as f:
        print(f.read())
    print(f"wrote {json_path} and {md_path} ({result['config']['seconds']} s)")
    return 0
