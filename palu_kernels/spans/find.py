"""One entry point for every span method (:func:`find_spans`) and the span file format.

The format ``palu-spans`` writes and ``palu-unlearn --forget`` reads, one JSON object per line:

* question/answer records: ``{"question", "answer", "target_words": [{"word", "start",
  "end"}]}`` with character offsets into ``answer``;
* raw passages: ``{"text", "target_words"}`` with offsets into ``text``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional, Sequence

from ..outputs import atomic_write_text
from ..train.data import QARecord, load_forget
from .contrast import DEFAULT_THRESHOLD, ContrastOptions, contrast_spans
from .text import text_spans

__all__ = ["METHODS", "SpanOptions", "find_spans", "read_span_inputs", "record_to_dict",
           "write_span_records"]

METHODS = ("text", "contrast")


@dataclass(frozen=True)
class SpanOptions:
    """``method``: ``"text"`` or ``"contrast"``. ``text``: ``use_spacy`` (``None`` = when
    installed), ``max_df``. ``contrast``: ``model`` and ``reference`` (directories, unless
    loaded models are passed to :func:`find_spans`), ``threshold`` (nats, or a z-score with
    ``relative``), ``batch_size``, ``max_length``."""

    method: str = "text"
    use_spacy: Optional[bool] = None
    max_df: float = 0.2
    model: Optional[str] = None
    reference: Optional[str] = None
    threshold: float = DEFAULT_THRESHOLD
    relative: bool = False
    batch_size: int = 8
    max_length: int = 512


def find_spans(records: Sequence[QARecord], options: SpanOptions = SpanOptions(), *,
               model=None, reference=None, tokenizer=None) -> list[QARecord]:
    """``records`` with their spans replaced by ``options.method``'s. For ``contrast``,
    ``model`` / ``reference`` / ``tokenizer`` may be given loaded (else the directories of
    ``options`` are loaded through :mod:`palu_kernels.train.models`)."""
    if options.method == "text":
        return text_spans(records, use_spacy=options.use_spacy, max_df=options.max_df)
    if options.method == "contrast":
        m = model if model is not None else options.model
        ref = reference if reference is not None else options.reference
        if m is None or ref is None:
            raise ValueError("the contrast method needs a model and a reference model")
        return contrast_spans(records, m, ref, tokenizer=tokenizer,
                              options=ContrastOptions(threshold=options.threshold,
                                                      relative=options.relative,
                                                      batch_size=options.batch_size,
                                                      max_length=options.max_length))
    raise ValueError(f"method must be one of {METHODS}, got {options.method!r}")


def read_span_inputs(path: str, *, skip_bad: bool = False):
    """Records to find spans in: question/answer records or raw passages
    (:func:`palu_kernels.train.data.load_forget`; given spans are kept, overlaps merged).
    Returns ``(records, report)``."""
    return load_forget(path, spans="optional", skip_bad=skip_bad, merge_overlaps=True)


def record_to_dict(r: QARecord) -> dict:
    words = [{"word": s.word, "start": s.start, "end": s.end} for s in r.spans]
    if r.raw:
        return {"text": r.answer, "target_words": words}
    return {"question": r.question, "answer": r.answer, "target_words": words}


def write_span_records(path: str, records: Sequence[QARecord]) -> None:
    """Write ``records`` as JSON lines (:func:`record_to_dict`), atomically."""
    atomic_write_text(path, "".join(json.dumps(record_to_dict(r), ensure_ascii=False) + "\n"
                                    for r in records))
