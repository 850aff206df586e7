"""``palu-experiment spans --quick``: PALU with annotated, text, contrast and random spans on
the synthetic benchmark and a tiny model; the random control keeps the annotation's counts."""

import csv
import os

import pytest

pytest.importorskip("transformers")

from palu_kernels.cli import experiment as cli  # noqa: E402
from palu_kernels.experiments.span_sources import SOURCES, random_spans  # noqa: E402
from palu_kernels.spans.text import words_of  # noqa: E402
from palu_kernels.io.records import QARecord, Span, load_records  # noqa: E402


def test_random_spans_keep_count_and_word_lengths():
    a = "Alice Smith met Bob in the old town of Paris on a cold day in 1999 ."
    rec = QARecord("q", a, (Span(0, 11, "Alice Smith"), Span(39, 44, "Paris")))
    for seed in range(5):
        (r,) = random_spans([rec], seed)
        assert sorted(len(words_of(s.word)) for s in r.spans) == [1, 2]
        assert all(a[s.start:s.end] == s.word for s in r.spans)
        assert all(x.end <= y.start for x, y in zip(r.spans, r.spans[1:]))


def test_spans_quick(tmp_path):
    out = str(tmp_path / "spans")
    assert cli.main(["spans", "--quick", "--out", out, "--no-progress"]) == 0
    with open(os.path.join(out, "results.csv")) as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["spans"] for r in rows) == sorted(SOURCES)
    for r in rows:
        assert 0 <= float(r["forget_quality"]) <= 1 and 0 <= float(r["model_utility"]) <= 1
    md = open(os.path.join(out, "results.md")).read()
    for src in SOURCES:
        assert f"| {src} |" in md
    # the span files the runs used load as forget data; annotated scores F1 = 1 against itself
    (key,) = os.listdir(os.path.join(out, "spans"))
    for src in SOURCES[1:]:
        recs, _ = load_records(os.path.join(out, "spans", key, f"{src}.jsonl"), spans="required")
        assert recs
    assert "| annotated | 1.0000 | 1.0000 | 1.0000 |" in md
