"""MUSE evaluation: Min-K%, AUC, PrivLeak and utility math against direct computations, the
model scoring against unbatched forwards, and ``palu-eval --benchmark muse`` end to end on a
tiny Llama with four items per set.

Uses ../shared/data/muse_news (the model tests skip when absent) and palu_kernels.tiny.
"""

from __future__ import annotations

import itertools
import json
import os
import random

import pytest
import torch

from helpers import MUSE_ABSENT
from palu_kernels.cli.eval import main
from palu_kernels.eval.metrics import rouge_l_f1
from palu_kernels.eval.muse import (MUSE_FILES, auc_score, knowmem_prompt, load_muse,
                                    min_k_score, min_k_scores, passage_log_probs, priv_leak,
                                    retain_model_auc, truncate_answer, utility_preservation)

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


def _auc_pairs(pos, neg):
    """The definition: over all (member, non-member) pairs, 1 if the member scores higher,
    1/2 on a tie."""
    total = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return total / (len(pos) * len(neg))


def test_auc_matches_pairwise_definition():
    rng = random.Random(0)
    for trial in range(30):
        n, m = rng.randint(1, 12), rng.randint(1, 12)
        # few distinct values, so ties between and within the groups are common
        pos = [float(rng.randint(0, 5)) for _ in range(n)]
        neg = [float(rng.randint(0, 5)) for _ in range(m)]
        assert auc_score(pos, neg) == pytest.approx(_auc_pairs(pos, neg), abs=1e-12)
    assert auc_score([2.0, 3.0], [0.0, 1.0]) == 1.0
    assert auc_score([0.0, 1.0], [2.0, 3.0]) == 0.0
    assert auc_score([1.0] * 3, [1.0] * 5) == 0.5
    with pytest.raises(ValueError, match="non-empty"):
        auc_score([], [1.0])


def test_privleak_and_utility():
    assert priv_leak(0.5, 0.5) == 0.0
    assert priv_leak(0.9, 0.6) == pytest.approx((0.9 - 0.6) / 0.6 * 100)
    assert priv_leak(0.3, 0.6) < 0  # over-unlearned: forget looks less familiar than holdout
    assert utility_preservation(0.2, 0.4) == pytest.approx(50.0)
    with pytest.raises(ValueError):
        priv_leak(0.5, 0.0)
    with pytest.raises(ValueError):
        utility_preservation(0.2, 0.0)


def _lcs(a, b):
    t = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            t[i + 1][j + 1] = t[i][j] + 1 if x == y else max(t[i][j + 1], t[i + 1][j])
    return t[-1][-1]


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
    target.write_text(json.dumps({"config": {"benchmark": "muse", "max_samples": 4},
                                  "metrics": {"knowmem_retain": 0.5}}))
    out = tmp_path / "eval"
    rc = main(["--benchmark", "muse", "--model", path, "--data-dir", DATA, "--max-samples", "4",
               "--max-new-tokens", "8", "--retain-model", retain, "--target-result",
               str(target), "--output-dir", str(out), "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    for label in ("VerbMem on forget", "KnowMem on forget", "KnowMem on retain",
                  "PrivLeak (%)", "Utility preservation"):
        line = next(ln for ln in printed.splitlines() if label in ln)
        assert "n/a" not in line, line
    result = json.loads((out / "eval.json").read_text())
    assert (out / "eval.md").read_text() in printed
    m = result["metrics"]
    for key in ("verbmem_forget", "knowmem_forget", "knowmem_retain", "privleak_auc"):
        assert 0.0 <= m[key] <= 1.0, (key, m[key])
    assert result["config"]["n"] == {"verbmem": 4, "knowmem_forget": 4, "knowmem_retain": 4,
                                     "privleak_forget": 4, "privleak_holdout": 4}
    # the AUC is the one of the stored Min-K% scores, PrivLeak is relative to the retain
    # model's AUC computed directly, utility is relative to the saved target KnowMem
    assert m["privleak_auc"] == pytest.approx(auc_score(result["min_k"]["forget"],
                                                        result["min_k"]["holdout"]))
    r_model, r_tok, _ = models["retain"]
    auc_r = retain_model_auc(r_model, r_tok, DATA, max_samples=4, progress=False)
    assert m["retain_auc"] == pytest.approx(auc_r, abs=1e-9)
    assert m["privleak"] == pytest.approx((m["privleak_auc"] - auc_r) / auc_r * 100)
    assert m["utility_preservation"] == pytest.approx(m["knowmem_retain"] / 0.5 * 100)
    # each stored per-item score is the ROUGE-L F1 of the stored output
    for item in result["per_item"]["verbmem"]:
        assert item["rouge_l_f1"] == pytest.approx(rouge_l_f1([item["output"]], [item["gt"]])[0])

    # a saved result as the retrained model's reference gives the same PrivLeak
    rc = main(["--benchmark", "muse", "--model", path, "--data-dir", DATA, "--max-samples", "4",
               "--max-new-tokens", "8", "--retain-result", str(out / "eval.json"),
               "--output-dir", str(tmp_path / "self"), "--no-progress"])
    assert rc == 0
    again = json.loads((tmp_path / "self" / "eval.json").read_text())["metrics"]
    assert again["privleak"] == 0.0 and again["utility_preservation"] is None


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
    saved = tmp_path / "r.json"
    saved.write_text(json.dumps({"config": {"benchmark": "muse", "max_samples": 2},
                                 "metrics": {"privleak_auc": 0.5}}))
    rc = main(base + ["--benchmark", "muse", "--data-dir", DATA, "--max-samples", "4",
                      "--retain-result", str(saved)])
    err = capsys.readouterr().err
    assert rc == 2 and "--retain-result" in err and "max_samples 2" in err
    saved.write_text(json.dumps({"config": {"forget_split": "forget01"}, "metrics": {}}))
    rc = main(base + ["--benchmark", "muse", "--data-dir", DATA, "--retain-result", str(saved)])
    assert rc == 2 and "not the eval.json of a MUSE" in capsys.readouterr().err
