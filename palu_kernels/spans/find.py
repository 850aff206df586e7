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
from ..io.records import QARecord, load_forget
from .contrast import DEFAULT_THRESHOLD, PASSAGE_MAX_COVERAGE, ContrastOptions, contrast_spans
from .lm import DEFAULT_PREDICTABILITY, PredictabilityOptions, predictability_spans
from .text import text_spans

__all__ = ["METHODS", "SpanOptions", "find_spans", "read_span_inputs", "record_to_dict",
           "write_span_records"]

METHODS = ("text", "predictability", "contrast")


@dataclass(frozen=True)
class SpanOptions:
    """``method``: one of :data:`METHODS`.

    * ``text``: ``use_spacy`` (``None`` = when installed), ``max_df`` (``None`` = 0.2 for
      question/answer records, 0.01 for raw passages: :mod:`.text`).
    * ``predictability``: ``reference``, the pre-trained model that judges predictability (a
      directory, a ``.gguf`` file or ``"smollm2"``, unless loaded and passed to
      :func:`find_spans`); ``threshold``: the probability (``None`` = 0.5, :mod:`.lm`).
    * ``contrast``: ``model`` and ``reference`` (as above), ``threshold`` (nats, ``None`` =
      2.0; a z-score with ``relative``), ``max_coverage`` (per-record cap on the fraction of
      words marked; ``None`` = none for question/answer records, 0.25 for raw passages).
    * ``batch_size``, ``max_length``: the model methods' batching and windows.
    """

    method: str = "text"
    use_spacy: Optional[bool] = None
    max_df: Optional[float] = None
    model: Optional[str] = None
    reference: Optional[str] = None
    threshold: Optional[float] = None
    relative: bool = False
    batch_size: int = 8
    max_length: int = 512
    max_coverage: Optional[float] = None


def _all_passages(records) -> bool:
    return bool(records) and all(r.raw for r in records)


def find_spans(records: Sequence[QARecord], options: SpanOptions = SpanOptions(), *,
               model=None, reference=None, tokenizer=None) -> list[QARecord]:
    """``records`` with their spans replaced by ``options.method``'s. For ``contrast`` and
    ``predictability``, ``model`` / ``reference`` / ``tokenizer`` may be given loaded (else
    the paths of ``options`` are loaded through :mod:`palu_kernels.io.models`); for
    ``predictability`` a given ``tokenizer`` must be the reference's."""
    if options.method == "text":
        return text_spans(records, use_spacy=options.use_spacy, max_df=options.max_df)
    if options.method == "predictability":
        ref = reference if reference is not None else options.reference
        if ref is None:
            raise ValueError("the predictability method needs a pre-trained reference model "
                             "(e.g. smollm2)")
        threshold = DEFAULT_PREDICTABILITY if options.threshold is None else options.threshold
        return predictability_spans(records, ref, tokenizer=tokenizer,
                                    options=PredictabilityOptions(
                                        threshold=threshold, batch_size=options.batch_size,
                                        max_length=options.max_length))
    if options.method == "contrast":
        m = model if model is not None else options.model
        ref = reference if reference is not None else options.reference
        if m is None or ref is None:
            raise ValueError("the contrast method needs a model and a reference model")
        cap = options.max_coverage
        if cap is None and _all_passages(records):
            cap = PASSAGE_MAX_COVERAGE
        return contrast_spans(records, m, ref, tokenizer=tokenizer,
                              options=ContrastOptions(
                                  threshold=(DEFAULT_THRESHOLD if options.threshold is None
                                             else options.threshold),
                                  relative=options.relative, batch_size=options.batch_size,
                                  max_length=options.max_length, max_coverage=cap))
    raise ValueError(f"method must be one of {METHODS}, got {options.method!r}")


def read_span_inputs(path: str, *, skip_bad: bool = False):
    """Records to find spans in: question/answer records or raw passages
    (:func:`palu_kernels.io.records.load_forget`; given spans are kept, overlaps merged).
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
