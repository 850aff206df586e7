"""``mask-noise``: PALU's Forget Quality and Model Utility when its spans are wrong.

The paper never measures how PALU depends on its span detector. Here the forget split's
spans are degraded in a controlled way (:mod:`palu_kernels.experiments.noise`, deterministic
per seed) before PALU trains on them; evaluation always uses the true data:

- ``recall``: a fraction of the spans dropped (recall ``1 - level``);
- ``precision``: one-word false spans added over unmarked answer words until ``level`` of
  all spans are false (precision about ``1 - level``);
- ``shift``: every span slid by ``level`` words (it misses that many words of the fact).

Level 0 (the true spans) is one run per seed and learning rate, shared by the three curves.
Every run is PALU, at a few learning rates, with the ablations' base options
(:data:`palu_kernels.experiments.ablations.PALU_BASE`), on the synthetic data with extra facts
(so it shares its setups with ``synonym-leak`` and ``beyond-prefix``).
"""

from __future__ import annotations

import json
import os
import statistics as st
from dataclasses import replace

from ..jsonio import read_json_objects
from .ablations import PALU_BASE
from ..outputs import atomic_write_text
from .harness import Harness
from .report import Report, aggregate
from .noise import NOISE_KINDS, degrade, span_count
from .plots import fq_floor, pyplot
from .probing import extras_spec

__all__ = ["LEVELS", "mask_noise_experiment"]

LEVELS = {"full": {"recall": (0.25, 0.5, 0.75, 0.9), "precision": (0.25, 0.5, 0.75),
                   "shift": (1, 2)},
          "quick": {"recall": (0.25, 0.5, 0.75), "precision": (0.25, 0.5), "shift": (1, 2)}}
EPOCHS = {"full": 10, "quick": 5}
LRS = {"full": (2e-4, 5e-4, 1e-3), "quick": (2e-4, 5e-4)}
"""PALU's learning rates (its strength: the noise may matter at one and not at another)."""


def _noisy_file(h: Harness, setup, kind: str, level, seed: int):
    """The forget spans degraded by ``kind`` at ``level`` (seed ``seed``), written once under
    ``<out>/noise/``; returns ``(path, {"recall", "precision", "char_recall",
    "char_precision"})``: the achieved span recall and precision (exact spans) and the same
    over span characters."""
    records = read_json_objects(setup.forget_spans)
    noisy = degrade(records, kind, level, seed=seed)
    true = {(i, w["start"], w["end"]) for i, r in enumerate(records) for w in r["target_words"]}
    got = {(i, w["start"], w["end"]) for i, r in enumerate(noisy) for w in r["target_words"]}
    recall = len(true & got) / len(true) if true else 1.0
    precision = len(true & got) / len(got) if got else float("nan")
    true_c = _chars(records)
    got_c = _chars(noisy)
    char_recall = len(true_c & got_c) / len(true_c) if true_c else 1.0
    char_precision = len(true_c & got_c) / len(got_c) if got_c else float("nan")
    path = os.path.join(h.out, "noise", f"{setup.key}-{kind}-{level}-{seed}.jsonl")
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in noisy))
    assert span_count(noisy) == len(got)
    return path, {"recall": recall, "precision": precision, "char_recall": char_recall,
                  "char_precision": char_precision}


def _chars(records) -> set:
    """``(record, character)`` pairs inside a span."""
    return {(i, c) for i, r in enumerate(records) for w in r["target_words"]
            for c in range(w["start"], w["end"])}


def mask_noise_experiment(h: Harness) -> Report:
    size = "quick" if h.quick else "full"
    items = []
    for lr in LRS[size]:
        base = extras_spec(h, replace(PALU_BASE, lr=lr, epochs=EPOCHS[size]))
        for seed in h.seeds:
            setup = h.setup(seed, dict(base.synth))
            items.append((base, seed, {"lr": lr, "noise": "none", "level": 0, "recall": 1.0,
                                       "precision": 1.0, "char_recall": 1.0,
                                       "char_precision": 1.0}))
            for kind in NOISE_KINDS:
                for level in LEVELS[size][kind]:
                    path, achieved = _noisy_file(h, setup, kind, level, seed)
                    items.append((replace(base, forget_file=path), seed,
                                  {"lr": lr, "noise": kind, "level": level, **achieved}))
    rows = h.run_many(items, desc="mask-noise")
    agg = aggregate(rows, ["lr", "noise", "level"])
    for a in agg:
        rs = [r for r in rows
              if (r["lr"], r["noise"], r["level"]) == (a["lr"], a["noise"], a["level"])]
        for k in ("recall", "precision", "char_recall", "char_precision"):
            a[k] = st.fmean(r[k] for r in rs)
        a["forget_prob_sd"] = st.pstdev(r["forget_probability"] for r in rs)
    cols = [("lr", "lr"), ("noise", "noise"), ("level", "level"), ("recall", "span recall"),
            ("precision", "span precision"), ("char_recall", "char recall"),
            ("char_precision", "char precision"), ("fq_median", "FQ median"), ("fq_min", "FQ min"),
            ("fq_max", "FQ max"), ("mu_mean", "MU mean"), ("mu_std", "MU std"),
            ("forget_prob_mean", "forget prob."), ("forget_prob_sd", "forget prob. std"),
            ("n_seeds", "seeds")]
    retain_mu = st.fmean(r["retain_mu"] for r in rows)
    retain_fp = st.fmean(r["retain_forget_probability"] for r in rows)
    ft_fp = st.fmean(r["finetuned_forget_probability"] for r in rows)
    notes = (
        f"{len(h.seeds)} seed(s); PALU K={PALU_BASE.k}, N={PALU_BASE.first_n}, gamma="
        f"{PALU_BASE.gamma}, {EPOCHS[size]} epochs, at each lr. Level: recall = fraction of "
        "spans dropped; precision = share of false spans; shift = words each span slides. "
        "Span recall / precision: measured on the degraded files against the true spans (a "
        "shifted span that no longer matches exactly counts as missed and false); char recall "
        "/ precision: the same over span characters (a shifted span still covers part of "
        "the fact). References "
        f"(mean over seeds): retain model MU {retain_mu:.3f}, forget probability "
        f"{retain_fp:.3f}; fine-tuned model forget probability {ft_fp:.3f}. FQ median over "
        "seeds with its range; MU and forget probability (length-normalised answer "
        "probability on the forget split) mean and std over seeds.")

    def plot(path):
        plt = pyplot()
        fig, axes = plt.subplots(3, 3, figsize=(13, 10), sharey="row")
        for j, kind in enumerate(NOISE_KINDS):
            for lr in LRS[size]:
                pts = [a for a in agg if a["lr"] == lr and a["noise"] in ("none", kind)]
                xs = [a["level"] for a in pts]
                fq = [fq_floor(a["fq_median"]) for a in pts]
                axes[0, j].errorbar(xs, fq, yerr=[[f - fq_floor(a["fq_min"]) for f, a in
                                                   zip(fq, pts)],
                                                  [fq_floor(a["fq_max"]) - f for f, a in
                                                   zip(fq, pts)]],
                                    marker="o", capsize=3, label=f"lr {lr:g}")
                axes[1, j].errorbar(xs, [a["mu_mean"] for a in pts],
                                    yerr=[a["mu_std"] for a in pts], marker="o", capsize=3,
                                    label=f"lr {lr:g}")
                axes[2, j].errorbar(xs, [a["forget_prob_mean"] for a in pts],
                                    yerr=[a["forget_prob_sd"] for a in pts], marker="o",
                                    capsize=3, label=f"lr {lr:g}")
            axes[0, j].set_yscale("log")
            axes[1, j].axhline(retain_mu, color="gray", ls="dashed", label="retain model")
            axes[2, j].axhline(retain_fp, color="gray", ls="dashed", label="retain model")
            axes[0, j].set_title({"recall": "recall noise: fraction of spans dropped",
                                  "precision": "precision noise: share of false spans",
                                  "shift": "boundary noise: words shifted"}[kind], fontsize=9)
            axes[2, j].set_xlabel("noise level")
            for ax in axes[:, j]:
                ax.grid(True, which="both", alpha=0.3)
        axes[0, 0].set_ylabel("Forget Quality (median, seed range)")
        axes[1, 0].set_ylabel("Model Utility (mean +- std)")
        axes[2, 0].set_ylabel("forget probability (mean +- std)")
        axes[1, 0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)

    return Report(title="mask-noise: PALU with degraded spans", rows=rows,
                  tables=[("PALU against span noise", cols, agg)], plot=plot, notes=notes,
                  png="mask_noise.png")
