"""Span degradation for the mask-noise experiment (palu_kernels.experiments.noise)."""

import copy
import json

import pytest

from palu_kernels.demo.synth import generate_benchmark
from palu_kernels.experiments.noise import (add_spans, degrade, drop_spans, shift_spans,
                                            span_count, word_ranges)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    p = generate_benchmark(tmp_path_factory.mktemp("noise"), n_people=10, questions_per_person=8,
                           forget_fraction=0.3, seed=1, extras=("synonym", "long", "split"))
    with open(p["forget_spans"], encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def assert_valid(recs, original):
    assert len(recs) == len(original)
    for r, o in zip(recs, original):
        assert {k: v for k, v in r.items() if k != "target_words"} == \
            {k: v for k, v in o.items() if k != "target_words"}
        words = r["target_words"]
        for w in words:
            assert set(w) == {"word", "start", "end"}
            assert 0 <= w["start"] < w["end"] <= len(r["answer"])
            assert r["answer"][w["start"]:w["end"]] == w["word"]
        for a, b in zip(words, words[1:]):
            assert a["end"] <= b["start"]


def spans_of(recs):
    return {(i, w["start"], w["end"]) for i, r in enumerate(recs) for w in r["target_words"]}


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 1.0])
def test_drop_spans_removes_the_asked_fraction(records, fraction):
    before = copy.deepcopy(records)
    out = drop_spans(records, fraction, seed=3)
    assert records == before  # input untouched
    assert_valid(out, records)
    n = span_count(records)
    assert span_count(out) == n - round(fraction * n)
    assert spans_of(out) <= spans_of(records)  # only removals
    assert out == drop_spans(records, fraction, seed=3)
    if 0 < fraction < 1:
        assert spans_of(out) != spans_of(drop_spans(records, fraction, seed=4))


@pytest.mark.parametrize("share", [0.0, 0.2, 0.5])
def test_add_spans_reaches_the_asked_precision(records, share):
    out = add_spans(records, share, seed=5)
    assert_valid(out, records)
    n, m = span_count(records), span_count(out)
    assert spans_of(records) <= spans_of(out)  # the true spans stay
    assert abs(n / m - (1 - share)) <= 1 / m  # precision as asked, up to rounding
    for s in spans_of(out) - spans_of(records):  # each false span: one unmarked word
        i, start, end = s
        assert (start, end) in word_ranges(records[i]["answer"])
        assert not any(start < w["end"] and end > w["start"] for w in records[i]["target_words"])
    assert out == add_spans(records, share, seed=5)


def test_add_spans_refuses_more_than_the_free_words():
    recs = [{"question": "q", "answer": "Lisbon is nice", "target_words":
             [{"word": "Lisbon", "start": 0, "end": 6}]}]
    assert span_count(add_spans(recs, 2 / 3)) == 3
    with pytest.raises(ValueError, match="false_share"):
        add_spans(recs, 0.8)


@pytest.mark.parametrize("words", [1, 2])
def test_shift_spans_moves_boundaries_by_whole_words(records, words):
    out = shift_spans(records, words, seed=7)
    assert_valid(out, records)
    assert out == shift_spans(records, words, seed=7)
    assert shift_spans(records, 0) == [dict(r, target_words=sorted(
        r["target_words"], key=lambda w: w["start"])) for r in records]
    moved = 0
    for r, o in zip(out, records):
        wr = word_ranges(r["answer"])
        starts, ends = [s for s, _ in wr], [e for _, e in wr]
        for w in r["target_words"]:
            assert w["start"] in starts and w["end"] in ends
        first = [starts.index(v["start"]) for v in o["target_words"]]
        last = [ends.index(v["end"]) for v in o["target_words"]]
        fits = [d for d in (-words, words)
                if all(0 <= a + d and b + d < len(wr) for a, b in zip(first, last))]
        if not fits or not first:
            continue  # no span, or too short to slide either way (clipped)
        # every span slid by `words` words in one direction (merged when they then overlap)
        assert r["target_words"] == _merged(r["answer"], [
            (wr[a + d][0], wr[b + d][1]) for a, b in zip(first, last)
            for d in [starts.index(r["target_words"][0]["start"]) - first[0]]])
        assert abs(starts.index(r["target_words"][0]["start"]) - first[0]) == words
        moved += len(o["target_words"])
    assert moved > span_count(records) / 2


def _merged(answer, ranges):
    out = []
    for s, e in sorted(ranges):
        if out and s < out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return [{"word": answer[s:e], "start": s, "end": e} for s, e in out]


def test_degrade_dispatches_and_checks(records):
    assert degrade(records, "recall", 0.5, seed=1) == drop_spans(records, 0.5, seed=1)
    assert degrade(records, "precision", 0.3, seed=1) == add_spans(records, 0.3, seed=1)
    assert degrade(records, "shift", 2.0, seed=1) == shift_spans(records, 2, seed=1)
    with pytest.raises(ValueError, match="noise kind"):
        degrade(records, "jitter", 1)
    with pytest.raises(ValueError, match="fraction"):
        drop_spans(records, 1.5)
    with pytest.raises(ValueError, match="false_share"):
        add_spans(records, 1.0)
    with pytest.raises(TypeError):
        drop_spans(records, "0.5")
    with pytest.raises(ValueError, match="words"):
        shift_spans(records, -1)
