"""Recompute a MUSE demo result written before palu-eval used MUSE's conventions (issue 22).

The demo's ``muse_demo.json`` keeps every model's Min-K% scores (forget and holdout) and its
KnowMem on retain, which is all MUSE's PrivLeak and utility need: the AUC is recomputed with
forget labelled 0 and holdout 1 (:func:`palu_kernels.eval.muse.auc_score`), PrivLeak against
the retrained model's AUC of the same seed, utility = KnowMem on retain (absolute) and the
extra ratio to the target. VerbMem and KnowMem are copied as measured (see the README for why
VerbMem's reference is unchanged). Nothing is re-run.

    python bench/muse_recompute.py bench/results/muse/muse_demo.json
"""

from __future__ import annotations

import json
import os
import sys

from palu_kernels.demo.muse import summary_table
from palu_kernels.eval.muse import auc_score, knowmem_retain_vs_target, priv_leak
from palu_kernels.eval.muse_files import CONVENTIONS
from palu_kernels.outputs import atomic_write_text


def recompute(result: dict) -> dict:
    for seed in result["per_seed"]:
        rows = seed["rows"]
        for r in rows.values():
            mk = r["eval"]["min_k"]
            r["eval"]["metrics"]["privleak_auc"] = auc_score(mk["forget"], mk["holdout"])
        auc_r = rows["retrained"]["eval"]["metrics"]["privleak_auc"]
        km_t = rows["target"]["eval"]["metrics"]["knowmem_retain"]
        for r in rows.values():
            m, cfg = r["eval"]["metrics"], r["eval"]["config"]
            if cfg.get("conventions") == CONVENTIONS:
                raise SystemExit("muse_recompute: the result is already in MUSE's conventions")
            m["retain_auc"] = auc_r
            m["privleak"] = priv_leak(m["privleak_auc"], auc_r)
            m["utility"] = m["knowmem_retain"]
            m["knowmem_retain_vs_target"] = (knowmem_retain_vs_target(m["knowmem_retain"], km_t)
                                             if km_t else None)
            m.pop("utility_preservation", None)
            cfg["conventions"] = CONVENTIONS
            cfg["recomputed_by"] = "bench/muse_recompute.py (from the stored Min-K% scores)"
    result["table"] = summary_table(result["per_seed"])
    return result


def main(argv) -> int:
    if len(argv) != 1 or not os.path.isfile(argv[0]):
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    path = argv[0]
    with open(path, encoding="utf-8") as f:
        result = recompute(json.load(f))
    atomic_write_text(path, json.dumps(result, indent=1, default=str))
    print(result["table"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
