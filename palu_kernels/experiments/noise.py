"""Degraded span annotations, for measuring how PALU depends on its span detector.

Pure functions on span records (``{"question", "answer", "target_words": [{"word", "start",
"end"}], ...}``, the forget-span layout of ``docs/spec.md``); each returns new records (the
input is never modified), keeps every other field, and keeps every span valid: offsets inside
the answer, ``answer[start:end] == word``, spans sorted and disjoint. Every random choice comes
from ``random.Random(seed)``, so a (records, level, seed) triple always gives the same result.

Three kinds of noise, each with a level in ``[0, 1)`` (``shift``: a whole number of words):

``recall`` (:func:`drop_spans`)
    drop ``round(level * n)`` of the ``n`` spans, chosen uniformly over the whole set: the
    detector's recall becomes ``1 - level``.
``precision`` (:func:`add_spans`)
    add ``round(n * level / (1 - level))`` false spans, each one answer word that no true
    span touches, chosen uniformly over all such words: the detector's precision becomes
    ``n / (n + added)``, about ``1 - level``.
``shift`` (:func:`shift_spans`)
    slide the spans of each answer by ``level`` words, all left or all right at random (the
    other way when the answer ends first; clipped at its ends when neither way fits),
    keeping their length in words: a span misses ``level`` words of the fact and covers as
    many neighbouring words. Spans that then overlap are merged.

Words are maximal runs of letters and digits (with inner ``'`` or ``-``), so punctuation never
starts or ends a span. :func:`degrade` dispatches on the kind's name (:data:`NOISE_KINDS`).
"""

from __future__ import annotations

import copy
import math
import random
import re
from typing import List, Sequence, Tuple

__all__ = ["NOISE_KINDS", "add_spans", "degrade", "drop_spans", "shift_spans", "span_count",
           "word_ranges"]

NOISE_KINDS = ("recall", "precision", "shift")

_WORD = re.compile(r"\w+(?:['-]\w+)*")


def word_ranges(text: str) -> List[Tuple[int, int]]:
    """``[(start, end)]`` of the words of ``text``.

    >>> word_ranges("Lisbon, Portugal.")
    [(0, 6), (8, 16)]
    """
    return [m.span() for m in _WORD.finditer(text)]


def span_count(records: Sequence[dict]) -> int:
    """The number of spans over all records."""
    return sum(len(r.get("target_words") or ()) for r in records)


def _span(answer: str, start: int, end: int) -> dict:
    return {"word": answer[start:end], "start": start, "end": end}


def _check_level(name: str, level, high_exclusive: bool = True) -> float:
    if isinstance(level, bool) or not isinstance(level, (int, float)) or math.isnan(level):
        raise TypeError(f"{name} must be a number in [0, 1], got {level!r}")
    inside = 0 <= level < 1 if high_exclusive else 0 <= level <= 1
    if not inside:
        raise ValueError(f"{name} must be in [0, 1{')' if high_exclusive else ']'}, got {level}")
    return float(level)


def _copy(records: Sequence[dict]) -> List[dict]:
    out = copy.deepcopy(list(records))
    for r in out:
        r["target_words"] = sorted(r.get("target_words") or (), key=lambda w: w["start"])
    return out


def drop_spans(records: Sequence[dict], fraction: float, seed: int = 0) -> List[dict]:
    """Drop ``round(fraction * n)`` of the ``n`` spans, chosen uniformly (recall noise)."""
    fraction = _check_level("fraction", fraction, high_exclusive=False)
    out = _copy(records)
    flat = [(i, j) for i, r in enumerate(out) for j in range(len(r["target_words"]))]
    drop = set(random.Random(seed).sample(flat, round(fraction * len(flat))))
    for i, r in enumerate(out):
        r["target_words"] = [w for j, w in enumerate(r["target_words"]) if (i, j) not in drop]
    return out


def add_spans(records: Sequence[dict], false_share: float, seed: int = 0) -> List[dict]:
    """Add one-word false spans until about ``false_share`` of all spans are false
    (precision noise); ``ValueError`` when the answers have too few unmarked words."""
    false_share = _check_level("false_share", false_share)
    out = _copy(records)
    n = span_count(out)
    n_add = round(n * false_share / (1 - false_share))
    free = [(i, s, e) for i, r in enumerate(out) for s, e in word_ranges(r["answer"])
            if not any(s < w["end"] and e > w["start"] for w in r["target_words"])]
    if n_add > len(free):
        raise ValueError(f"false_share {false_share}: {n_add} false spans needed, but the "
                         f"answers have only {len(free)} words outside the {n} spans")
    for i, s, e in random.Random(seed).sample(free, n_add):
        out[i]["target_words"].append(_span(out[i]["answer"], s, e))
    for r in out:
        r["target_words"].sort(key=lambda w: w["start"])
    return out


def _merge(answer: str, ranges: List[Tuple[int, int]]) -> List[dict]:
    merged: List[List[int]] = []
    for s, e in sorted(ranges):
        if merged and s < merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    return [_span(answer, s, e) for s, e in merged]


def shift_spans(records: Sequence[dict], words: int, seed: int = 0) -> List[dict]:
    """Slide the spans of every answer by ``words`` words, all left or all right at random
    (boundary noise, like a detector that is off by a word or two)."""
    if isinstance(words, bool) or not isinstance(words, int) or words < 0:
        raise ValueError(f"words must be an int >= 0, got {words!r}")
    rng = random.Random(seed)
    out = _copy(records)
    for r in out:
        wr = word_ranges(r["answer"])
        direction = rng.choice((-1, 1))
        # word indices (first, last) of each span; a span on no word (punctuation) stays put
        idx = []
        for w in r["target_words"]:
            k = [j for j, (s, e) in enumerate(wr) if s < w["end"] and e > w["start"]]
            idx.append((k[0], k[-1]) if k and words else None)
        inside = [i for i in idx if i is not None]

        def fits(d: int) -> bool:
            return all(0 <= a + d * words and b + d * words < len(wr) for a, b in inside)

        if not fits(direction) and fits(-direction):
            direction = -direction  # the answer ends first on that side
        ranges = []
        for w, i in zip(r["target_words"], idx):
            if i is None:
                ranges.append((w["start"], w["end"]))
                continue
            lo, hi = (min(max(x + direction * words, 0), len(wr) - 1) for x in i)
            ranges.append((wr[lo][0], wr[hi][1]))
        r["target_words"] = _merge(r["answer"], ranges)
    return out


def degrade(records: Sequence[dict], kind: str, level, seed: int = 0) -> List[dict]:
    """``kind`` (one of :data:`NOISE_KINDS`) at ``level``: ``recall`` -> :func:`drop_spans`,
    ``precision`` -> :func:`add_spans`, ``shift`` -> :func:`shift_spans` (``level`` words)."""
    if kind == "recall":
        return drop_spans(records, level, seed)
    if kind == "precision":
        return add_spans(records, level, seed)
    if kind == "shift":
        if isinstance(level, float) and level.is_integer():
            level = int(level)
        return shift_spans(records, level, seed)
    raise ValueError(f"noise kind must be one of {NOISE_KINDS}, got {kind!r}")
