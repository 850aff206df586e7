"""``pareto``: every method over a ladder of its strength (learning rate, epochs), over seeds,
from the same fine-tuned models; one Forget Quality / Model Utility plot with each method's
frontier (seed error bars) and the table of the best Forget Quality each method reaches while
keeping Model Utility >= 0.95 x the retain model's.

Each method runs with its own default hyper-parameters (``gamma``, ``beta``, ``alpha``), except
PALU, which runs as :data:`palu_kernels.experiments.ablations.PALU_BASE` (K, N, gamma).
"""

from __future__ import annotations

import statistics as st
from dataclasses import replace

from .ablations import PALU_BASE, describe_spec
from .harness import Harness, Report, RunSpec, aggregate
from .plots import fq_floor, frontier, pyplot

__all__ = ["GRID", "METHODS", "best_at_utility", "pareto_experiment"]

METHODS = ("palu", "palu-nall", "tpo", "npo", "simnpo", "graddiff", "idkdpo", "ga")
"""Rows of the comparison: ``palu-nall`` is PALU with N = all (every sensitive token
initiating), the rest the registry's methods."""
GRID = {"full": ((5e-4, 5), (1e-3, 5), (1e-3, 10), (2e-3, 10), (1e-3, 20)),
        "quick": ((1e-3, 2),)}
"""(learning rate, epochs) points of each method: a ladder of unlearning strength (the full
size fits 25 minutes on 2 busy cores with 3 seeds)."""
MU_FRACTION = 0.95


def _spec(method: str, lr: float, epochs: float) -> RunSpec:
    if method == "palu":
        return replace(PALU_BASE, lr=lr, epochs=epochs)
    if method == "palu-nall":
        return replace(PALU_BASE, lr=lr, epochs=epochs, first_n=None)
    return RunSpec(method=method, lr=lr, epochs=epochs)


def best_at_utility(agg, threshold: float) -> dict:
    """Per method: the grid point with the highest median FQ among those whose mean MU is
    >= ``threshold`` (``None`` values when no point qualifies)."""
    out = {}
    for a in agg:
        if a["mu_mean"] < threshold or a["fq_median"] is None:
            continue
        b = out.get(a["method"])
        if b is None or (a["fq_median"], a["mu_mean"]) > (b["fq_median"], b["mu_mean"]):
            out[a["method"]] = a
    return out


def pareto_experiment(h: Harness) -> Report:
    grid = GRID["quick" if h.quick else "full"]
    items = [(_spec(m, lr, ep), seed, {"method_label": m, "lr": lr, "epochs": ep})
             for m in METHODS for lr, ep in grid for seed in h.seeds]
    rows = h.run_many(items, desc="pareto")
    for r in rows:  # the comparison's row name (palu-nall runs the registry's palu)
        r["method"] = r["method_label"]
    agg = aggregate(rows, ["method_label", "lr", "epochs"])
    for a in agg:
        a["method"] = a.pop("method_label")
    retain_mu = st.fmean(r["retain_mu"] for r in rows)
    thr = MU_FRACTION * retain_mu
    best = best_at_utility(agg, thr)
    table = []
    for m in METHODS:
        b = best.get(m)
        seeds_fq = ([r["forget_quality"] for r in rows if r["method"] == m and
                     r["lr"] == b["lr"] and r["epochs"] == b["epochs"]] if b else [])
        table.append({"method": m, "fq_median": b and b["fq_median"],
                      "fq_min": b and b["fq_min"], "fq_max": b and b["fq_max"],
                      "seeds_fq": ", ".join(f"{x:.3g}" for x in seeds_fq) or "-",
                      "mu_mean": b and b["mu_mean"], "mu_std": b and b["mu_std"],
                      "forget_prob_mean": b and b["forget_prob_mean"],
                      "lr": b and b["lr"], "epochs": b and b["epochs"],
                      "max_fq_any": max((a["fq_median"] for a in agg if a["method"] == m),
                                        default=None)})
    table.sort(key=lambda t: -(t["fq_median"] if t["fq_median"] is not None else -1))

    def plot(path):
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(9, 6.5))
        colors = plt.get_cmap("tab10")
        for i, m in enumerate(METHODS):
            pts = [a for a in agg if a["method"] == m]
            c = colors(i)
            ax.scatter([p["mu_mean"] for p in pts], [fq_floor(p["fq_median"]) for p in pts],
                       color=c, alpha=0.25, s=18)
            fr = frontier(pts)
            fq = [fq_floor(p["fq_median"]) for p in fr]
            ax.errorbar([p["mu_mean"] for p in fr], fq,
                        xerr=[p["mu_std"] for p in fr],
                        yerr=[[f - fq_floor(p["fq_min"]) for f, p in zip(fq, fr)],
                              [fq_floor(p["fq_max"]) - f for f, p in zip(fq, fr)]],
                        color=c, marker="o", capsize=2, lw=1.5, label=m)
        ax.axvline(thr, color="black", ls="--", lw=1,
                   label=f"{MU_FRACTION} x retain MU ({thr:.3f})")
        ax.scatter([retain_mu], [1.0], marker="*", s=150, color="black", label="retain model")
        fmu = st.fmean(r["finetuned_mu"] for r in rows)
        ffq = st.median(r["finetuned_fq"] for r in rows)
        ax.scatter([fmu], [fq_floor(ffq)], marker="s", s=60, color="gray",
                   label="fine-tuned (start)")
        ax.set_yscale("log")
        ax.set_xlabel("Model Utility (mean over seeds; bars: std)")
        ax.set_ylabel("Forget Quality (median over seeds; bars: range)")
        ax.set_title(f"Frontiers over the (lr, epochs) ladder, {len(h.seeds)} seed(s)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)

    cols = [("method", "method"), ("fq_median", "best FQ (median)"), ("fq_min", "FQ min"),
            ("fq_max", "FQ max"), ("seeds_fq", "FQ per seed"), ("mu_mean", "MU mean"),
            ("mu_std", "MU std"), ("forget_prob_mean", "forget prob."), ("lr", "lr"),
            ("epochs", "epochs"), ("max_fq_any", "best FQ at any MU")]
    agg_cols = [("method", "method"), ("lr", "lr"), ("epochs", "epochs"),
                ("fq_median", "FQ median"), ("fq_min", "FQ min"), ("fq_max", "FQ max"),
                ("mu_mean", "MU mean"), ("mu_std", "MU std"), ("forget_prob_mean", "forget prob."),
                ("n_seeds", "seeds")]
    notes = (f"Retain model MU {retain_mu:.3f} (mean over seeds); threshold {MU_FRACTION} x "
             f"that = {thr:.3f}. Grid (lr, epochs): {list(grid)}, seeds "
             f"{list(h.seeds)}. PALU: {describe_spec(PALU_BASE)} (lr, epochs from the grid; "
             "palu-nall: N = all); the other methods: their defaults (batch 4, alpha 1). A "
             "method with no grid point at that utility shows n/a.")
    return Report(title="Forget Quality vs Model Utility: every method's frontier", rows=rows,
                  tables=[(f"Best FQ at MU >= {MU_FRACTION} x retain model's", cols, table),
                          ("Every grid point (over seeds)", agg_cols, agg)],
                  plot=plot, notes=notes)
