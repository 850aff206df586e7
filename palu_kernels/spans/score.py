"""Character-level precision, recall and F1 of predicted spans against annotated ones.

Every character of an answer is sensitive or not; the counts are summed over all matched
records (micro average): precision = |pred & gold| / |pred|, recall = |pred & gold| / |gold|.
Records are matched by ``(question, answer)`` (a raw passage: ``("", text)``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

from ..io.records import QARecord

__all__ = ["SpanScore", "coverage", "score_records"]


@dataclass(frozen=True)
class SpanScore:
    precision: float
    recall: float
    f1: float
    n_records: int  # predicted records that have a gold record
    n_unmatched: int  # predicted records without one (not scored)
    pred_chars: int
    gold_chars: int
    overlap_chars: int

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        return (f"P {self.precision:.3f}  R {self.recall:.3f}  F1 {self.f1:.3f}  "
                f"({self.n_records} records, {self.pred_chars} predicted / {self.gold_chars} "
                f"gold / {self.overlap_chars} common characters)")


def _chars(spans) -> set:
    return {c for sp in spans for c in range(sp.start, sp.end)}


def score_records(pred: Sequence[QARecord], gold: Sequence[QARecord]) -> SpanScore:
    """Score ``pred`` against ``gold`` (character level, micro-averaged). ``ValueError`` when
    no predicted record has a gold record."""
    gold_by = {}
    for g in gold:
        gold_by.setdefault((g.question, g.answer), g)
    n = unmatched = p_chars = g_chars = both = 0
    for r in pred:
        g = gold_by.get((r.question, r.answer))
        if g is None:
            unmatched += 1
            continue
        n += 1
        ps, gs = _chars(r.spans), _chars(g.spans)
        p_chars, g_chars, both = p_chars + len(ps), g_chars + len(gs), both + len(ps & gs)
    if n == 0:
        raise ValueError(f"none of the {len(pred)} records has a gold record with the same "
                         "question and answer")
    prec = both / p_chars if p_chars else 0.0
    rec = both / g_chars if g_chars else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return SpanScore(prec, rec, f1, n, unmatched, p_chars, g_chars, both)


def coverage(records: Sequence[QARecord]) -> dict:
    """How much of the records' text the spans mark: ``{"chars", "words", "n_records",
    "n_spans"}``, ``chars`` = marked characters / all characters of the answers (passages),
    ``words`` = words (:func:`palu_kernels.spans.text.words_of`) inside a span / all words."""
    from .text import words_of

    n_chars = marked = n_words = in_span = n_spans = 0
    for r in records:
        chars = _chars(r.spans)
        n_chars += len(r.answer)
        marked += len(chars)
        words = words_of(r.answer)
        n_words += len(words)
        in_span += sum(1 for w in words if w.start in chars)
        n_spans += len(r.spans)
    return {"chars": marked / n_chars if n_chars else 0.0,
            "words": in_span / n_words if n_words else 0.0,
            "n_records": len(records), "n_spans": n_spans}
