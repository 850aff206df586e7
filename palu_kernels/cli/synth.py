"""``python -m palu_kernels.cli.synth --out DIR``: write the synthetic TOFU-layout benchmark
(:func:`palu_kernels.demo.synth.generate_benchmark`) and list the files."""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from ..demo.synth import generate_benchmark


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m palu_kernels.cli.synth --out DIR``: write the benchmark, list the files."""
    ap = argparse.ArgumentParser(
        prog="python -m palu_kernels.cli.synth",
        description="Write a synthetic TOFU-layout unlearning benchmark with known spans.")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--people", type=int, default=20, help="fictitious authors (default 20)")
    ap.add_argument("--questions", type=int, default=8, help="questions per author (default 8)")
    ap.add_argument("--forget-fraction", type=float, default=0.1,
                    help="share of authors to forget, whole percent (default 0.1 -> forget10)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--real-authors", type=int, default=20)
    ap.add_argument("--world-facts", type=int, default=20)
    ap.add_argument("--extras", default="",
                    help="comma-separated extra facts per author: synonym, long, split "
                         "(default: none; see palu_kernels.demo.synth_extra)")
    args = ap.parse_args(argv)
    try:
        paths = generate_benchmark(
            args.out, n_people=args.people, questions_per_person=args.questions,
            forget_fraction=args.forget_fraction, seed=args.seed,
            n_real_authors=args.real_authors, n_world_facts=args.world_facts,
            extras=tuple(e.strip() for e in args.extras.split(",") if e.strip()))
    except (TypeError, ValueError) as exc:
        ap.error(str(exc))
    for key, path in paths.items():
        n = sum(1 for _ in open(path, encoding="utf-8")) if key != "meta" else 1
        print(f"{key:24s} {path}  ({n} lines)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
