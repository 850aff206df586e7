"""TOFU metrics against hand-computed values (palu_kernels.eval.metrics / tofu).

The model-level checks use fake causal LMs whose next-token distributions are set by hand:
a *unigram* model (the same distribution at every position) and a *bigram* model (the
distribution depends only on the current token), so every answer probability, truth ratio
and greedy prediction is known in closed form.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from palu_kernels.eval import metrics as M
from palu_kernels.eval.tofu import PromptEncoder, evaluate_split


class BigramLM(torch.nn.Module):
    """``logits[b, t] = table[input_ids[b, t]]``: the next token depends on the current one."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = torch.nn.Parameter(table.clone(), requires_grad=False)

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.table[input_ids])


class UnigramLM(BigramLM):
    """The same next-token distribution ``softmax(log_q)`` at every position."""

    def __init__(self, probs):
        q = torch.tensor(probs, dtype=torch.float64)
        super().__init__(q.log().expand(len(probs), len(probs)).float())


class WordTokenizer:
    """Whitespace tokenizer over a fixed word list; id 0 is EOS (and pad), 1 is BOS."""

    chat_template = None
    eos_token_id = 0
    pad_token_id = 0
    bos_token_id = 1

    def __init__(self, words):
        self.vocab = {w: i + 2 for i, w in enumerate(words)}
        self.inv = {i: w for w, i in self.vocab.items()}

    def __call__(self, text, add_special_tokens=True):
        ids = [self.vocab[w] for w in text.split()]
        return {"input_ids": ([self.bos_token_id] if add_special_tokens else []) + ids}

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(self.inv[i] for i in ids if i in self.inv)


# ------------------------------------------------------------------------ pure metrics


def test_normalised_probability_and_truth_ratio_by_hand():
    # paraphrase: avg NLL log 2 -> P = 1/2; perturbed: P = 1/4 and 1/16 -> geomean 1/8.
    para, pert = math.log(2), [math.log(4), math.log(16)]
    assert M.normalised_probability(para) == pytest.approx(0.5)
    assert M.truth_ratio(para, pert) == pytest.approx((1 / 8) / (1 / 2))
    assert M.option_probability(para, pert) == pytest.approx(0.5 / (0.5 + 0.25 + 1 / 16))


def test_truth_ratio_score_by_hand():
    ratios = [0.25, 2.0, 1.0]
    assert M.truth_ratio_score(ratios, forget=True) == pytest.approx((0.25 + 0.5 + 1.0) / 3)
    assert M.truth_ratio_score(ratios, forget=False) == pytest.approx((0.75 + 0 + 0) / 3)
    with pytest.raises(ValueError, match="ratios"):
        M.truth_ratio_score([], forget=True)
    with pytest.raises(ValueError, match="positive"):
        M.truth_ratio_score([0.0], forget=True)
    with pytest.raises(ValueError, match="perturbed"):
        M.truth_ratio(0.1, [])


def test_forget_quality_ks():
    a = [0.1, 0.3, 0.35, 0.8, 0.9]
    assert M.forget_quality(a, list(a)) == 1.0
    # Fully separated samples of 8 and 8: exact two-sided p-value 2 / C(16, 8).
    lo, hi = [0.01 * i for i in range(1, 9)], [1 + 0.1 * i for i in range(8)]
    assert M.forget_quality(lo, hi) == pytest.approx(2 / math.comb(16, 8))
    with pytest.raises(ValueError, match="non-empty"):
        M.forget_quality([], a)


@given(st.lists(st.floats(0.01, 100), min_size=1, max_size=12),
       st.lists(st.floats(0.01, 100), min_size=1, max_size=12))
def test_forget_quality_invariant_under_inverse_ratio(a, b):
    # TOFU's code takes R the other way round (1/R); the KS p-value must not care.
    assert M.forget_quality(a, b) == pytest.approx(
        M.forget_quality([1 / x for x in a], [1 / x for x in b]), abs=1e-12)


def test_model_utility_harmonic_mean_by_hand():
    vals = [0.5, 0.25, 1.0, 0.5, 0.5, 0.25, 1.0, 0.125, 0.5]
    # 9 / (2 + 4 + 1 + 2 + 2 + 4 + 1 + 8 + 2) = 9 / 26
    assert M.model_utility(vals) == pytest.approx(9 / 26)
    assert M.model_utility(vals[:-1] + [0.0]) == 0.0
    with pytest.raises(ValueError, match="non-negative"):
        M.model_utility([0.5, -0.1])


def test_memorisation_and_extraction_by_hand():
    c = [True, False, True, True]
    assert M.exact_memorisation(c) == 0.75
    assert M.extraction_strength(c) == 0.5          # k = 2
    assert M.extraction_strength([True] * 5) == 1.0  # k = 0
    assert M.extraction_strength([True, False]) == 0.0
    with pytest.raises(ValueError):
        M.extraction_strength([])


def test_rouge_l_recall_by_hand():
    got = M.rouge_l_recall(["the cat sat", "cats running", ""],
                           ["the cat sat on the mat", "cat run", "a b"])
    assert got[0] == pytest.approx(0.5)   # LCS 3 of 6 reference tokens
    assert got[1] == pytest.approx(1.0)   # stemming: cats -> cat, running -> run
    assert got[2] == 0.0
    with pytest.raises(ValueError, match="predictions"):
        M.rouge_l_recall(["a"], ["a", "b"])


# ------------------------------------------------------------------ model-level scoring


def _bigram_table(seed=0, v=7):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(v, v, generator=g, dtype=torch.float64) * 2


def _hand_scores(table, prompt, answer):
    logp = torch.log_softmax(table, dim=-1)
    seq = prompt + answer
    nll, correct = [], []
    for t in range(len(prompt), len(seq)):
        prev, tok = seq[t - 1], seq[t]
        nll.append(-float(logp[prev, tok]))
        correct.append(int(table[prev].argmax()) == tok)
    return sum(nll) / len(nll), correct


def test_score_answers_matches_hand_computation_batched_and_in_order():
    table = _bigram_table()
    model = BigramLM(table.float())
    pairs = [([1, 2], [3, 4, 0]), ([5], [6]), ([1, 2, 3, 4, 5], [2, 2, 0]), ([6, 6], [1, 0])]
    for batch_size in (1, 3, 8):
        got = M.score_answers(model, pairs, pad_token_id=0, batch_size=batch_size,
                              progress=False)
        for (p, a), s in zip(pairs, got):
            nll, correct = _hand_scores(table, p, a)
            assert s.avg_nll == pytest.approx(nll, rel=1e-5)
            assert s.n_tokens == len(a)
            assert list(s.correct) == correct
            assert s.probability == pytest.approx(math.exp(-nll), rel=1e-5)


def test_score_answers_rejects_bad_input():
    model = UnigramLM([0.5, 0.5])
    with pytest.raises(ValueError, match="non-empty prompt"):
        M.score_answers(model, [([], [1])], pad_token_id=0, progress=False)
    with pytest.raises(ValueError, match="non-empty answer"):
        M.score_answers(model, [([1], [])], pad_token_id=0, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        M.score_answers(model, [([1], [1])], pad_token_id=0, batch_size=0, progress=False)


def _greedy(table, prefix, n):
    seq = list(prefix)
    for _ in range(n):
        seq.append(int(table[seq[-1]].argmax()))
    return seq[len(prefix):]


@given(st.integers(0, 2**16), st.lists(st.integers(0, 4), max_size=5), st.integers(0, 5))
def test_extraction_strength_equals_greedy_definition(seed, head, tail):
    # ES from teacher forcing == 1 - min{k : greedy decoding from prompt + y[:k] gives y[k:]}.
    # The table is peaked on i -> i + 1 (mod 5), and the answer ends with ``tail`` tokens
    # that mostly follow that chain, so every k from 0 to n occurs.
    table = (_bigram_table(seed, v=5) + 6 * torch.eye(5).roll(1, dims=1)).float()
    prompt = [seed % 5]
    answer = list(head)
    for _ in range(tail):
        answer.append(((answer or prompt)[-1] + 1) % 5)
    if not answer:
        answer = [0]
    s = M.score_answers(BigramLM(table), [(prompt, answer)], pad_token_id=0,
                        progress=False)[0]
    n = len(answer)
    k = next(k for k in range(n + 1)
             if _greedy(table, prompt + answer[:k], n - k) == answer[k:])
    assert s.extraction_strength == pytest.approx(1 - k / n)
    assert s.extraction_strength <= s.exact_memorisation


# ------------------------------------------------ truth ratio from known probabilities


WORDS = ["q", "a", "b", "c"]  # ids 2..5


def _unigram_setup():
    # P(EOS)=0.1, P(BOS)=0.1, P(q)=0.1, P(a)=0.4, P(b)=0.2, P(c)=0.1  (ids 0..5)
    probs = [0.1, 0.1, 0.1, 0.4, 0.2, 0.1]
    return UnigramLM(probs), PromptEncoder(WordTokenizer(WORDS), format_prompt=lambda q: q), probs


def _p(probs, words):
    """Normalised probability of ``words`` + EOS under the unigram model."""
    ids = [WORDS.index(w) + 2 for w in words.split()] + [0]
    return math.exp(sum(math.log(probs[i]) for i in ids) / len(ids))


def test_truth_ratio_and_probability_of_known_model_forget_and_retain():
    model, enc, probs = _unigram_setup()
    recs = [{"question": "q", "answer": "a a", "paraphrased_answer": "a",
             "perturbed_answer": ["b", "c c", "b c"]},
            {"question": "q q", "answer": "c", "paraphrased_answer": "c",
             "perturbed_answer": ["a"]}]
    ratios = []
    for r in recs:
        pert = [_p(probs, x) for x in r["perturbed_answer"]]
        geo = math.exp(sum(math.log(x) for x in pert) / len(pert))
        ratios.append(geo / _p(probs, r["paraphrased_answer"]))
    for split, score in (("forget", sum(min(x, 1 / x) for x in ratios) / 2),
                         ("retain", sum(max(0.0, 1 - x) for x in ratios) / 2)):
        out = evaluate_split(model, enc, recs, split, batch_size=2, generate=False,
                             progress=False)
        assert out["truth_ratios"] == pytest.approx(ratios, rel=1e-5)
        assert out["metrics"]["truth_ratio"] == pytest.approx(score, rel=1e-5)
        assert out["metrics"]["probability"] == pytest.approx(
            (_p(probs, "a a") + _p(probs, "c")) / 2, rel=1e-5)
        assert "rouge_l_recall" not in out["metrics"]
    # Greedy prediction is always "a" (id 3): "a a" + EOS has 2 of 3 right, the last wrong.
    q0 = out["per_question"][0]
    assert "exact_memorisation" not in q0  # retain: memorisation is a forget-set metric
    forget = evaluate_split(model, enc, recs, "forget", generate=False, progress=False)
    assert forget["per_question"][0]["exact_memorisation"] == pytest.approx(2 / 3)
    assert forget["per_question"][0]["extraction_strength"] == 0.0
    assert forget["metrics"]["exact_memorisation"] == pytest.approx((2 / 3 + 0) / 2)


def test_option_probability_and_truth_ratio_of_known_model_real_authors():
    model, enc, probs = _unigram_setup()
    recs = [{"question": "q", "answer": "a", "perturbed_answer": ["b", "c", "b b"]}]
    pc, pw = _p(probs, "a"), [_p(probs, x) for x in ("b", "c", "b b")]
    out = evaluate_split(model, enc, recs, "real_authors", generate=False, progress=False)
    assert out["metrics"]["probability"] == pytest.approx(pc / (pc + sum(pw)), rel=1e-5)
    ratio = math.exp(sum(math.log(x) for x in pw) / 3) / pc   # base = the original answer
    assert out["truth_ratios"] == pytest.approx([ratio], rel=1e-5)
    assert out["metrics"]["truth_ratio"] == pytest.approx(max(0.0, 1 - ratio), rel=1e-5)
