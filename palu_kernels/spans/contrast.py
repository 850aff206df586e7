"""``contrast`` span identification: the tokens the model to unlearn predicts far better than
a reference model that never saw the data.

For every answer token ``y_t`` (its prompt and the answer before it as context, the same
token sequence the trainer builds, :func:`palu_kernels.train.data.encode_record`):

    llr_t = log p_M(y_t | y_<t) - log p_R(y_t | y_<t)     (nats)

``M`` is the model to unlearn (fine-tuned on the forget data), ``R`` the reference: the
retain model, or the base model before fine-tuning. Both must share the tokenizer.

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
from ..train.data import QARecord, encode_answer
from ..train.models import load_model, load_tokenizer, resolve_model_path
from .text import STOPWORDS, spans_from_marks, words_of

__all__ = ["DEFAULT_THRESHOLD", "ContrastOptions", "contrast_spans", "token_llr"]

DEFAULT_THRESHOLD = 2.0


@dataclass(frozen=True)
class ContrastOptions:
    threshold: float = DEFAULT_THRESHOLD
    relative: bool = False
    batch_size: int = 8
    max_length: int = 512


def _layout(tokenizer, record: QARecord, max_length: int):
    """Windows of ``(input_ids, first_answer_position, answer_token_char_ranges)``: the
    trainer's token sequence of ``record`` (prompt, answer; no EOS); a raw passage longer than
    ``max_length`` is split into several windows, each starting with BOS."""
    p_ids, prefix, enc = encode_answer(tokenizer, record)
    shift = len(prefix)
    ids = list(enc["input_ids"])
    offs = [(a - shift, b - shift) for a, b in enc["offset_mapping"]]
    room = max(1, max_length - len(p_ids))
    windows = []
    for s in range(0, len(ids), room):
        windows.append((p_ids + ids[s:s + room], len(p_ids), offs[s:s + room]))
        if not record.raw:  # a question/answer record: one window, truncated like the trainer
            break
    return windows


def token_llr(model, reference, tokenizer, records: Sequence[QARecord], *,
              batch_size: int = 8, max_length: int = 512) -> list[list[tuple[int, int, float]]]:
    """Per record, the answer tokens as ``(char_start, char_end, llr)`` (offsets into the
    answer, leading whitespace of a token included as the tokenizer reports it)."""
    import torch

    jobs = []  # (record index, ids, first answer position, offsets)
    for i, r in enumerate(records):
        for ids, first, offs in _layout(tokenizer, r, max_length):
            jobs.append((i, ids, first, offs))
    out: list[list[tuple[int, int, float]]] = [[] for _ in records]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    order = sorted(range(len(jobs)), key=lambda j: len(jobs[j][1]))
    results = {}
    with torch.no_grad():
        for s in range(0, len(order), batch_size):
            batch = [jobs[j] for j in order[s:s + batch_size]]
            n = max(len(b[1]) for b in batch)
            ids = torch.full((len(batch), n), pad, dtype=torch.long)
            att = torch.zeros((len(batch), n), dtype=torch.long)
            for k, b in enumerate(batch):
                ids[k, :len(b[1])] = torch.tensor(b[1])
                att[k, :len(b[1])] = 1
            lp = []
            for m in (model, reference):
                dev = next(m.parameters()).device
                logits = m(input_ids=ids.to(dev), attention_mask=att.to(dev)).logits.float()
                logp = torch.log_softmax(logits[:, :-1], dim=-1)
                lp.append(logp.gather(-1, ids[:, 1:].to(dev).unsqueeze(-1)).squeeze(-1).cpu())
            diff = lp[0] - lp[1]
            for k, b in enumerate(batch):
                _, b_ids, first, offs = b
                # token t (t >= 1) is predicted by row t - 1
                vals = [float(diff[k, t - 1]) for t in range(max(first, 1), len(b_ids))]
                skip = len(offs) - len(vals)  # a first token without a predecessor row
                results[order[s + k]] = [(a, e, v) for (a, e), v in zip(offs[skip:], vals)]
    for j, (i, *_rest) in enumerate(jobs):
        out[i].extend(results[j])
    return out


def _spans_of(answer: str, tokens: list[tuple[int, int, float]], opts: ContrastOptions):
    if not tokens:
        return ()
    vals = [v for _, _, v in tokens]
    cut = opts.threshold
    if opts.relative:
        mean = sum(vals) / len(vals)
        std = (sum((v - mean) ** 2 for v in vals) / len(vals)) ** 0.5
        cut = mean + opts.threshold * std
    words = words_of(answer)
    mark = [False] * len(words)
    hot = sorted((a, e) for a, e, v in tokens if v > cut)
    j = 0  # words and hot tokens are both in text order: one sweep (linear in the passage)
    for i, w in enumerate(words):
        while j < len(hot) and hot[j][1] <= w.start:
            j += 1
        k = j
        while k < len(hot) and hot[k][0] < w.end and not mark[i]:
            a, e = hot[k]
            mark[i] = (e > w.start and w.lower not in STOPWORDS
                       and bool(answer[max(a, w.start):min(e, w.end)].strip()))
            k += 1
    return spans_from_marks(answer, words, mark)


def contrast_spans(records: Sequence[QARecord], model, reference, *,
                   tokenizer=None, options: Optional[ContrastOptions] = None,
                   ) -> list[QARecord]:
    """``records`` with spans from the log-likelihood ratio of ``model`` over ``reference``.

    ``model`` / ``reference``: loaded causal LMs, or model directories (loaded through
    :mod:`palu_kernels.train.models`, float32, eval mode); ``tokenizer``: default ``model``'s
    (a directory is needed then). The two vocabularies must have the same size.
    """
    opts = options or ContrastOptions()
    if not (isinstance(opts.threshold, (int, float)) and math.isfinite(opts.threshold)):
        raise UsageError("threshold", f"must be a finite number, got {opts.threshold!r} (nan "
                                      "marks nothing, -inf every word)")
    if tokenizer is None:
        if not isinstance(model, str):
            raise ValueError("tokenizer is required when model is not a directory")
        tokenizer = load_tokenizer(resolve_model_path(model))
    if isinstance(model, str):
        model = load_model(resolve_model_path(model), float32=True, eval_mode=True)
    if isinstance(reference, str):
        reference = load_model(resolve_model_path(reference), float32=True, eval_mode=True)
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
