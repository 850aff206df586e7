"""``pareto``: every method with the same tuning budget, over seeds, from the same fine-tuned
models; one Forget Quality / Model Utility plot with each method's frontier (seed error bars)
and the table of the best Forget Quality each method reaches while keeping Model Utility >=
0.95 x the retain model's.

Every method runs at one (lr, epochs) point (:data:`GRID`) over a ladder of :data:`LADDER_SIZE`
settings of its own knobs (:data:`LADDERS`), so no method gets more tries than another. PALU's
ladder is the released code's parametrisation: gamma 1, alpha in {0.2, 0.5, 1, 2, 5}, N in
{3, 5, all} (K 10 of the tiny models' 640-token vocabulary). The design is staged: every
setting on the first seed (selection), then each method's best :data:`KEEP` settings on the
other seeds (confirmation); the table reports the confirmed settings over all seeds.
"""

from __future__ import annotations

import statistics as st
from dataclasses import replace

from .ablations import PALU_BASE
from .harness import Harness, RunSpec
from .report import Report, aggregate
from .plots import fq_floor, frontier, pyplot

__all__ = ["GRID", "KEEP", "LADDERS", "LADDER_SIZE", "METHODS", "best_at_utility",
           "pareto_experiment"]


def _grid(**knobs):
    """Every combination of the knobs' values, as (label, RunSpec overrides)."""
    out = [("", {})]
    for name, values in knobs.items():
        out = [((f"{lab}, " if lab else "") + f"{name} {'all' if v is None else v}",
                {**o, name: v}) for lab, o in out for v in values]
    return out


LADDERS = {
    "palu": [(lab.replace("first_n", "N"), o) for lab, o in
             _grid(alpha=(0.2, 0.5, 1.0, 2.0, 5.0), first_n=(3, 5, None))],
    "tpo": _grid(beta=(0.05, 0.1, 0.2, 0.3, 0.5), alpha=(0.5, 1.0, 2.0)),
    "npo": _grid(beta=(0.05, 0.1, 0.2, 0.5, 1.0), alpha=(0.5, 1.0, 2.0)),
    "simnpo": _grid(beta=(1.0, 2.5, 4.5, 7.0, 10.0), delta=(0.0, 1.0, 2.0)),
    "graddiff": _grid(gamma=(0.25, 0.5, 1.0, 2.0, 4.0), alpha=(0.5, 1.0, 2.0)),
    "idkdpo": _grid(beta=(0.05, 0.1, 0.2, 0.5, 1.0), alpha=(0.5, 1.0, 2.0)),
    "ga": _grid(lr=(2e-4, 5e-4, 1e-3, 2e-3, 5e-3), epochs=(5, 10, 20)),
}
"""Each method's ladder: (label, RunSpec overrides). PALU: the released grid (gamma 1); the
baselines: their main knob x their retain weight (SimNPO: beta x delta); GA has no knob (its
gamma only scales the loss, which Adam ignores), so its ladder is of strength, lr x epochs."""
LADDER_SIZE = 15
METHODS = tuple(LADDERS)
GRID = {"full": (1e-3, 10), "quick": (1e-3, 2)}
"""The (learning rate, epochs) point of every method (GA: its ladder's)."""
KEEP = 2
"""Settings per method carried from the selection seed to the other seeds."""
MU_FRACTION = 0.95


def _spec(method: str, overrides: dict, size: str) -> RunSpec:
    lr, epochs = GRID[size]
    if method == "palu":
        base = replace(PALU_BASE, lr=lr, epochs=epochs, gamma=1.0)
    else:
        base = RunSpec(method=method, lr=lr, epochs=epochs, k=PALU_BASE.k)
    if size == "quick":
        overrides = {k: v for k, v in overrides.items() if k not in ("lr", "epochs")}
    return replace(base, **overrides)


def best_at_utility(agg, threshold: float, key: str = "mu_mean") -> dict:
    """Per method: the grid point with the highest median FQ among those whose ``key`` (mean
    MU, or mean MU relative to the retain model: ``mu_rel_mean``) is >= ``threshold``."""
    out = {}
    for a in agg:
        if a[key] < threshold or a["fq_median"] is None:
            continue
        b = out.get(a["method"])
        if b is None or (a["fq_median"], a[key]) > (b["fq_median"], b[key]):
            out[a["method"]] = a
    return out


def relative_utility(rows, agg, by) -> None:
    """Adds ``mu_rel`` (Model Utility / the same seed's retain model's) to each row and its
    mean over seeds, ``mu_rel_mean``, to each aggregate of ``by``."""
    for r in rows:
        r["mu_rel"] = r["model_utility"] / r["retain_mu"] if r.get("retain_mu") else 0.0
    for a in agg:
        rs = [r for r in rows if all(r.get(k) == a.get(k) for k in by)]
        a["mu_rel_mean"] = st.fmean(r["mu_rel"] for r in rs) if rs else 0.0


def _rank_key(row: dict, threshold: float):
    ok = row["mu_rel"] >= threshold
    fq = row["forget_quality"] if row["forget_quality"] is not None else -1.0
    return (ok, fq if ok else row["mu_rel"], row["mu_rel"])


def select(rows, threshold: float = MU_FRACTION, keep: int = KEEP) -> dict:
    """Per method, the labels (``setting``) of its ``keep`` best rows: those with Model
    Utility >= ``threshold`` x the same seed's retain model's first (by Forget Quality, then
    utility), then the rest by utility."""
    for r in rows:
        r.setdefault("mu_rel", r["model_utility"] / r["retain_mu"] if r.get("retain_mu")
                     else 0.0)
    out = {}
    for m in dict.fromkeys(r["method"] for r in rows):
        rs = sorted((r for r in rows if r["method"] == m),
                    key=lambda r: _rank_key(r, threshold), reverse=True)
        out[m] = [r["setting"] for r in rs[:keep]]
    return out


def pareto_experiment(h: Harness) -> Report:
    size = "quick" if h.quick else "full"
    ladders = LADDERS if size == "full" else {m: v[:1] for m, v in LADDERS.items()}
    first, rest = h.seeds[0], list(h.seeds[1:])

    def items(pairs, seed, stage):
        return [(_spec(m, o, size), seed, {"method_label": m, "setting": lab, "stage": stage})
                for m, lab, o in pairs]

    every = [(m, lab, o) for m, ladder in ladders.items() for lab, o in ladder]
    rows = h.run_many(items(every, first, "selection"), desc=f"pareto selection (seed {first})")
    for r in rows:
        r["method"] = r["method_label"]
    chosen = select(rows, MU_FRACTION)
    pairs = [(m, lab, o) for m, lab, o in every if lab in chosen[m]]
    for seed in rest:
        more = h.run_many(items(pairs, seed, "confirmation"), desc=f"pareto seed {seed}")
        for r in more:
            r["method"] = r["method_label"]
        rows += more
    for r in rows:
        spec = _spec(r["method"], dict(ladders[r["method"]])[r["setting"]], size)
        r.update(lr=spec.lr, epochs=spec.epochs)
    agg = aggregate(rows, ["method_label", "setting"])
    for a in agg:
        a["method"] = a.pop("method_label")
    relative_utility(rows, agg, ["method", "setting"])
    confirmed = [a for a in agg if a["n_seeds"] == len(h.seeds)]
    retain_mu = st.fmean(r["retain_mu"] for r in rows)
    thr = MU_FRACTION * retain_mu
    best = best_at_utility(confirmed, MU_FRACTION, key="mu_rel_mean")
    table = []
    for m in METHODS:
        b = best.get(m)
        seeds_fq = ([r["forget_quality"] for r in rows if r["method"] == m and
                     r["setting"] == b["setting"]] if b else [])
        table.append({"method": m, "setting": b and b["setting"],
                      "fq_median": b and b["fq_median"],
                      "fq_min": b and b["fq_min"], "fq_max": b and b["fq_max"],
                      "seeds_fq": ", ".join(f"{x:.3g}" for x in seeds_fq) or "-",
                      "mu_mean": b and b["mu_mean"], "mu_std": b and b["mu_std"],
                      "mu_rel_mean": b and b["mu_rel_mean"],
                      "forget_prob_mean": b and b["forget_prob_mean"],
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
        ax.axvline(thr, color="black", ls="dashed", lw=1,
                   label=f"{MU_FRACTION} x retain MU ({thr:.3f})")
        ax.scatter([retain_mu], [1.0], marker="*", s=150, color="black", label="retain model")
        fmu = st.fmean(r["finetuned_mu"] for r in rows)
        ffq = st.median(r["finetuned_fq"] for r in rows)
        ax.scatter([fmu], [fq_floor(ffq)], marker="s", s=60, color="gray",
                   label="fine-tuned (start)")
        ax.set_yscale("log")
        ax.set_xlabel("Model Utility (mean over seeds; bars: std)")
        ax.set_ylabel("Forget Quality (median over seeds; bars: range)")
        ax.set_title(f"Frontiers over each method's ladder ({len(h.seeds)} seed(s); faint: "
                     "every setting)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)

    cols = [("method", "method"), ("setting", "setting"), ("fq_median", "best FQ (median)"),
            ("fq_min", "FQ min"), ("fq_max", "FQ max"), ("seeds_fq", "FQ per seed"),
            ("mu_mean", "MU mean"), ("mu_std", "MU std"), ("mu_rel_mean", "MU / retain"),
            ("forget_prob_mean", "forget prob."), ("max_fq_any", "best FQ at any MU")]
    agg_cols = [("method", "method"), ("setting", "setting"), ("fq_median", "FQ median"),
                ("fq_min", "FQ min"), ("fq_max", "FQ max"), ("mu_mean", "MU mean"),
                ("mu_std", "MU std"), ("mu_rel_mean", "MU / retain"),
                ("forget_prob_mean", "forget prob."), ("n_seeds", "seeds")]
    lr, epochs = GRID[size]
    notes = (f"Retain model MU {retain_mu:.3f} (mean over seeds). A setting qualifies when its "
             f"Model Utility over the same seed's retain model's, averaged over seeds, is >= "
             f"{MU_FRACTION} (selection: on seed {first} alone). Every method at lr {lr}, {epochs} epochs, batch 4 (GA: its "
             f"ladder is lr x epochs), over a ladder of {len(next(iter(ladders.values())))} "
             f"settings of its own knobs; every setting on seed {first} (selection), each "
             f"method's best {KEEP} on seeds {rest or '-'} (confirmation). The table ranks "
             "settings run on every seed, so the selection seed is in each median (the same "
             "optimism for every method). PALU: gamma 1, K 10, alpha x N (the released "
             "grid). A method with no confirmed setting at that utility shows n/a.")
    return Report(title="Forget Quality vs Model Utility: every method with the same tuning "
                        "budget", rows=rows,
                  tables=[(f"Best FQ at MU >= {MU_FRACTION} x retain model's (confirmed "
                           "settings, all seeds)", cols, table),
                          ("Every setting (over the seeds it ran on)", agg_cols, agg)],
                  plot=plot, notes=notes)
