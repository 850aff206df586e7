"""``beyond-prefix``: does prefix-only PALU forget content past the first N tokens of a span?

PALU's local term acts on the first ``N`` tokens of each sensitive span (``first_n``, default
3); later span tokens get no loss at all (``docs/spec.md``). The synthetic benchmark's extra
facts (:mod:`palu_kernels.demo.synth_extra`) put sensitive content where that matters:

- ``long``: one long span whose first words are generic ("a rare and lasting form of") and
  whose sensitive part (the disease) comes after them, past token ``N`` of the span (the
  token offset is measured with the run's tokenizer and reported);
- ``split``: one fact over three spans (street, house number, district).

Compared, from the same start model per seed and over a few learning rates: PALU with
``N = 3`` (prefix only), PALU with ``N = all`` (every span token initiating) and NPO (the
whole answer). For each part we score
``log P(part | question, answer before it)`` before and after
(:func:`palu_kernels.experiments.probes.probability_change`): the mean log-probability drop
(nats, > 0: forgotten) and the kept probability ratio.
"""

from __future__ import annotations

import statistics as st
from dataclasses import replace

from .ablations import PALU_BASE
from .harness import Harness, RunSpec
from .report import Report
from .plots import pyplot
from .probes import probability_change, span_token_offset
from .probing import ProbeHarness, extras_spec, references, summarise

__all__ = ["CONFIGS", "LRS", "PARTS", "beyond_prefix_experiment"]

EPOCHS = {"full": 10, "quick": 5}
LRS = {"full": (1e-4, 2e-4, 5e-4, 1e-3), "quick": (2e-4, 5e-4, 1e-3)}
CONFIGS = (("palu N=3", "palu", 3), ("palu N=all", "palu", None), ("npo", "npo", None))
"""``(label, method, first_n)`` of the runs compared (each at every learning rate)."""
PARTS = (("long: lead", "long", ("lead",)), ("long: late", "long", ("late",)),
         ("split: first span", "split", ("part1",)),
         ("split: later spans", "split", ("part2", "part3")))
"""``(label, fact kind, probe names)`` of the parts measured."""


def _key(part: str) -> str:
    return part.replace(": ", "_").replace(" ", "_")


def _spec(h: Harness, method: str, first_n, lr: float) -> RunSpec:
    epochs = EPOCHS["quick" if h.quick else "full"]
    base = replace(PALU_BASE, lr=lr, epochs=epochs, first_n=first_n) if method == "palu" \
        else RunSpec(method=method, lr=lr, epochs=epochs)
    return extras_spec(h, base)


def _scores(facts, scores, kind, names):
    return [scores[f"{i}:{n}"] for i, f in enumerate(facts)
            if f["kind"] == kind and f["split"] == "forget" for n in names]


def _late_offsets(ph: ProbeHarness, rows, probe_rows):
    """Per seed: the smallest token offset of a long fact's late part inside its span."""
    from ..io.models import load_tokenizer

    out = {}
    for r, (facts, _, _) in zip(rows, probe_rows):
        if r["seed"] in out:
            continue
        setup = ph._setups[ph.result(r["run"])["setup"]]
        tok = load_tokenizer(setup.finetuned_dir)
        out[r["seed"]] = min(
            span_token_offset(tok, f["probes"]["late"], f["target_words"][0]["start"],
                              f["target_words"][0]["end"])
            for f in facts if f["kind"] == "long")
    return out


def beyond_prefix_experiment(h: Harness) -> Report:
    size = "quick" if h.quick else "full"
    ph = ProbeHarness(h.cfg)
    items = [(_spec(h, method, n, lr), seed, {"config": label, "first_n": n or "all", "lr": lr})
             for label, method, n in CONFIGS for lr in LRS[size] for seed in h.seeds]
    rows = ph.run_many(items, desc="beyond-prefix")
    h.cache_hits = ph.cache_hits  # palu-experiment reports the harness it made
    probe_rows = ph.probe_rows(rows)
    for r, (facts, before, after) in zip(rows, probe_rows):
        for label, kind, names in PARTS:
            c = probability_change(_scores(facts, before, kind, names),
                                   _scores(facts, after, kind, names))
            key = _key(label)
            r[f"{key}_drop"], r[f"{key}_kept"] = c["logp_drop"], c["kept"]
            r[f"{key}_p_before"], r[f"{key}_p_after"] = c["p_before"], c["p_after"]
    offsets = _late_offsets(ph, rows, probe_rows)
    keys = [_key(p) for p, _, _ in PARTS]
    summary = summarise(rows, ["config", "lr"], [k + "_drop" for k in keys]
                        + [k + "_kept" for k in keys])
    cols = [("config", "run"), ("lr", "lr"), ("fq_median", "FQ median"),
            ("model_utility_pm", "MU")] + \
        [(k + "_drop_pm", f"{p} drop") for k, (p, _, _) in zip(keys, PARTS)] + \
        [(k + "_kept_pm", f"{p} kept") for k, (p, _, _) in zip(keys, PARTS)]
    before = {k: st.fmean(r[k + "_p_before"] for r in rows) for k in keys}
    notes = (
        f"{len(h.seeds)} seed(s); {EPOCHS[size]} epochs for every run (PALU: the ablations' "
        "base K and gamma). 'drop': mean log-probability drop of that part over the forget "
        "split's facts (nats, > 0: forgotten); 'kept': mean P(after) / mean P(before); each "
        "cell mean +- std over seeds. P before (mean over seeds): "
        + ", ".join(f"{p} {before[k]:.3f}" for k, (p, _, _) in zip(keys, PARTS))
        + ". The late part of a long span starts at span token "
        + ", ".join(f"{v} (seed {k})" for k, v in sorted(offsets.items()))
        + " at the earliest, past N = 3: prefix-only PALU puts no loss on it. "
        + references(rows))

    def plot(path):
        plt = pyplot()
        fig, axes = plt.subplots(1, len(PARTS), figsize=(4 * len(PARTS), 4), sharey=True)
        for ax, (part, _, _), k in zip(axes, PARTS, keys):
            for label, _, _ in CONFIGS:
                pts = [s for s in summary if s["config"] == label]
                ax.errorbar([s["model_utility"] for s in pts], [s[k + "_drop"] for s in pts],
                            xerr=[s["model_utility_sd"] for s in pts],
                            yerr=[s[k + "_drop_sd"] for s in pts], marker="o", capsize=3,
                            label=label)
            ax.set_title(part, fontsize=10)
            ax.set_xlabel("Model Utility")
            ax.axhline(0, color="black", lw=0.8)
            ax.grid(True, alpha=0.3)
        axes[0].set_ylabel("log-probability drop (nats; mean +- std over seeds)")
        axes[0].legend(fontsize=8)
        fig.suptitle("Forgetting of span parts over learning rates: prefix-only PALU vs "
                     "N = all vs NPO")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)

    return Report(title="beyond-prefix: forgetting past the first N span tokens", rows=rows,
                  tables=[("Per run configuration and learning rate (forget split's long and "
                           "split facts)", cols, summary)],
                  plot=plot, notes=notes, png="beyond_prefix.png")
