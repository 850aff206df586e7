"""Sensitive-span identification (``palu-spans``): which characters of an answer PALU
forgets. ``text`` needs no model (:mod:`.text`), ``contrast`` compares the model to unlearn
with a reference model (:mod:`.contrast`); :mod:`.score` measures spans against annotated
ones; :mod:`.find` dispatches and reads / writes the span files. Sits in the ``train`` layer
(it reads records through :mod:`palu_kernels.train.data` and loads models through
:mod:`palu_kernels.train.models`).

    from palu_kernels.spans import SpanOptions, find_spans, read_span_inputs, score_records
    records, _ = read_span_inputs("forget.jsonl")          # QA records or raw passages
    pred = find_spans(records, SpanOptions(method="text"))  # QARecords with .spans
"""

from .contrast import DEFAULT_THRESHOLD, ContrastOptions, contrast_spans, token_llr
from .find import (METHODS, SpanOptions, find_spans, read_span_inputs, record_to_dict,
                   write_span_records)
from .score import SpanScore, score_records
from .text import TextSpanner, spacy_available, text_spans

__all__ = ["ContrastOptions", "DEFAULT_THRESHOLD", "METHODS", "SpanOptions", "SpanScore",
           "TextSpanner", "contrast_spans", "find_spans", "read_span_inputs", "record_to_dict",
           "score_records", "spacy_available", "text_spans", "token_llr",
           "write_span_records"]
