"""MUSE evaluation: Min-K%, AUC, PrivLeak, utility and VerbMem's reference against a direct
transcription of MUSE's formulas (muse_bench) and against direct computations, the
model scoring against unbatched forwards, and ``palu-eval --benchmark muse`` end to end on a
tiny Llama with four items per set.

Uses ../shared/data/muse_news (the model tests skip when absent) and palu_kernels.tiny.
"""

from __future__ import annotations

import json
import os
import random

import pytest
import torch

from helpers import MUSE_ABSENT
from palu_kernels.cli.eval import main
from palu_kernels.eval.metrics import rouge_l_f1
from palu_kernels.eval.table import format_number
from palu_kernels.eval.muse import (auc_score, knowmem_prompt, knowmem_retain_vs_target,
                                    min_k_score, min_k_scores, passage_log_probs, priv_leak,
                                    privleak_scores, retain_model_auc, truncate_answer,
                                    verbmem_reference)
from palu_kernels.eval.muse_files import MUSE_FILES, load_muse

pytestmark = pytest.mark.usefixtures("one_thread")

DATA = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                                     "muse_news"))
needs_data = pytest.mark.skipif(not os.path.isdir(DATA), reason=MUSE_ABSENT)


# ---------------------------------------------------------------------------- pure math


def test_min_k_by_hand():
    # 10 log-probs; 40% -> the 4 lowest: -9, -7, -5, -4
    lps = [-1.0, -9.0, -0.5, -4.0, -2.0, -7.0, -3.0, -0.1, -5.0, -2.5]
    assert min_k_score(lps) == pytest.approx((-9 - 7 - 5 - 4) / 4)
    # floor: 4 tokens -> int(1.6) = 1 token; fewer than 3 tokens still score one
    assert min_k_score([-1.0, -2.0, -3.0, -4.0]) == -4.0
    assert min_k_score([-0.7]) == -0.7
    assert min_k_score([-1.0, -3.0], fraction=1.0) == -2.0
    with pytest.raises(ValueError, match="log_probs"):
        min_k_score([])
    with pytest.raises(ValueError, match="fraction"):
        min_k_score([-1.0], fraction=0.0)


# --------------------------------------------- MUSE's formulas, transcribed (muse_bench)
#
# privleak: per passage ``Min-40% = -mean(sorted(log_probs)[:int(len * 0.4)])``; for the
# ``forget_holdout`` AUC, ``ppl = forget + holdout`` scores, ``y = [0] * len(forget) +
# [1] * len(holdout)``, ``roc_curve(y, -ppl)`` then the trapezoidal ``auc(fpr, tpr)``;
# ``privleak = (auc - auc_retrain) / auc_retrain * 100``. knowmem: utility = mean ROUGE-L F1
# on retain (``* 100`` in MUSE's table). verbmem: ``gt_ids = tokenizer(gt,
# add_special_tokens=True).input_ids[:, :max_new_tokens]`` decoded without special tokens.


def _muse_min_k(log_probs, ratio=0.4):
    k_length = int(len(log_probs) * ratio)
    top = sorted(log_probs)[:k_length]
    return -(sum(top) / len(top))


def _muse_roc_auc(y, score):
    """sklearn's roc_curve + auc: thresholds at the distinct scores from high to low, one ROC
    point per threshold (ties move together), trapezoids between the points."""
    pos = sum(y)
    neg = len(y) - pos
    points = [(0.0, 0.0)]
    for t in sorted(set(score), reverse=True):
        tp = sum(1 for yi, si in zip(y, score) if si >= t and yi == 1)
        fp = sum(1 for yi, si in zip(y, score) if si >= t and yi == 0)
        points.append((fp / neg, tp / pos))
    return sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in zip(points, points[1:]))


def _muse_forget_holdout_auc(forget_log_probs, holdout_log_probs):
    ppl_nonmember = [_muse_min_k(lp) for lp in forget_log_probs]   # split0 = forget
    ppl_member = [_muse_min_k(lp) for lp in holdout_log_probs]     # split1 = holdout
    ppl = ppl_nonmember + ppl_member
    y = [0] * len(ppl_nonmember) + [1] * len(ppl_member)
    return _muse_roc_auc(y, [-p for p in ppl])


def _muse_privleak(auc, auc_retrain):
    return (auc - auc_retrain) / auc_retrain * 100


def _ours_auc(forget_log_probs, holdout_log_probs):
    return auc_score([min_k_score(lp) for lp in forget_log_probs],
                     [min_k_score(lp) for lp in holdout_log_probs])


def _random_log_probs(rng, n, lo, hi):
    # few distinct values (ties across and within the sets), passages of 3..30 tokens
    return [[-float(rng.randint(lo, hi)) / 2 for _ in range(rng.randint(3, 30))]
            for _ in range(n)]


def test_auc_and_privleak_match_muse_transcription():
    rng = random.Random(0)
    for trial in range(40):
        f = _random_log_probs(rng, rng.randint(1, 10), 0, 8)
        h = _random_log_probs(rng, rng.randint(1, 10), 0, 8)
        r_f = _random_log_probs(rng, rng.randint(1, 10), 0, 8)
        r_h = _random_log_probs(rng, rng.randint(1, 10), 0, 8)
        auc_u, auc_r = _ours_auc(f, h), _ours_auc(r_f, r_h)
        assert auc_u == pytest.approx(_muse_forget_holdout_auc(f, h), abs=1e-12)
        assert auc_r == pytest.approx(_muse_forget_holdout_auc(r_f, r_h), abs=1e-12)
        if auc_r > 0:
            assert priv_leak(auc_u, auc_r) == pytest.approx(
                _muse_privleak(_muse_forget_holdout_auc(f, h),
                               _muse_forget_holdout_auc(r_f, r_h)), abs=1e-9)


def test_memorised_model_reads_minus_100():
    rng = random.Random(1)
    # retrained model: forget and holdout passages alike (never saw either) -> AUC near 0.5
    retrained_f = [[-rng.uniform(0.5, 9.0) for _ in range(40)] for _ in range(30)]
    retrained_h = [[-rng.uniform(0.5, 9.0) for _ in range(40)] for _ in range(30)]
    # the target memorised the forget passages: even their hardest tokens are likely
    target_f = [[-rng.uniform(0.0, 0.3) for _ in range(40)] for _ in range(30)]
    target_h = retrained_h
    auc_r = _ours_auc(retrained_f, retrained_h)
    auc_t = _ours_auc(target_f, target_h)
    assert 0.3 < auc_r < 0.7 and auc_t == 0.0
    assert _muse_forget_holdout_auc(target_f, target_h) == 0.0
    assert priv_leak(auc_t, auc_r) == pytest.approx(-100.0)
    # half memorised (half the forget passages still likely): between -100 and 0
    half = target_f[:15] + retrained_f[15:]
    assert -100 < priv_leak(_ours_auc(half, target_h), auc_r) < 0
    # over-unlearned: forget passages now *less* likely than holdout ones -> positive
    over = [[-rng.uniform(9.0, 12.0) for _ in range(40)] for _ in range(30)]
    assert priv_leak(_ours_auc(over, target_h), auc_r) > 0
    # the old (inverted) convention would have read the memorised model as positive
    assert _ours_auc(target_h, target_f) == 1.0


def test_auc_limits_and_errors():
    assert auc_score([0.0, 1.0], [2.0, 3.0]) == 1.0  # holdout likelier: forget "unlearned"
    assert auc_score([2.0, 3.0], [0.0, 1.0]) == 0.0  # forget likelier: memorised
    assert auc_score([1.0] * 3, [1.0] * 5) == 0.5
    with pytest.raises(ValueError, match="non-empty"):
        auc_score([], [1.0])


def test_privleak_and_ratio_to_target():
    assert priv_leak(0.5, 0.5) == 0.0
    assert priv_leak(0.0, 0.5) == -100.0
    assert priv_leak(0.9, 0.6) == pytest.approx((0.9 - 0.6) / 0.6 * 100)
    assert knowmem_retain_vs_target(0.2, 0.4) == pytest.approx(50.0)
    with pytest.raises(ValueError, match="auc_retrain"):
        priv_leak(0.5, 0.0)
    with pytest.raises(ValueError, match="knowmem_retain_target"):
        knowmem_retain_vs_target(0.2, 0.0)


def test_verbmem_reference_is_cut_with_bos():
    from palu_kernels.tiny import build_tokenizer

    text = "the cat sat on the mat and then the dog sat on the cat"
    tok = build_tokenizer([text] * 4, vocab_size=300)
    ids = tok(text, add_special_tokens=True)["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) > 6
    for n in (1, 2, 5, len(ids), len(ids) + 3):
        # MUSE: tokenizer(gt, add_special_tokens=True).input_ids[:, :n], decoded without them
        want = tok.decode(ids[:n], skip_special_tokens=True)
        assert verbmem_reference(tok, text, n) == want
    # BOS counts: n tokens keep n - 1 tokens of text
    assert verbmem_reference(tok, text, 5) == tok.decode(
        tok(text, add_special_tokens=False)["input_ids"][:4], skip_special_tokens=True)
    assert verbmem_reference(tok, text, 1) == ""


def _lcs(a, b):
    t = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            t[i + 1][j + 1] = t[i][j] + 1 if x == y else max(t[i][j + 1], t[i + 1][j])
    return t[-1][-1]


FORGET_TEXTS = ["Greek Prime Minister Kyriakos Mitsotakis asked for forgiveness after the crash.",
                "The station master at Larissa was charged over the collision of two trains.",
                "Thousands marched through Athens on Sunday to protest against rail safety.",
                "Investigators said the signalling system had not worked for several years.",
                "The freight train and the passenger train were on the same track for minutes.",
                "Fifty-seven people died in the crash near the Tempi valley in March 2023."]
HOLDOUT_TEXTS = ["A storm closed schools across the north of Scotland on Tuesday morning.",
                 "The bank raised interest rates for the ninth time in a row this year.",
                 "Scientists found a new species of frog in the rainforest of Ecuador.",
                 "The museum reopened its doors after a long renovation of the east wing.",
                 "Farmers warned that the dry summer would cut the wheat harvest sharply.",
                 "The football club appointed a new manager after a run of poor results."]


class _Bigram(torch.nn.Module):
    """A model that memorised ``texts``: the next token after each token of them gets a large
    logit (a bigram table); every other continuation stays at 0."""

    def __init__(self, tokenizer, texts, memorised=True):
        super().__init__()
        v = len(tokenizer)
        self.table = torch.nn.Parameter(torch.zeros(v, v), requires_grad=False)
        if memorised:
            for t in texts:
                ids = tokenizer(t)["input_ids"]
                for a, b in zip(ids, ids[1:]):
                    self.table.data[a, b] = 12.0

    def forward(self, input_ids, attention_mask=None):
        return (self.table[input_ids],)


def test_memorising_model_reads_minus_100_end_to_end():
    """Min-K% scores of real token sequences: a model that memorised the forget texts (bigram
    table) against one that saw neither set (uniform: every score ties, AUC 0.5)."""
    from palu_kernels.eval.muse_files import MuseData
    from palu_kernels.tiny import build_tokenizer

    tok = build_tokenizer(FORGET_TEXTS + HOLDOUT_TEXTS, vocab_size=400)
    data = MuseData([], [], [], [], [], FORGET_TEXTS, HOLDOUT_TEXTS)
    retrained = privleak_scores(_Bigram(tok, FORGET_TEXTS, memorised=False), tok, data,
                                progress=False)
    target = privleak_scores(_Bigram(tok, FORGET_TEXTS), tok, data, progress=False)
    assert retrained["auc"] == 0.5
    assert target["auc"] == 0.0  # every forget passage likelier than every holdout passage
    assert priv_leak(target["auc"], retrained["auc"]) == -100.0
    # MUSE's transcription on the very log-probabilities gives the same
    def lp(m, texts):
        return passage_log_probs(m, [tok(t)["input_ids"] for t in texts],
                                 pad_token_id=tok.pad_token_id, progress=False)

    m_t, m_r = _Bigram(tok, FORGET_TEXTS), _Bigram(tok, FORGET_TEXTS, memorised=False)
    muse = _muse_privleak(_muse_forget_holdout_auc(lp(m_t, FORGET_TEXTS), lp(m_t, HOLDOUT_TEXTS)),
                          _muse_forget_holdout_auc(lp(m_r, FORGET_TEXTS), lp(m_r, HOLDOUT_TEXTS)))
    assert muse == pytest.approx(-100.0)
    # a model that memorised the *holdout* texts instead reads as over-unlearned (positive)
    other = privleak_scores(_Bigram(tok, HOLDOUT_TEXTS), tok, data, progress=False)
    assert priv_leak(other["auc"], retrained["auc"]) == 100.0


def test_rouge_l_f1_is_lcs_f_measure():
    pairs = [("the cat sat on the mat", "the cat is on a mat"),
             ("1472", "1472"), ("in 1472 it was", "1472"), ("nothing here", "1472"),
             ("running dogs", "run dog")]  # no stemming: no match
    for pred, ref in pairs:
        p, r = pred.split(), ref.split()
        lcs = _lcs(p, r)
        want = 0.0 if lcs == 0 else 2 * (lcs / len(p)) * (lcs / len(r)) / (
            lcs / len(p) + lcs / len(r))
        assert rouge_l_f1([pred], [ref])[0] == pytest.approx(want)


def test_prompt_and_answer_cut():
    icl = [{"question": "Q1?", "answer": "A1"}, {"question": "Q2?", "answer": "A2"}]
    assert knowmem_prompt("Q?", icl) == ("Question: Q1?\nAnswer: A1\n\nQuestion: Q2?\nAnswer: "
                                         "A2\n\nQuestion: Q?\nAnswer: ")
    assert truncate_answer("1472\n\nQuestion: x") == "1472"
    assert truncate_answer("10%\nQuestion: x") == "10%"
    assert truncate_answer("a b Question: c") == "a b "
    assert truncate_answer("plain") == "plain"


# ------------------------------------------------------------------------ model scoring


def _tiny(path, seed):
    from palu_kernels.tiny import build_tiny_llama, build_tokenizer

    texts = []
    for rel in ("knowmem/forget_qa.json", "knowmem/retain2_qa.json"):
        with open(os.path.join(DATA, rel), encoding="utf-8") as f:
            for r in json.load(f)[:20]:
                texts += [r["question"], r["answer"]]
    with open(os.path.join(DATA, "privleak/forget.json"), encoding="utf-8") as f:
        texts += [p[:1500] for p in json.load(f)[:8]]
    tok = build_tokenizer(texts, vocab_size=300)
    model = build_tiny_llama(tok, hidden_size=32, num_layers=1, num_heads=2, seed=seed)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model, tok


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    if not os.path.isdir(DATA):
        pytest.skip(MUSE_ABSENT)
    root = tmp_path_factory.mktemp("muse")
    out = {}
    for name, seed in (("model", 0), ("retain", 1)):
        path = str(root / name)
        model, tok = _tiny(path, seed)
        out[name] = (model, tok, path)
    return out


@needs_data
def test_passage_log_probs_match_unbatched(models):
    model, tok, _ = models["model"]
    seqs = [tok("The Greek Prime Minister said so.")["input_ids"],
            tok("Analysts said")["input_ids"], tok("x y")["input_ids"]]
    got = passage_log_probs(model, seqs, pad_token_id=tok.pad_token_id, batch_size=2,
                            progress=False)
    for s, lp in zip(seqs, got):
        with torch.no_grad():
            logits = model(torch.tensor([s])).logits[0].double()
        want = torch.log_softmax(logits, -1)[torch.arange(len(s) - 1), torch.tensor(s[1:])]
        assert len(lp) == len(s) - 1
        assert torch.allclose(torch.tensor(lp, dtype=torch.float64), want, atol=1e-4)
    scores, n_cut = min_k_scores(model, tok, ["The Greek Prime Minister said so."],
                                 progress=False)
    assert n_cut == 0 and scores[0] == pytest.approx(min_k_score(got[0]), abs=1e-6)


@needs_data
def test_load_muse_and_errors(tmp_path):
    data = load_muse(DATA, max_samples=3)
    assert len(data.verbmem) == 3 and len(data.privleak_holdout) == 3
    assert len(data.knowmem_forget_icl) == 10  # in-context examples are never cut
    for rel in MUSE_FILES.values():
        src = os.path.join(DATA, rel)
        dst = tmp_path / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text(open(src, encoding="utf-8").read(), encoding="utf-8")
    (tmp_path / "knowmem/forget_qa.json").write_text('[{"question": "q"}]', encoding="utf-8")
    with pytest.raises(ValueError, match="forget_qa.json: item 0"):
        load_muse(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="data_dir"):
        load_muse(str(tmp_path / "nope"))


@needs_data
def test_cli_muse_prints_four_metrics(models, tmp_path, capsys):
    _, _, path = models["model"]
    _, _, retain = models["retain"]
    target = tmp_path / "target_eval.json"
    target.write_text(json.dumps({"config": {"benchmark": "muse", "conventions": "muse",
                                             "max_samples": 4},
                                  "metrics": {"knowmem_retain": 0.5}}))
    out = tmp_path / "eval"
    rc = main(["--benchmark", "muse", "--model", path, "--data-dir", DATA, "--max-samples", "4",
               "--verbmem-max-new-tokens", "8", "--knowmem-max-new-tokens", "6",
               "--retain-model", retain, "--target-result",
               str(target), "--output-dir", str(out), "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    for label in ("VerbMem on forget", "KnowMem on forget", "Utility: KnowMem on retain",
                  "Min-40% AUC (forget = 0, holdout = 1)", "PrivLeak (%)",
                  "KnowMem retain / target's (%, not a MUSE metric)"):
        line = next(ln for ln in printed.splitlines() if label in ln)
        assert "n/a" not in line, line
    result = json.loads((out / "eval.json").read_text())
    assert (out / "eval.md").read_text() in printed
    m = result["metrics"]
    for key in ("verbmem_forget", "knowmem_forget", "knowmem_retain", "privleak_auc"):
        assert 0.0 <= m[key] <= 1.0, (key, m[key])
    assert result["config"]["n"] == {"verbmem": 4, "knowmem_forget": 4, "knowmem_retain": 4,
                                     "privleak_forget": 4, "privleak_holdout": 4}
    cfg = result["config"]
    assert (cfg["verbmem_max_new_tokens"], cfg["knowmem_max_new_tokens"]) == (8, 6)
    assert cfg["conventions"] == "muse"
    # utility is MUSE's: the absolute KnowMem on retain, printed as such
    assert m["utility"] == m["knowmem_retain"]
    line = next(ln for ln in printed.splitlines() if "Utility: KnowMem on retain" in ln)
    assert line.split("|")[2].strip() == format_number(m["knowmem_retain"])
    # the VerbMem references are MUSE's cut: 8 tokens with BOS
    tok = models["model"][1]
    data = load_muse(DATA, max_samples=4)
    for item, r in zip(result["per_item"]["verbmem"], data.verbmem):
        assert item["gt"] == tok.decode(tok(r["gt"])["input_ids"][:8], skip_special_tokens=True)
    # the AUC is the one of the stored Min-K% scores, PrivLeak is relative to the retain
    # model's AUC computed directly, utility is relative to the saved target KnowMem
    assert m["privleak_auc"] == pytest.approx(auc_score(result["min_k"]["forget"],
                                                        result["min_k"]["holdout"]))
    assert m["privleak_auc"] == pytest.approx(_muse_roc_auc(
        [0] * 4 + [1] * 4, result["min_k"]["forget"] + result["min_k"]["holdout"]), abs=1e-12)
    r_model, r_tok, _ = models["retain"]
    auc_r = retain_model_auc(r_model, r_tok, DATA, max_samples=4, progress=False)
    assert m["retain_auc"] == pytest.approx(auc_r, abs=1e-9)
    assert m["privleak"] == pytest.approx((m["privleak_auc"] - auc_r) / auc_r * 100)
    assert m["knowmem_retain_vs_target"] == pytest.approx(m["knowmem_retain"] / 0.5 * 100)
    # each stored per-item score is the ROUGE-L F1 of the stored output
    for item in result["per_item"]["verbmem"]:
        assert item["rouge_l_f1"] == pytest.approx(rouge_l_f1([item["output"]], [item["gt"]])[0])

    # a saved result as the retrained model's reference gives the same PrivLeak
    rc = main(["--benchmark", "muse", "--model", path, "--data-dir", DATA, "--max-samples", "4",
               "--verbmem-max-new-tokens", "8", "--knowmem-max-new-tokens", "6",
               "--retain-result", str(out / "eval.json"),
               "--output-dir", str(tmp_path / "self"), "--no-progress"])
    assert rc == 0
    again = json.loads((tmp_path / "self" / "eval.json").read_text())["metrics"]
    assert again["privleak"] == 0.0 and again["knowmem_retain_vs_target"] is None


@needs_data
def test_cli_muse_errors(models, tmp_path, capsys):
    _, _, path = models["model"]
    base = ["--model", path, "--no-progress", "--output-dir", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as e:
        main(base + ["--benchmark", "muse", "--data-dir", DATA, "--forget-split", "forget05"])
    assert e.value.code == 2 and "--forget-split" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(base + ["--benchmark", "muse", "--data-dir", str(tmp_path)])
    assert e.value.code == 2 and "missing MUSE file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(base + ["--data-dir", DATA, "--target-result", "x.json"])
    assert e.value.code == 2 and "--target-result" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # one --max-new-tokens no longer stands for both
        main(base + ["--benchmark", "muse", "--data-dir", DATA, "--max-new-tokens", "8"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--verbmem-max-new-tokens" in err
    with pytest.raises(SystemExit) as e:
        main(base + ["--data-dir", DATA, "--knowmem-max-new-tokens", "8"])
    assert e.value.code == 2 and "applies to --benchmark muse only" in capsys.readouterr().err
    saved = tmp_path / "r.json"
    # a result written in the earlier, inverted convention is refused, not silently reused
    saved.write_text(json.dumps({"config": {"benchmark": "muse", "max_samples": 4},
                                 "metrics": {"privleak_auc": 0.5}}))
    rc = main(base + ["--benchmark", "muse", "--data-dir", DATA, "--max-samples", "4",
                      "--retain-result", str(saved)])
    err = capsys.readouterr().err
    assert rc == 2 and "--retain-result" in err and "before palu-eval used MUSE" in err
    saved.write_text(json.dumps({"config": {"benchmark": "muse", "conventions": "muse",
                                            "max_samples": 2},
                                 "metrics": {"privleak_auc": 0.5}}))
    rc = main(base + ["--benchmark", "muse", "--data-dir", DATA, "--max-samples", "4",
                      "--retain-result", str(saved)])
    err = capsys.readouterr().err
    assert rc == 2 and "--retain-result" in err and "max_samples 2" in err
    saved.write_text(json.dumps({"config": {"forget_split": "forget01"}, "metrics": {}}))
    rc = main(base + ["--benchmark", "muse", "--data-dir", DATA, "--retain-result", str(saved)])
    assert rc == 2 and "not the eval.json of a MUSE" in capsys.readouterr().err
