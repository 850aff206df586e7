"""Span sources for raw passages (issue 22): the text rules for passages, ``predictability``
(the words a pre-trained causal LM does not predict) and ``contrast`` with its per-passage
coverage cap; ``palu-spans --method predictability`` and ``palu-unlearn --spans
predictability``. Tiny models only (palu_kernels.tiny) and hand-made ones: seconds, offline.
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from palu_kernels.spans import (PASSAGE_MAX_COVERAGE, PASSAGE_MAX_DF, QA_MAX_DF, SpanOptions,
                                TextSpanner, coverage, find_spans, predictability_spans,
                                text_spans, token_log_probs)
from palu_kernels.spans.lm import PredictabilityOptions, word_log_probs
from palu_kernels.spans.text import STOPWORDS, words_of
from palu_kernels.io.data import encode_record
from palu_kernels.io.records import QARecord

pytestmark = pytest.mark.usefixtures("one_thread")

PASSAGES = [
    "Greek Prime Minister Kyriakos Mitsotakis asked for forgiveness after the crash in "
    "Tempi. \"We cannot hide behind human error,\" he said on Sunday.",
    "The station master at Larissa was charged with manslaughter. Thousands marched "
    "through Athens to watch \"The Long Road Home\" on 5 March 2023.",
    "A storm closed schools across the north of Scotland on Tuesday morning, and the bank "
    "raised rates for the ninth time.",
]


def _raw(texts):
    return [QARecord("", t, raw=True) for t in texts]


# ------------------------------------------------------------------ text rules on passages


def test_text_rules_for_passages():
    assert TextSpanner(passages=True).max_df == PASSAGE_MAX_DF == 0.01
    assert TextSpanner().max_df == QA_MAX_DF == 0.2
    out = text_spans(_raw(PASSAGES), use_spacy=False)
    words = [s.word for s in out[0].spans] + [s.word for s in out[1].spans]
    # names, numbers and dates are marked; a quoted title (title case) is; quoted speech is not
    for w in ("Greek Prime Minister Kyriakos Mitsotakis", "Tempi", "Larissa", "Athens",
              "The Long Road Home", "5 March 2023"):
        assert w in words, (w, words)
    assert not any("hide" in w or "human error" in w for w in words)
    # the same texts as question/answer records keep the question-era rules: the quoted
    # speech is a "title" there (and the data-set frequency threshold is 0.2)
    qa = text_spans([QARecord("q?", t) for t in PASSAGES], use_spacy=False)
    assert any("hide" in s.word for s in qa[0].spans)
    # with only 3 passages, the passage default (a word in <= 1% of them) leaves no content
    # word rare: only names, numbers, dates and titles remain
    none = text_spans(_raw(PASSAGES), use_spacy=False, content_words=False)
    assert [r.spans for r in none] == [r.spans for r in out]
    more = text_spans(_raw(PASSAGES), use_spacy=False, max_df=0.5)
    assert coverage(more)["chars"] > coverage(out)["chars"]


# ------------------------------------------------------------------ hand-made causal LMs


class _Table(torch.nn.Module):
    """A causal LM whose next-token logits depend on the current token only: ``table[a, b]``
    for the token after ``a``. ``texts`` given: the continuations seen in them get ``logit``."""

    def __init__(self, tokenizer, texts=(), logit=40.0):
        super().__init__()
        v = len(tokenizer)
        self.table = torch.nn.Parameter(torch.zeros(v, v), requires_grad=False)
        for t in texts:
            ids = encode_record(tokenizer, QARecord("", t, raw=True))["input_ids"].tolist()
            for a, b in zip(ids, ids[1:]):
                self.table.data[a, b] = logit

    def get_output_embeddings(self):
        return SimpleNamespace(weight=self.table)

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.table[input_ids])


class _Oracle(torch.nn.Module):
    """Predicts the true next token of the sequences of ``known`` texts with probability ~1
    (it reads it from the input: a hand-made model, not a causal one), uniform elsewhere."""

    def __init__(self, tokenizer, known=()):
        super().__init__()
        self.v = len(tokenizer)
        self.known = [encode_record(tokenizer, QARecord("", t, raw=True))["input_ids"].tolist()
                      for t in known]
        self.dummy = torch.nn.Parameter(torch.zeros(1), requires_grad=False)

    def forward(self, input_ids, attention_mask=None):
        b, n = input_ids.shape
        logits = torch.zeros(b, n, self.v)
        for i in range(b):
            row = input_ids[i].tolist()
            if any(row[:len(k) - 1] == k[:-1] for k in self.known):
                for t in range(n - 1):
                    logits[i, t, row[t + 1]] = 40.0
        return SimpleNamespace(logits=logits)


@pytest.fixture(scope="module")
def tiny():
    from palu_kernels.tiny import build_tiny_llama, build_tokenizer

    tok = build_tokenizer(PASSAGES * 4, vocab_size=400)
    return tok, build_tiny_llama(tok, hidden_size=32, num_layers=1, num_heads=2, seed=0).eval()


def test_token_log_probs_match_an_unbatched_forward(tiny):
    tok, model = tiny
    recs = _raw(PASSAGES) + [QARecord("Who?", "Kyriakos Mitsotakis, in 2023.")]
    (got,) = token_log_probs([model], tok, recs, batch_size=2)
    for r, toks in zip(recs, got):
        enc = encode_record(tok, r)
        ids, labels = enc["input_ids"], enc["labels"]
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=ids[None]).logits[0, :-1].float(), -1)
        lab = labels[1:]
        keep = (lab != -100) & (lab != tok.eos_token_id)
        want = lp[keep].gather(-1, lab[keep][:, None]).squeeze(-1)
        assert len(toks) == int(keep.sum())
        assert torch.allclose(torch.tensor([v for _, _, v in toks]), want, atol=1e-4)


def test_predictability_rule_is_the_word_probability(tiny):
    """A word is common when the product of its tokens' probabilities is >= the threshold;
    every other non-stopword word is marked (checked word by word on a tiny Llama)."""
    tok, model = tiny
    recs = _raw(PASSAGES[:2])
    (lps,) = token_log_probs([model], tok, recs)
    for th in (0.001, 0.01, 0.05):
        out = predictability_spans(recs, model, tokenizer=tok,
                                   options=PredictabilityOptions(threshold=th))
        for r, toks, o in zip(recs, lps, out):
            words = words_of(r.answer)
            marked = {c for s in o.spans for c in range(s.start, s.end)}
            for w in words:
                ts = [v for a, e, v in toks
                      if a < w.end and e > w.start and r.answer[max(a, w.start):
                                                               min(e, w.end)].strip()]
                sensitive = bool(ts) and math.exp(sum(ts)) < th and w.lower not in STOPWORDS
                assert (w.start in marked) == sensitive or (
                    # a stopword between two marked words is inside their merged span
                    w.lower in STOPWORDS and w.start in marked), (th, w.text)
    # the threshold is a probability
    with pytest.raises(ValueError, match="threshold"):
        PredictabilityOptions(threshold=1.5)


def test_predictability_extremes():
    from palu_kernels.tiny import build_tokenizer

    tok = build_tokenizer(PASSAGES * 4, vocab_size=400)
    recs = _raw(PASSAGES)
    # a model that predicts every token of these passages: nothing is sensitive
    knows = predictability_spans(recs, _Oracle(tok, PASSAGES), tokenizer=tok)
    assert all(r.spans == () for r in knows)
    # a model that predicts nothing (uniform): every non-stopword word is sensitive
    blank = predictability_spans(recs, _Oracle(tok), tokenizer=tok)
    for r in blank:
        words = words_of(r.answer)
        marked = {c for s in r.spans for c in range(s.start, s.end)}
        assert all(w.start in marked for w in words if w.lower not in STOPWORDS)
    # half the words: the model knows the first passage only
    part = predictability_spans(recs, _Oracle(tok, PASSAGES[:1]), tokenizer=tok)
    assert part[0].spans == () and part[1].spans and part[2].spans
    # word probability = the product over its tokens
    words, lps = word_log_probs("ab cd", [(0, 1, -0.5), (1, 2, -0.25), (2, 5, -1.0)])
    assert [w.text for w in words] == ["ab", "cd"] and lps == [-0.75, -1.0]


def test_contrast_cap_keeps_the_highest_ratios():
    from palu_kernels.tiny import build_tokenizer

    tok = build_tokenizer(PASSAGES * 4, vocab_size=400)
    recs = _raw(PASSAGES)
    target, base = _Table(tok, PASSAGES), _Table(tok)
    opts = dict(model=target, reference=base, tokenizer=tok)
    free = find_spans(recs, SpanOptions(method="contrast", max_coverage=1.0), **opts)
    capped = find_spans(recs, SpanOptions(method="contrast"), **opts)  # passage default cap
    tight = find_spans(recs, SpanOptions(method="contrast", max_coverage=0.1), **opts)
    for f, c, t in zip(free, capped, tight):
        n = len(words_of(f.answer))
        cov = lambda r: sum(1 for w in words_of(r.answer)  # noqa: E731
                            if any(s.start <= w.start < s.end for s in r.spans))
        assert cov(f) > PASSAGE_MAX_COVERAGE * n  # memorised: nearly every content word
        assert cov(c) <= int(PASSAGE_MAX_COVERAGE * n) and cov(t) <= int(0.1 * n)
        assert cov(t) <= cov(c) <= cov(f)
        # capped spans lie inside the uncapped ones
        inside = {x for s in f.spans for x in range(s.start, s.end)}
        assert {x for s in c.spans for x in range(s.start, s.end)} <= inside
    # question/answer records have no cap by default
    qa = [QARecord("q?", t) for t in PASSAGES]
    qa_free = find_spans(qa, SpanOptions(method="contrast"), **opts)
    assert coverage(qa_free)["words"] > PASSAGE_MAX_COVERAGE


# ------------------------------------------------------------------------------ the CLIs


def test_palu_spans_predictability_and_refusals(tmp_path, capsys):
    from palu_kernels.cli.spans import main
    from palu_kernels.tiny import save_tiny_model

    src = tmp_path / "p.json"
    src.write_text(json.dumps(PASSAGES))
    ref = save_tiny_model(str(tmp_path / "ref"), texts=PASSAGES * 2, vocab_size=400)
    out = tmp_path / "s.jsonl"
    assert main([str(src), "--method", "predictability", "--reference", ref,
                 "--threshold", "0.01", "-o", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["method"] == "predictability" and res["n_records"] == 3
    assert 0.0 < res["coverage"]["chars"] < 1.0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    for r in rows:
        for sp in r["target_words"]:
            assert r["text"][sp["start"]:sp["end"]] == sp["word"]
    assert main([str(src), "--spacy", "no"]) == 0
    assert "% of the characters" in capsys.readouterr().out
    for argv, msg in (([str(src), "--method", "predictability"],
                       "--method predictability needs --reference"),
                      ([str(src), "--method", "predictability", "--reference", ref,
                        "--threshold", "2"], "probability in (0, 1]"),
                      ([str(src), "--method", "predictability", "--reference", ref,
                        "--max-df", "0.1"], "--max-df does not apply"),
                      ([str(src), "--max-coverage", "0.1"], "--max-coverage does not apply"),
                      ([str(src), "--method", "contrast", "--model", ref, "--reference", ref,
                        "--max-coverage", "2"], "--max-coverage must be in [0, 1]")):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert msg in str(e.value)


def test_palu_unlearn_spans_predictability(tmp_path):
    from palu_kernels.cli import unlearn as cli
    from palu_kernels.tiny import save_tiny_model

    forget = tmp_path / "forget.json"
    forget.write_text(json.dumps(PASSAGES))
    model = save_tiny_model(str(tmp_path / "tiny"), texts=PASSAGES * 2, vocab_size=400)
    argv = ["--model", model, "--forget", str(forget), "--output-dir", str(tmp_path / "out"),
            "--max-length", "64", "--max-steps", "1", "--batch-size", "2", "--k", "50",
            "--warmup-epochs", "0", "--eval-retain", "0", "--spans", "predictability",
            "--spans-reference", model]
    summary = cli.unlearn(argv)
    assert summary["steps"] == 1 and summary["data"]["forget_spans"] > 0
    assert summary["arguments"]["spans"] == "predictability"
    with pytest.raises(SystemExit, match="--spans-reference"):
        cli.unlearn(argv[:-2] + ["--output-dir", str(tmp_path / "o2")])
