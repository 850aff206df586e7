"""Sensitive-span identification (``palu-spans``): which characters of an answer (or a raw
passage) PALU forgets. ``text`` needs no model (:mod:`.text`), ``predictability`` marks the
words a pre-trained causal LM does not predict from their left context (:mod:`.lm`),
``contrast`` compares the model to unlearn with a reference model (:mod:`.contrast`);
:mod:`.score` measures spans against annotated ones and their coverage; :mod:`.find`
dispatches and reads / writes the span files. Its own layer, between :mod:`palu_kernels.io`
(it reads records through :mod:`palu_kernels.io.records` and loads models through
:mod:`palu_kernels.io.models`) and :mod:`palu_kernels.train` (``palu-unlearn --spans``
computes spans on the fly).

    from palu_kernels.spans import SpanOptions, find_spans, read_span_inputs, score_records
    records, _ = read_span_inputs("forget.jsonl")          # QA records or raw passages
    pred = find_spans(records, SpanOptions(method="text"))  # QARecords with .spans
"""

from .contrast import (DEFAULT_THRESHOLD, PASSAGE_MAX_COVERAGE, ContrastOptions, contrast_spans,
                       token_llr)
from .find import (METHODS, SpanOptions, find_spans, read_span_inputs, record_to_dict,
                   write_span_records)
from .lm import (DEFAULT_PREDICTABILITY, PredictabilityOptions, predictability_spans,
                 token_log_probs)
from .score import SpanScore, coverage, score_records
from .text import PASSAGE_MAX_DF, QA_MAX_DF, TextSpanner, spacy_available, text_spans

__all__ = ["ContrastOptions", "DEFAULT_PREDICTABILITY", "DEFAULT_THRESHOLD", "METHODS",
           "PASSAGE_MAX_COVERAGE", "PASSAGE_MAX_DF", "PredictabilityOptions", "QA_MAX_DF",
           "SpanOptions", "SpanScore", "TextSpanner", "contrast_spans", "coverage",
           "find_spans", "predictability_spans", "read_span_inputs", "record_to_dict",
           "score_records", "spacy_available", "text_spans", "token_llr", "token_log_probs",
           "write_span_records"]
