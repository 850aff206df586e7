"""``contrast`` span identification: the tokens the model to unlearn predicts far better than
a reference model that never saw the data.

For every answer token ``y_t`` (its prompt and the answer before it as context, the same
token sequence the trainer builds, :func:`palu_kernels.io.data.encode_record`):

    llr_t = log p_M(y_t | y_<t) - log p_R(y_t | y_<t)     (nats)

``M`` is the model to unlearn (fine-tuned on the forget data), ``R`` the reference: the
retain model, or the pre-trained base model before fine-tuning (a directory, a ``.gguf``
file, or ``"smollm2"``). Both must share the tokenizer.

Against a model trained from scratch (or any reference that knows little of the language), a
memorising model out-predicts it on nearly every content word: that is memorisation, not
sensitivity. A pre-trained base model predicts the language itself, so the ratio singles out
what the fine-tuning added; ``max_coverage`` further caps the marked words per record (the
highest-ratio ones are kept), default none for question/answer records and
:data:`PASSAGE_MAX_COVERAGE` for raw passages when chosen by :func:`palu_kernels.spans.find_spans`.

Threshold rule (``docs/spec.md``, "Sensitive spans"): a token is sensitive when
``llr_t > threshold`` nats (default :data:`DEFAULT_THRESHOLD`, chosen by measuring on TOFU
forget05, see ``bench/results/spans/README.md``); with ``relative=True`` the threshold is
instead ``mean + threshold * std`` of the record's own token ratios (a per-record z-score).
A word is sensitive when any of its tokens is and it is not a stopword (function words carry
no facts, and a model that memorised an answer predicts them better too); adjacent sensitive
words are merged into one span (:func:`palu_kernels.spans.text.spans_from_marks`).

Long passages are scored in windows of ``max_length`` tokens (each window its own context).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional, Sequence

from ..errors import UsageError
from ..io.records import QARecord
from .lm import load_scorer, per_word, token_log_probs
from .text import STOPWORDS, spans_from_marks

__all__ = ["DEFAULT_THRESHOLD", "PASSAGE_MAX_COVERAGE", "ContrastOptions", "contrast_spans",
           "token_llr"]

DEFAULT_THRESHOLD = 2.0
PASSAGE_MAX_COVERAGE = 0.25
"""The per-passage cap (fraction of a passage's words) of contrast spans on raw passages."""


@dataclass(frozen=True)
class ContrastOptions:
    """``max_coverage``: at most this fraction of a record's words is marked (those of the
    highest ratio), ``None`` = no cap."""

    threshold: float = DEFAULT_THRESHOLD
    relative: bool = False
    batch_size: int = 8
    max_length: int = 512
    max_coverage: Optional[float] = None

    def __post_init__(self):
        if self.max_coverage is not None and not 0.0 <= self.max_coverage <= 1.0:
            raise ValueError(f"max_coverage: a fraction in [0, 1], got {self.max_coverage!r}")


def token_llr(model, reference, tokenizer, records: Sequence[QARecord], *,
              batch_size: int = 8, max_length: int = 512) -> list[list[tuple[int, int, float]]]:
    """Per record, the answer tokens as ``(char_start, char_end, llr)`` (offsets into the
    answer, leading whitespace of a token included as the tokenizer reports it)."""
    lp_m, lp_r = token_log_probs([model, reference], tokenizer, records,
                                 batch_size=batch_size, max_length=max_length)
    return [[(a, e, v - w) for (a, e, v), (_, _, w) in zip(tm, tr)]
            for tm, tr in zip(lp_m, lp_r)]


def _spans_of(answer: str, tokens: list[tuple[int, int, float]], opts: ContrastOptions):
    if not tokens:
        return ()
    vals = [v for _, _, v in tokens]
    cut = opts.threshold
    if opts.relative:
        mean = sum(vals) / len(vals)
        std = (sum((v - mean) ** 2 for v in vals) / len(vals)) ** 0.5
        cut = mean + opts.threshold * std
    words, score = per_word(answer, tokens, max)  # the word's highest token ratio
    mark = [w.lower not in STOPWORDS and sc is not None and sc > cut
            for w, sc in zip(words, score)]
    if opts.max_coverage is not None:
        # the cap: at most max_coverage of the record's words, those of the highest ratio
        room = int(opts.max_coverage * len(words))
        marked = sorted((i for i, m in enumerate(mark) if m), key=lambda i: (-score[i], i))
        for i in marked[room:]:
            mark[i] = False
    return spans_from_marks(answer, words, mark)


def contrast_spans(records: Sequence[QARecord], model, reference, *,
                   tokenizer=None, options: Optional[ContrastOptions] = None,
                   ) -> list[QARecord]:
    """``records`` with spans from the log-likelihood ratio of ``model`` over ``reference``.

    ``model`` / ``reference``: loaded causal LMs, or model directories (loaded through
    :mod:`palu_kernels.io.models`, float32, eval mode); ``tokenizer``: default ``model``'s
    (a directory is needed then). The two vocabularies must have the same size.
    """
    opts = options or ContrastOptions()
    if not (isinstance(opts.threshold, (int, float)) and math.isfinite(opts.threshold)):
        raise UsageError("threshold", f"must be a finite number, got {opts.threshold!r} (nan "
                                      "marks nothing, -inf every word)")
    if tokenizer is None and not isinstance(model, str):
        raise ValueError("tokenizer is required when model is not a directory")
    model, tokenizer = load_scorer(model, tokenizer=tokenizer)
    reference, _ = load_scorer(reference, tokenizer=tokenizer)
    v_m = model.get_output_embeddings().weight.shape[0]
    v_r = reference.get_output_embeddings().weight.shape[0]
    if v_m != v_r:
        raise ValueError(f"the reference model's vocabulary ({v_r}) differs from the model's "
                         f"({v_m}): contrast needs the same tokenizer")
    model.eval()
    reference.eval()
    llr = token_llr(model, reference, tokenizer, records, batch_size=opts.batch_size,
                    max_length=opts.max_length)
    return [replace(r, spans=_spans_of(r.answer, t, opts)) for r, t in zip(records, llr)]
