"""PALU ablations: ``k`` (the top-K set size, 1 .. V), ``n`` (the initiating prefix length N)
and ``target`` (what the top-K logits are pulled to), each over seeds from the same
fine-tuned models; every other option is :data:`PALU_BASE`.

``k`` also records, for every run, the PALU terms over training steps (local term over I, KL
over C, retain NLL: the trainer's per-step log) and the mean forget answer probability every
:data:`TRACE_EVERY` steps, and plots them for the first seed (the dynamics panel).
"""

from __future__ import annotations

from dataclasses import replace

from .harness import Harness, RunSpec
from .report import Report, aggregate
from .plots import fq_floor, pyplot

__all__ = ["PALU_BASE", "k_experiment", "n_experiment", "target_experiment"]

PALU_BASE = RunSpec(method="palu", lr=1e-3, epochs=10, k=10, first_n=3, gamma=2.0)
"""The PALU run every ablation varies one option of (the demo's defaults)."""
TRACE_EVERY = 10

AGG_COLUMNS = [("fq_median", "FQ median"), ("fq_min", "FQ min"), ("fq_max", "FQ max"),
               ("mu_mean", "MU mean"), ("mu_std", "MU std"),
               ("forget_prob_mean", "forget prob."), ("n_seeds", "seeds")]


def quick_spec(h: Harness, spec: RunSpec) -> RunSpec:
    return replace(spec, epochs=3) if h.quick else spec


def references_note(rows) -> str:
    import statistics as st

    mu = st.fmean(r["retain_mu"] for r in rows)
    fp = st.fmean(r["retain_forget_probability"] for r in rows)
    fmu = st.fmean(r["finetuned_mu"] for r in rows)
    ffp = st.fmean(r["finetuned_forget_probability"] for r in rows)
    return (f"References (mean over seeds): retain model MU {mu:.3f}, forget probability "
            f"{fp:.3f}; fine-tuned model MU {fmu:.3f}, forget probability {ffp:.3f}. "
            "FQ: KS-test p-value against the retain model's forget truth ratios (median and "
            "range over seeds); MU: TOFU Model Utility (mean and std over seeds).")


def curve_plot(agg, key, xlabel, path, rows, log_x=False, labels=None):
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    xs = list(range(len(agg))) if labels else [a[key] for a in agg]
    fq = [fq_floor(a["fq_median"]) for a in agg]
    lo = [fq_floor(a["fq_min"]) for a in agg]
    hi = [fq_floor(a["fq_max"]) for a in agg]
    err = [[f - lo_ for f, lo_ in zip(fq, lo)], [hi_ - f for f, hi_ in zip(fq, hi)]]
    axes[0].errorbar(xs, fq, yerr=err, marker="o", capsize=3)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("Forget Quality (median, seed range)")
    axes[1].errorbar(xs, [a["mu_mean"] for a in agg], yerr=[a["mu_std"] for a in agg],
                     marker="o", capsize=3, label="unlearned")
    import statistics as st

    axes[1].axhline(st.fmean(r["retain_mu"] for r in rows), color="gray", ls="dashed",
                    label="retain model")
    axes[1].set_ylabel("Model Utility (mean +- std)")
    axes[1].legend(fontsize=8)
    for ax in axes:
        ax.set_xlabel(xlabel)
        if log_x:
            ax.set_xscale("log")
        if labels:
            ax.set_xticks(xs)
            ax.set_xticklabels(labels)
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def k_experiment(h: Harness) -> Report:
    """PALU over K in 1 .. V (K = V: the whole vocabulary), N and the rest fixed."""
    vocab = h.setup(h.seeds[0]).vocab_size
    ks = [1, vocab] if h.quick else [1, 3, 10, 30, 100, 300, vocab]
    items = [(replace(quick_spec(h, PALU_BASE), k=None if k == vocab else k,
                      trace_every=TRACE_EVERY), seed, {"k": k})
             for k in ks for seed in h.seeds]
    rows = h.run_many(items, desc="k")
    for r in rows:
        r["k_fraction"] = r["k"] / vocab
    agg = aggregate(rows, ["k", "k_fraction"])
    seed0 = [r for r in rows if r["seed"] == h.seeds[0]]

    def plot(path):
        plt = pyplot()
        fig, axes = plt.subplots(2, 2, figsize=(11, 8))
        xs = [a["k"] for a in agg]
        fq = [fq_floor(a["fq_median"]) for a in agg]
        err = [[f - fq_floor(a["fq_min"]) for f, a in zip(fq, agg)],
               [fq_floor(a["fq_max"]) - f for f, a in zip(fq, agg)]]
        axes[0, 0].errorbar(xs, fq, yerr=err, marker="o", capsize=3)
        axes[0, 0].set_yscale("log")
        axes[0, 0].set_ylabel("Forget Quality (median, seed range)")
        axes[0, 1].errorbar(xs, [a["mu_mean"] for a in agg], yerr=[a["mu_std"] for a in agg],
                            marker="o", capsize=3)
        axes[0, 1].axhline(rows[0]["retain_mu"], color="gray", ls="dashed", label="retain (seed 0)")
        axes[0, 1].set_ylabel("Model Utility (mean +- std)")
        axes[0, 1].legend(fontsize=8)
        for ax in axes[0]:
            ax.set_xscale("log")
            ax.set_xlabel(f"K (of V = {vocab}; top axis: K / V)")
            ax.grid(True, which="both", alpha=0.3)
            sec = ax.secondary_xaxis("top", functions=(lambda k: k / vocab, lambda f: f * vocab))
            sec.set_xlabel("K / V")
        cmap = plt.get_cmap("viridis")
        for i, r in enumerate(seed0):
            res = h.result(r["run"])
            c = cmap(i / max(1, len(seed0) - 1))
            curve = [c_ for c_ in res["loss_curve"] if "forget_local" in c_]
            steps = [c_["step"] for c_ in curve]
            axes[1, 0].plot(steps, [c_["forget_local"] for c_ in curve], color=c,
                            label=f"local K={r['k']}")
            axes[1, 0].plot(steps, [c_.get("forget_kl", float("nan")) for c_ in curve], ls=":",
                            color=c, label=f"KL K={r['k']}")
            tr = res["trace"]
            axes[1, 1].plot([t["step"] for t in tr], [t["forget_probability"] for t in tr],
                            marker=".", color=c, label=f"K={r['k']}")
        axes[1, 1].axhline(seed0[0]["retain_forget_probability"], color="gray", ls="dashed",
                           label="retain model")
        axes[1, 0].set_yscale("symlog", linthresh=1e-2)
        axes[1, 0].set_title(f"PALU local term (solid) and KL (dotted) per step, seed "
                             f"{h.seeds[0]}")
        axes[1, 1].set_title(f"forget answer probability per step (seed {h.seeds[0]})")
        for ax in axes[1]:
            ax.set_xlabel("optimizer step")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)

    dyn = []
    for r in seed0:
        tr = h.result(r["run"])["trace"]
        if tr:
            peak = min(tr, key=lambda t: t["forget_probability"])
            dyn.append({"k": r["k"], "min_p": peak["forget_probability"], "min_step": peak["step"],
                        "final_p": tr[-1]["forget_probability"]})
    return Report(
        title=f"PALU: K from 1 to V = {vocab}", rows=rows,
        tables=[("Over seeds", [("k", "K"), ("k_fraction", "K / V")] + AGG_COLUMNS, agg),
                (f"Forget probability during training (seed {h.seeds[0]})",
                 [("k", "K"), ("min_p", "lowest"), ("min_step", "at step"),
                  ("final_p", "final")], dyn)],
        plot=plot,
        notes=references_note(rows) + f"\n\nRun: {describe_spec(items[0][0])}; K = V is the "
              "whole vocabulary (K = all).")


def describe_spec(spec: RunSpec) -> str:
    return (f"lr {spec.lr}, {spec.epochs} epochs, batch {spec.batch_size}, gamma {spec.gamma}, "
            f"alpha {spec.alpha}, N {spec.first_n or 'all'}, K {spec.k or 'all'}, "
            f"target {spec.target}, KL {spec.kl}")


def _knob(h: Harness, field: str, values, key: str, header: str, axis: str, title: str,
          note: str) -> Report:
    """PALU (the ablations' base run) with ``field`` set to each of ``values`` over the
    seeds: the rows, their seed aggregate by ``key`` and a curve plot."""
    items = [(replace(quick_spec(h, PALU_BASE), **{field: v}), seed, {key: label})
             for v, label in values for seed in h.seeds]
    rows = h.run_many(items, desc=key)
    agg = aggregate(rows, [key])

    def plot(path):
        curve_plot(agg, key, axis, path, rows, labels=[str(a[key]) for a in agg])

    return Report(title=title, rows=rows,
                  tables=[("Over seeds", [(key, header)] + AGG_COLUMNS, agg)],
                  plot=plot,
                  notes=references_note(rows) + f"\n\nRun: {describe_spec(items[0][0])} ({note}).")


def n_experiment(h: Harness) -> Report:
    """PALU over the initiating prefix length N in {1, 2, 3, 5, all}."""
    ns = [1, None] if h.quick else [1, 2, 3, 5, None]
    return _knob(h, "first_n", [(n, n or "all") for n in ns], "n", "N",
                 "N (initiating prefix tokens)", "PALU: the initiating prefix length N",
                 "N varies")


TARGETS = ("mean", "mean_detached", "topk_mean", 0.0)


def target_experiment(h: Harness) -> Report:
    """PALU with the local target ``mean``, ``mean_detached``, ``topk_mean`` and a uniform
    constant (0.0: every top-K logit pulled to 0)."""
    targets = ["mean", 0.0] if h.quick else list(TARGETS)
    return _knob(h, "target", [(t, str(t)) for t in targets], "target", "target", "local target",
                 "PALU: the local target", "target varies; 0.0 is the uniform constant")
