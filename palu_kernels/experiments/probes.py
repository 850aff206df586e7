"""Probability probes of a model on parts of answers, and the two measures built on them:
synonym leakage and forgetting beyond the span prefix.

A *probe* is ``{"question", "answer", "start", "end"}`` (``text = answer[start:end]``): its
score is ``log P(text | question, answer[:start])`` under teacher forcing, summed over the
answer tokens whose first non-space character lies in ``[start, end)`` (a byte-level token
like ``" a"`` belongs to the word it starts), with the prompt and the answer tokenised exactly
as the trainer does (:func:`palu_kernels.io.data.encode_record`). The
synthetic benchmark's extra facts carry such probes in ``synth_meta.json``
(:mod:`palu_kernels.demo.synth_extra`).

- :func:`synonym_leakage`: for facts with two surface forms, A marked in the forget answer and
  B taught in the same context but unmarked, how much probability B holds before and after
  unlearning, and its share ``P(B) / (P(A) + P(B))``. Unlearning that removes the fact
  lowers both; unlearning that only removes the marked string moves probability to B.
- :func:`probability_change`: for any set of probes (the late part of a long span, the later
  spans of a split fact), the probability before and after and the mean drop in
  log-probability.
"""

from __future__ import annotations

import math
import statistics
from typing import Dict, List, Sequence

import torch

__all__ = ["probability_change", "score_probes", "span_token_offset", "synonym_leakage"]


def _encode(tokenizer, probe: dict) -> dict:
    """``input_ids`` as the trainer builds them and ``member``: the answer tokens whose first
    non-space character lies in ``[start, end)`` (so disjoint probes share no token, and
    adjacent probes partition the tokens of their union)."""
    from ..io.data import encode_record, format_prompt
    from ..io.records import QARecord

    start, end = probe["start"], probe["end"]
    if not 0 <= start < end <= len(probe["answer"]):
        raise ValueError(f"probe [{start}, {end}) outside its answer of length "
                         f"{len(probe['answer'])}")
    ids = encode_record(tokenizer, QARecord(probe["question"], probe["answer"]),
                        max_length=None)["input_ids"]
    _, prefix, _ = format_prompt(tokenizer, probe["question"])
    text = prefix + probe["answer"]
    offsets = tokenizer(text, add_special_tokens=False,
                        return_offsets_mapping=True)["offset_mapping"]
    n_prompt = len(ids) - len(offsets) - 1  # prompt, answer tokens, EOS
    member = torch.zeros(len(ids), dtype=torch.bool)
    for j, (a, b) in enumerate(offsets):
        while a < b - 1 and text[a].isspace():
            a += 1
        member[n_prompt + j] = b > a and start <= a - len(prefix) < end
    return {"input_ids": ids, "member": member}


@torch.no_grad()
def score_probes(model, tokenizer, probes: Sequence[dict], batch_size: int = 16) -> List[dict]:
    """``[{"logprob", "n_tokens"}]``, one per probe: the summed log-probability of the probe's
    tokens given everything before them (see the module docstring)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    encs = [_encode(tokenizer, p) for p in probes]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None \
        else tokenizer.eos_token_id
    try:
        device = next(model.parameters()).device
    except StopIteration:  # pragma: no cover - a model without parameters
        device = torch.device("cpu")
    was_training = model.training
    model.eval()
    out: List[dict] = []
    try:
        for i in range(0, len(encs), batch_size):
            chunk = encs[i:i + batch_size]
            width = max(len(e["input_ids"]) for e in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for b, e in enumerate(chunk):
                ids[b, :len(e["input_ids"])] = e["input_ids"]
                mask[b, :len(e["input_ids"])] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            logp = torch.log_softmax(logits.float(), dim=-1)
            for b, e in enumerate(chunk):
                pos = torch.nonzero(e["member"]).flatten()  # token t, predicted by row t-1
                if len(pos) == 0:
                    raise ValueError(f"probe {probes[i + b]!r} covers no answer token")
                rows = logp[b, pos - 1].gather(-1, e["input_ids"][pos, None].to(device))
                out.append({"logprob": float(rows.double().sum()), "n_tokens": int(len(pos))})
    finally:
        model.train(was_training)
    return out


def span_token_offset(tokenizer, probe: dict, span_start: int, span_end: int) -> int:
    """How many tokens of the span ``[span_start, span_end)`` of ``probe["answer"]`` come
    before the probe's first token: the probe lies past a span prefix of ``N`` tokens when
    this is ``>= N``."""
    span = _encode(tokenizer, dict(probe, start=span_start, end=span_end))["member"]
    part = _encode(tokenizer, probe)["member"]
    first = int(torch.nonzero(part).flatten()[0])
    return int(span[:first].sum())


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def synonym_leakage(before: Sequence[Dict[str, float]], after: Sequence[Dict[str, float]]
                    ) -> dict:
    """Leakage to the unmarked surface form over facts.

    ``before[i]`` / ``after[i]``: ``{"form": log P(A), "alt_form": log P(B)}`` of fact ``i``
    (A, the marked form; B, the other one), before and after unlearning. Returns the means
    over facts of ``p_form``/``p_alt`` (probabilities) and ``alt_share`` (``P(B) / (P(A) +
    P(B))``), each ``_before`` and ``_after``; ``moved_to_alt`` = mean of ``P(B) after -
    P(B) before``; ``alt_kept`` = mean ``P(B)`` after / before; ``n_facts``.
    """
    if len(before) != len(after):
        raise ValueError(f"before and after must describe the same facts, got {len(before)} "
                         f"and {len(after)}")
    out = {"n_facts": len(before)}
    for tag, rows in (("before", before), ("after", after)):
        pa = [math.exp(r["form"]) for r in rows]
        pb = [math.exp(r["alt_form"]) for r in rows]
        out[f"p_form_{tag}"] = _mean(pa)
        out[f"p_alt_{tag}"] = _mean(pb)
        out[f"alt_share_{tag}"] = _mean([b / (a + b) if a + b > 0 else 0.5
                                         for a, b in zip(pa, pb)])
    out["moved_to_alt"] = _mean([math.exp(a["alt_form"]) - math.exp(b["alt_form"])
                                 for b, a in zip(before, after)])
    out["alt_kept"] = (out["p_alt_after"] / out["p_alt_before"]
                       if out["p_alt_before"] > 0 else float("nan"))
    return out


def probability_change(before: Sequence[float], after: Sequence[float]) -> dict:
    """Log-probabilities of the same probes before and after unlearning -> ``p_before``,
    ``p_after`` (mean probabilities), ``kept`` (their ratio), ``logp_drop`` (mean of
    ``before - after``, nats; > 0: forgotten), ``n``."""
    if len(before) != len(after):
        raise ValueError(f"before and after must hold the same probes, got {len(before)} and "
                         f"{len(after)}")
    pb = _mean([math.exp(x) for x in before])
    pa = _mean([math.exp(x) for x in after])
    return {"p_before": pb, "p_after": pa,
            "kept": pa / pb if pb > 0 else float("nan"),
            "logp_drop": _mean([b - a for b, a in zip(before, after)]), "n": len(before)}
