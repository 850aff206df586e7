"""``synonym-leak``: does unlearning a marked surface form move probability to its synonym?

Data: the synthetic benchmark with synonym facts (:mod:`palu_kernels.demo.synth_extra`): a
city with two names or a job with two words; the forget answer uses form A, marked as the
span; the paraphrased answer, which the start model is also fine-tuned on, uses form B in the
same context, unmarked. So before unlearning the model splits its probability between A and B
after the same words.

Each method (PALU with K = 10 and with K = 1, NPO, TPO) unlearns the forget split from the
same start model, one run per seed, over a few learning rates (its strength). For the forget
split's synonym facts we score
``P(A | question, answer prefix)`` and ``P(B | same)`` before and after
(:func:`palu_kernels.experiments.probes.synonym_leakage`): ``P(B)`` after is what remains of
the fact in its other form; the B share ``P(B) / (P(A) + P(B))`` says whether the method
removed the fact or only the marked string. The retain split's synonym facts are the control
(they should keep their probability). The paper predicts that PALU leaks the least.
"""

from __future__ import annotations

import statistics as st
from dataclasses import replace

from .ablations import PALU_BASE
from .harness import Harness, RunSpec
from .report import Report
from .plots import pyplot
from .probes import synonym_leakage
from .probing import ProbeHarness, extras_spec, references, summarise

__all__ = ["LRS", "METHODS", "synonym_leak_experiment"]

METHODS = ("palu", "palu-k1", "npo", "tpo")
"""``palu``: the ablations' base (K = 10); ``palu-k1``: the same with K = 1, where only the
top logit is flattened, so the other form's first token may take its place."""
EPOCHS = {"full": 10, "quick": 5}
LRS = {"full": (1e-4, 2e-4, 5e-4, 1e-3), "quick": (2e-4, 5e-4, 1e-3)}
"""Learning rates each method runs at (its strength; compare methods at equal forgetting of
the marked form or equal utility, not at equal learning rate)."""
_KEYS = ("p_form_before", "p_form_after", "p_alt_before", "p_alt_after", "alt_share_before",
         "alt_share_after", "moved_to_alt", "alt_kept", "form_kept", "control_form_kept")


def _spec(h: Harness, method: str, lr: float) -> RunSpec:
    epochs = EPOCHS["quick" if h.quick else "full"]
    if method == "palu":
        base = replace(PALU_BASE, lr=lr, epochs=epochs)
    elif method == "palu-k1":
        base = replace(PALU_BASE, lr=lr, epochs=epochs, k=1)
    else:
        base = RunSpec(method=method, lr=lr, epochs=epochs)
    return extras_spec(h, base)


def _pairs(facts, scores, split):
    return [{"form": scores[f"{i}:form"], "alt_form": scores[f"{i}:alt_form"]}
            for i, f in enumerate(facts) if f["kind"] == "synonym" and f["split"] == split]


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def synonym_leak_experiment(h: Harness) -> Report:
    size = "quick" if h.quick else "full"
    ph = ProbeHarness(h.cfg)
    items = [(_spec(h, m, lr), seed, {"method_label": m, "lr": lr})
             for m in METHODS for lr in LRS[size] for seed in h.seeds]
    rows = ph.run_many(items, desc="synonym-leak")
    h.cache_hits = ph.cache_hits  # palu-experiment reports the harness it made
    for r, (facts, before, after) in zip(rows, ph.probe_rows(rows)):
        leak = synonym_leakage(_pairs(facts, before, "forget"), _pairs(facts, after, "forget"))
        ctrl = synonym_leakage(_pairs(facts, before, "retain"), _pairs(facts, after, "retain"))
        r.update({k: leak[k] for k in _KEYS if k in leak}, n_facts=leak["n_facts"],
                 form_kept=_ratio(leak["p_form_after"], leak["p_form_before"]),
                 control_form_kept=_ratio(ctrl["p_form_after"], ctrl["p_form_before"]))
    summary = summarise(rows, ["method_label", "lr"], _KEYS)
    for s in summary:
        s["method"] = s.pop("method_label")
    cols = [("method", "method"), ("lr", "lr"), ("fq_median", "FQ median"),
            ("model_utility_pm", "MU"), ("p_form_after_pm", "P(A) after"),
            ("p_alt_after_pm", "P(B) after"), ("form_kept_pm", "P(A) kept"),
            ("alt_kept_pm", "P(B) kept"), ("alt_share_after_pm", "B share after"),
            ("moved_to_alt_pm", "moved to B"), ("control_form_kept_pm", "retain facts P(A) kept")]
    pa = st.fmean(r["p_form_before"] for r in rows)
    pb = st.fmean(r["p_alt_before"] for r in rows)
    share = st.fmean(r["alt_share_before"] for r in rows)
    n_facts = st.fmean(r["n_facts"] for r in rows)
    notes = (
        f"{len(h.seeds)} seed(s), {n_facts:.0f} forget synonym facts per seed; every method at "
        f"each lr, {EPOCHS[size]} epochs, from the same fine-tuned model per seed (palu: K, N, "
        "gamma of the ablations' base; palu-k1: the same with K = 1). A = the marked form in "
        "the forget answer, B = the unmarked form the paraphrased answer teaches in the same "
        "context; P = probability of "
        "the whole form given the question and the answer up to it, mean over the forget "
        "split's synonym facts; each cell mean +- std over seeds. Before unlearning: P(A) "
        f"{pa:.3f}, P(B) {pb:.3f}, B share P(B) / (P(A) + P(B)) {share:.3f}. 'kept' = P after "
        "/ P before; 'moved to B' = mean of P(B) after - P(B) before (> 0: probability moved "
        "to the other form). A method that removes only the marked string keeps P(B) (P(B) "
        "kept >> P(A) kept, B share rising); one that removes the fact lowers both. 'retain "
        "facts P(A) kept': the same ratio on the retain authors' synonym facts (a control; "
        "near 1 is good). " + references(rows))

    def plot(path):
        plt = pyplot()
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
        for m in METHODS:
            pts = [s for s in summary if s["method"] == m]
            axes[0].errorbar([s["p_form_after"] for s in pts], [s["p_alt_after"] for s in pts],
                             xerr=[s["p_form_after_sd"] for s in pts],
                             yerr=[s["p_alt_after_sd"] for s in pts], marker="o", capsize=3,
                             label=m)
            axes[1].errorbar([s["model_utility"] for s in pts], [s["p_alt_after"] for s in pts],
                             xerr=[s["model_utility_sd"] for s in pts],
                             yerr=[s["p_alt_after_sd"] for s in pts], marker="o", capsize=3,
                             label=m)
        axes[0].plot([0, pa], [0, pa], color="gray", ls=":", label="P(B) = P(A)")
        axes[0].scatter([pa], [pb], marker="s", color="black", label="before unlearning")
        axes[0].set_xlabel("P(A) after: marked form (lower: forgotten)")
        axes[1].set_xlabel("Model Utility")
        for ax in axes:
            ax.set_ylabel("P(B) after: unmarked form (lower: less leak)")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle("Synonym leakage over learning rates (mean +- std over seeds)")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)

    return Report(title="synonym-leak: probability moved to the unmarked surface form",
                  rows=rows, tables=[("Per method and learning rate (forget split's synonym "
                                      "facts)", cols, summary)],
                  plot=plot, notes=notes, png="synonym_leak.png")
