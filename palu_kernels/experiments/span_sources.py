"""``spans``: PALU on the same data and models with four sources of sensitive spans:

* ``annotated``: the data's own ``target_words`` (the released / generated annotations);
* ``text``: :mod:`palu_kernels.spans.text` (no model);
* ``contrast``: :mod:`palu_kernels.spans.contrast`, the fine-tuned model against the retain
  model of the same seed (default threshold);
* ``random``: as many spans per record as annotated, each as many words long, at random
  word positions (seeded), a control for "any span will do".

Every other option is :data:`palu_kernels.experiments.ablations.PALU_BASE`. The table also
gives each source's character-level precision / recall / F1 against the annotated spans.
"""

from __future__ import annotations

import os
import random
from dataclasses import replace

from ..spans import SpanOptions, find_spans, read_span_inputs, score_records, write_span_records
from ..spans.text import words_of
from ..io.records import Span
from .ablations import AGG_COLUMNS, PALU_BASE, describe_spec, quick_spec, references_note
from .harness import Harness
from .report import Report, aggregate

__all__ = ["SOURCES", "random_spans", "spans_experiment"]

SOURCES = ("annotated", "text", "contrast", "random")


def random_spans(records, seed: int):
    """``records`` with random spans: per record as many as it has, each with the same number
    of words, at random non-overlapping word positions."""
    rng = random.Random(seed)
    out = []
    for r in records:
        words = words_of(r.answer)
        lengths = [max(1, len(words_of(sp.word))) for sp in r.spans]
        taken = [False] * len(words)
        spans = []
        for n in lengths:
            starts = [i for i in range(len(words) - n + 1) if not any(taken[i:i + n])]
            if not starts:
                continue
            i = rng.choice(starts)
            for k in range(i, i + n):
                taken[k] = True
            s, e = words[i].start, words[i + n - 1].end
            spans.append(Span(s, e, r.answer[s:e]))
        out.append(replace(r, spans=tuple(sorted(spans, key=lambda sp: sp.start))))
    return out


def span_files(h: Harness, seed: int) -> dict:
    """``{source: path}`` of the forget files of ``seed``'s setup (written once, under
    ``<cache>/spans/<setup key>/``) and ``{source: SpanScore}`` against the annotation."""
    s = h.setup(seed)
    d = os.path.join(h.out, "spans", s.key)
    gold, _ = read_span_inputs(s.forget_spans, skip_bad=True)
    paths = {"annotated": s.forget_spans}
    preds = {"annotated": gold}
    for src in SOURCES[1:]:
        path = os.path.join(d, f"{src}.jsonl")
        if src == "text":
            pred = find_spans(gold, SpanOptions(method="text"))
        elif src == "contrast":
            pred = find_spans(gold, SpanOptions(method="contrast", model=s.finetuned_dir,
                                                reference=s.retain_dir))
        else:
            pred = random_spans(gold, seed)
        if not os.path.isfile(path):
            write_span_records(path, pred)
        paths[src], preds[src] = path, pred
    return paths, {src: score_records(p, gold) for src, p in preds.items()}


def spans_experiment(h: Harness) -> Report:
    """PALU with annotated, ``text``, ``contrast`` and random spans, over seeds."""
    base = quick_spec(h, PALU_BASE)
    items, scores = [], {}
    for seed in h.seeds:
        paths, sc = span_files(h, seed)
        for src in SOURCES:
            spec = base if src == "annotated" else replace(base, forget_file=paths[src])
            items.append((spec, seed, {"spans": src}))
            scores.setdefault(src, []).append(sc[src])
    rows = h.run_many(items, desc="spans")
    agg = aggregate(rows, ["spans"])
    for a in agg:
        sc = scores[a["spans"]]
        a["n_spans"] = sum(x.pred_chars for x in sc) // max(1, len(sc))
        for key in ("precision", "recall", "f1"):
            a[key] = sum(getattr(x, key) for x in sc) / len(sc)

    def plot(path):
        from .ablations import curve_plot

        curve_plot(agg, "spans", "span source", path, rows, labels=[a["spans"] for a in agg])

    return Report(
        title="PALU: where the sensitive spans come from", rows=rows,
        tables=[("Over seeds", [("spans", "spans"), ("precision", "P"), ("recall", "R"),
                                ("f1", "F1"), ("n_spans", "span chars")] + AGG_COLUMNS, agg)],
        plot=plot,
        notes=references_note(rows) + f"\n\nRun: {describe_spec(base)} (only the forget file's "
              "spans vary). P / R / F1: character level against the annotated spans (mean "
              "over seeds); span chars: sensitive characters per forget set.")
