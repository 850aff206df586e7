"""Span identification (``palu_kernels.spans``, ``palu-spans``): the text rules, the contrast
ratios against a direct computation, character-level scoring against its definition, the
span file round trip through the trainer's loader, and raw passages (loading, chunking)."""

import json
import os

import pytest
import torch

from helpers import TOFU_ABSENT
from palu_kernels.spans import (SpanOptions, TextSpanner, find_spans, read_span_inputs,
                                score_records, spacy_available, token_llr, write_span_records)
from palu_kernels.io.data import encode_record
from palu_kernels.io.records import (QARecord, Span, chunk_passages, load_forget, load_passages,
                                     load_records)

pytestmark = pytest.mark.usefixtures("one_thread")

TOFU = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "tofu")
F05 = os.path.join(TOFU, "forget05_spans.jsonl")
F01 = os.path.join(TOFU, "forget01_spans.jsonl")
needs_tofu = pytest.mark.skipif(not os.path.isfile(F05), reason=TOFU_ABSENT)


def _valid(record):
    last = -1
    for sp in record.spans:
        assert 0 <= sp.start < sp.end <= len(record.answer)
        assert record.answer[sp.start:sp.end] == sp.word
        assert sp.start >= last, "spans overlap or are unsorted"
        last = sp.end


def test_text_rules_on_a_sentence():
    sp = TextSpanner(use_spacy=False)
    q = "What is the full name of the author born in Kuwait City?"
    a = ('The author is Basil Mahfouz, born on 8 September 1956; his book "Promise by the '
         'Seine" won the Prix Goncourt. He was born in Kuwait City.')
    words = [s.word for s in sp.spans(a, q)]
    assert "Basil Mahfouz" in words
    assert "Promise by the Seine" in words          # quoted title, connectors kept
    assert "Prix Goncourt" in words
    assert any("1956" in w and "September" in w for w in words)
    assert not any("Kuwait" in w for w in words)    # already in the question
    assert not any(w in ("The", "He") for w in words)  # sentence-initial function words


def test_text_spans_drop_question_words_and_merge_runs():
    sp = TextSpanner(["x"], use_spacy=False, max_df=1.0)
    a = "Her father worked as a Real Estate Agent and her mother was a cartographer."
    words = [s.word for s in sp.spans(a, "What did her parents do?")]
    assert "Real Estate Agent" in words and "cartographer" in words
    assert not [s for s in sp.spans(a, "Was her mother a cartographer?") if s.word == "cartographer"]


@needs_tofu
@pytest.mark.parametrize("use_spacy", [False, pytest.param(True, marks=pytest.mark.skipif(
    not spacy_available(), reason="spaCy / en_core_web_sm not installed"))])
def test_text_method_beats_the_first_try_on_forget05(use_spacy):
    gold, _ = load_forget(F05, merge_overlaps=True)
    pred = find_spans(gold, SpanOptions(method="text", use_spacy=use_spacy))
    for r in pred:
        _valid(r)
    s = score_records(pred, gold)
    assert s.n_records == len(gold) and s.n_unmatched == 0
    # the first try (spaCy entities + proper nouns new in the answer): F1 0.47
    assert s.f1 > 0.47, s.describe()


def _brute_score(pred, gold):
    both = p = g = 0
    for r, t in zip(pred, gold):
        for c in range(len(r.answer)):
            inp = any(s.start <= c < s.end for s in r.spans)
            ing = any(s.start <= c < s.end for s in t.spans)
            both, p, g = both + (inp and ing), p + inp, g + ing
    return both / p, both / g


def test_score_matches_its_definition():
    a = "Alice met Bob in Paris in 1999."
    gold = [QARecord("q", a, (Span(0, 5, "Alice"), Span(17, 22, "Paris"))),
            QARecord("q2", a, (Span(10, 13, "Bob"),))]
    pred = [QARecord("q", a, (Span(0, 9, "Alice met"), Span(26, 30, "1999"))),
            QARecord("q2", a, (Span(10, 13, "Bob"),)),
            QARecord("other", a, (Span(0, 5, "Alice"),))]
    s = score_records(pred, gold)
    p, r = _brute_score(pred[:2], gold)
    assert (s.precision, s.recall) == pytest.approx((p, r))
    assert s.f1 == pytest.approx(2 * p * r / (p + r))
    assert s.n_records == 2 and s.n_unmatched == 1
    assert score_records(gold, gold).f1 == 1.0
    with pytest.raises(ValueError):
        score_records([QARecord("x", "y")], gold)


@needs_tofu
def test_span_file_round_trips_through_the_trainer_loader(tmp_path):
    recs, _ = read_span_inputs(F01)
    pred = find_spans(recs, SpanOptions(method="text", use_spacy=False))
    out = tmp_path / "spans.jsonl"
    write_span_records(str(out), pred)
    back, report = load_records(str(out), spans="required")
    assert report.n_loaded == len(pred)
    assert [(r.question, r.answer, r.spans) for r in back] == \
        [(r.question, r.answer, r.spans) for r in pred]


# --------------------------------------------------------------------- passages


PASSAGES = ["Greek Prime Minister Kyriakos Mitsotakis has asked for forgiveness after the "
            "crash of 28 February. Clashes with police were reported on Sunday in Athens.",
            "The Bank of England raised rates to 5.25% on Thursday, its fourteenth rise."]


def test_passage_files_of_every_kind(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("\n\n".join(PASSAGES) + "\n")
    js = tmp_path / "p.json"
    js.write_text(json.dumps(PASSAGES))
    jl = tmp_path / "p.jsonl"
    jl.write_text("\n".join(json.dumps({"text": t}) for t in PASSAGES))
    for path in (txt, js, jl):
        recs, rep = load_forget(str(path))
        assert [r.answer for r in recs] == PASSAGES and all(r.raw and r.question == "" for r in recs)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"text": "ok"}, {"text": "x", "target_words": [
        {"word": "y", "start": 0, "end": 1}]}]))
    with pytest.raises(ValueError, match="bad.json:1"):
        load_passages(str(bad))


@pytest.fixture(scope="module")
def tiny():
    from palu_kernels.tiny import build_tiny_llama, build_tokenizer

    tok = build_tokenizer(PASSAGES * 4 + ["Question: who?\nAnswer: Basil Mahfouz."] * 4,
                          vocab_size=300)
    return tok, build_tiny_llama(tok, seed=0), build_tiny_llama(tok, seed=1)


def test_chunked_passages_fit_and_keep_every_character_and_span(tiny):
    tok = tiny[0]
    text = " ".join(PASSAGES * 3)
    spans = TextSpanner(use_spacy=False).spans(text)
    rec = QARecord("", text, spans, raw=True)
    pieces = chunk_passages(tok, [rec], max_length=24)
    assert len(pieces) > 3
    assert "".join(p.answer for p in pieces) == text
    pos = 0
    covered = set()
    for p in pieces:
        enc = encode_record(tok, p, max_length=24)
        assert not enc["truncated"] and len(enc["input_ids"]) <= 24
        assert int((enc["labels"] != -100).sum()) == len(enc["input_ids"]) - 1  # all but BOS
        _valid(p)
        covered |= {pos + c for s in p.spans for c in range(s.start, s.end)}
        pos += len(p.answer)
    assert covered == {c for s in spans for c in range(s.start, s.end)}


def _seq_logprob(model, tok, rec):
    enc = encode_record(tok, rec)
    ids, labels = enc["input_ids"][None], enc["labels"]
    logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
    lab = labels[1:]
    keep = (lab != -100) & (lab != tok.eos_token_id)
    return float(logp[keep].gather(-1, lab[keep][:, None]).sum())


@pytest.mark.parametrize("raw", [False, True])
def test_contrast_ratios_sum_to_the_sequence_log_ratio(tiny, raw):
    tok, m, ref = tiny
    recs = [QARecord("" if raw else "who?", "Basil Mahfouz met Kyriakos Mitsotakis.", raw=raw),
            QARecord("" if raw else "when?", PASSAGES[1], raw=raw)]
    with torch.no_grad():
        llr = token_llr(m, ref, tok, recs, batch_size=2)
        for r, toks in zip(recs, llr):
            want = _seq_logprob(m, tok, r) - _seq_logprob(ref, tok, r)
            assert sum(v for _, _, v in toks) == pytest.approx(want, abs=1e-3)
            labels = encode_record(tok, r)["labels"]
            assert len(toks) == int((labels != -100).sum()) - 1  # every answer token but EOS


def test_contrast_threshold_rule(tiny):
    tok, m, ref = tiny
    recs = [QARecord("who?", "Basil Mahfouz met Kyriakos Mitsotakis in Athens.")]
    same = find_spans(recs, SpanOptions(method="contrast", threshold=0.0), model=m, reference=m,
                      tokenizer=tok)
    assert same[0].spans == ()  # a model against itself: every ratio is 0
    every = find_spans(recs, SpanOptions(method="contrast", threshold=-1e9), model=m,
                       reference=ref, tokenizer=tok)
    # every token over the threshold: adjacent words merge into one span, a stopword ("in")
    # is never sensitive, the final "." is not a word
    assert [s.word for s in every[0].spans] == ["Basil Mahfouz met Kyriakos Mitsotakis", "Athens"]


# --------------------------------------------------------------------- CLI


def test_cli_writes_scores_and_refuses(tmp_path, capsys):
    from palu_kernels.cli.spans import main

    src = tmp_path / "p.json"
    src.write_text(json.dumps(PASSAGES))
    out = tmp_path / "out.jsonl"
    assert main([str(src), "--spacy", "no", "-o", str(out)]) == 0
    recs, _ = load_passages(str(out), spans="required")
    assert [r.answer for r in recs] == PASSAGES and any(r.spans for r in recs)
    capsys.readouterr()
    assert main([str(src), "--spacy", "no", "--score", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["score"]["f1"] == 1.0 and res["n_records"] == 2  # the same method, same spans
    for argv, msg in (([str(src), "--method", "contrast"], "--method contrast needs --model"),
                      ([str(tmp_path / "nope.json")], "input"),
                      ([str(src), "--max-df", "0"], "--max-df"),
                      ([str(src), "--method", "contrast", "--model", str(tmp_path),
                        "--reference", str(tmp_path / "missing")], "--reference")):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert msg in str(e.value)
