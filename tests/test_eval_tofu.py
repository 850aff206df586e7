"""TOFU loading, batched generation and the palu-eval CLI end to end on a tiny Llama.

Uses ../shared/data/tofu (skipped when absent) and palu_kernels.tiny (a locally trained
tokenizer, a seeded random model); two questions per split keep the whole file quick.
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from palu_kernels.eval import metrics as M
from palu_kernels.cli.eval import main
from palu_kernels.eval.tofu import (EVAL_SPLITS, UTILITY_KEYS, PromptEncoder, evaluate_model,
                                    load_split)

from helpers import TOFU as DATA  # noqa: E402
from helpers import needs_tofu as needs_data  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from palu_kernels.tiny import build_tiny_llama, build_tokenizer, tofu_texts

    texts = tofu_texts(os.path.join(DATA, "forget01.json")) if os.path.isdir(DATA) else []
    tok = build_tokenizer(texts + ["Question: Who? Answer: Paris, William Shakespeare."] * 4,
                          vocab_size=300)
    model = build_tiny_llama(tok, hidden_size=32, num_layers=1, num_heads=2)
    path = str(tmp_path_factory.mktemp("tiny") / "model")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model, tok, path


def _write_lines(path, records):
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


# ------------------------------------------------------------------------------ loading


@needs_data
def test_load_real_splits():
    forget = load_split(DATA, "forget", "forget01")
    assert len(forget) == 40
    assert all(len(r["perturbed_answer"]) == 5 and r["paraphrased_answer"] for r in forget)
    ra = load_split(DATA, "real_authors", max_samples=3)
    assert len(ra) == 3 and all(len(r["perturbed_answer"]) == 3 for r in ra)


def test_load_errors(tmp_path):
    with pytest.raises(ValueError, match="forget_split"):
        load_split(str(tmp_path), "forget", "forget02")
    with pytest.raises(FileNotFoundError, match="data_dir"):
        load_split(str(tmp_path / "nope"), "forget", "forget01")
    with pytest.raises(FileNotFoundError, match="retain_perturbed.json"):
        load_split(str(tmp_path), "retain")
    _write_lines(tmp_path / "retain_perturbed.json",
                 [{"question": "q", "answer": "a", "perturbed_answer": ["b"]}])
    with pytest.raises(ValueError, match="record 0.*paraphrased_answer"):
        load_split(str(tmp_path), "retain")
    _write_lines(tmp_path / "world_facts_perturbed.json",
                 [{"question": "q", "answer": "a", "perturbed_answer": []}])
    with pytest.raises(ValueError, match="perturbed_answer"):
        load_split(str(tmp_path), "world_facts")
    (tmp_path / "real_authors_perturbed.json").write_text('{"question": "q"}\n{oops\n')
    with pytest.raises(ValueError, match="real_authors_perturbed.json:2"):
        load_split(str(tmp_path), "real_authors")
    with pytest.raises(ValueError, match="max_samples"):
        load_split(str(tmp_path), "real_authors", max_samples=0)


# ------------------------------------------------------------------- tiny-model checks


def test_probability_matches_hf_loss(tiny):
    # exp(-avg NLL over answer + EOS) equals exp(-loss) of the model's own loss with the
    # prompt labelled -100: the metric and the trainer see the same tokens.
    model, tok, _ = tiny
    enc = PromptEncoder(tok)
    qa = [("Who wrote it?", "Basil Mahfouz Al-Kuwaiti wrote it."), ("Where?", "Paris")]
    pairs = [enc.pair(q, a) for q, a in qa]
    scores = M.score_answers(model, pairs, pad_token_id=enc.pad_token_id, batch_size=2,
                             progress=False)
    for (p, a), s in zip(pairs, scores):
        ids = torch.tensor([p + a])
        labels = torch.tensor([[-100] * len(p) + a])
        with torch.no_grad():
            loss = float(model(input_ids=ids, labels=labels).loss)
        assert s.avg_nll == pytest.approx(loss, rel=1e-4)
        assert a[-1] == tok.eos_token_id


def test_prompt_encoding_matches_trainer(tiny):
    from palu_kernels.io.data import encode_record
    from palu_kernels.io.records import QARecord

    _, tok, _ = tiny
    enc = PromptEncoder(tok)
    q, a = "What gender is author Basil?", "Author Basil is male."
    item = encode_record(tok, QARecord(question=q, answer=a))
    p_ids, a_ids = enc.pair(q, a)
    assert item["input_ids"].tolist() == p_ids + a_ids
    assert (item["labels"] != -100).sum() == len(a_ids)


def test_left_padded_batched_generation_equals_one_by_one(tiny):
    model, tok, _ = tiny
    enc = PromptEncoder(tok)
    prompts = [enc.prompt_ids(q) for q in
               ("Who?", "What is the full name of the author born in Kuwait City?", "Why not")]
    kw = dict(pad_token_id=enc.pad_token_id, eos_token_id=enc.eos_token_id, max_new_tokens=6,
              progress=False)
    batched = M.generate_greedy(model, prompts, batch_size=3, **kw)
    single = [M.generate_greedy(model, [p], batch_size=1, **kw)[0] for p in prompts]
    assert batched == single
    assert all(0 < len(g) <= 6 and enc.eos_token_id not in g for g in batched)


# ------------------------------------------------------------------------ end to end


@needs_data
def test_evaluate_model_and_cli_end_to_end(tiny, tmp_path, capsys):
    model, tok, path = tiny
    out = tmp_path / "out"
    args = ["--model", path, "--data-dir", DATA, "--forget-split", "forget01",
            "--max-samples", "2", "--batch-size", "4", "--max-new-tokens", "4",
            "--output-dir", str(out), "--device", "cpu", "--no-progress"]
    assert main(args + ["--retain-model", path]) == 0
    printed = capsys.readouterr().out
    for label in ("Forget Quality", "Model Utility", "exact memorisation",
                  "extraction strength", "ROUGE-L recall", "truth ratio", *EVAL_SPLITS):
        assert label in printed
    res = json.loads((out / "eval.json").read_text())
    assert (out / "eval.md").read_text() in printed
    m = res["metrics"]
    assert m["forget_quality"] == 1.0  # the retain model is the model itself
    assert list(m["model_utility_components"]) == list(UTILITY_KEYS)
    assert m["model_utility"] == pytest.approx(
        M.model_utility(list(m["model_utility_components"].values())))
    for s in EVAL_SPLITS:
        assert len(res["per_question"][s]) == 2 == m[s]["n"]
        for key in ("probability", "rouge_l_recall", "truth_ratio"):
            assert 0.0 <= m[s][key] <= 1.0
    q0 = res["per_question"]["forget"][0]
    assert q0["truth_ratio"] == pytest.approx(
        math.exp(sum(math.log(p) for p in q0["perturbed_probabilities"]) / 5)
        / q0["base_probability"])
    assert res["forget_truth_ratios"] == res["retain_forget_truth_ratios"]

    # The Python API gives the same numbers as the CLI.
    api = evaluate_model(model, tok, DATA, "forget01", max_samples=2, batch_size=2,
                         max_new_tokens=4, progress=False,
                         retain_truth_ratios=res["forget_truth_ratios"])
    assert api["metrics"]["model_utility"] == pytest.approx(m["model_utility"], rel=1e-5)
    assert api["forget_truth_ratios"] == pytest.approx(res["forget_truth_ratios"], rel=1e-5)

    # --retain-result reads the saved truth ratios; a different forget split is refused.
    out2 = tmp_path / "out2"
    args2 = [a if a != str(out) else str(out2) for a in args]
    assert main(args2 + ["--retain-result", str(out / "eval.json")]) == 0
    assert json.loads((out2 / "eval.json").read_text())["metrics"]["forget_quality"] == 1.0
    bad = [a if a != "forget01" else "forget05" for a in args2]
    assert main(bad + ["--retain-result", str(out / "eval.json")]) == 2
    assert "forget01" in capsys.readouterr().err


def test_cli_errors(tiny, tmp_path, capsys):
    _, _, path = tiny
    with pytest.raises(SystemExit):
        main(["--model", path, "--data-dir", str(tmp_path)])
    assert "missing TOFU file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--model", path, "--data-dir", str(tmp_path / "nope")])
    assert "not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--model", path, "--forget-split", "forget02"])
    with pytest.raises(SystemExit):
        main(["--model", path, "--batch-size", "0"])
    if os.path.isdir(DATA):
        assert main(["--model", str(tmp_path / "nomodel"), "--data-dir", DATA]) == 2
        assert "model directory not found" in capsys.readouterr().err


CHAT = ("{% for m in messages %}<|bos|>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}")


def test_chat_template_prompt_matches_trainer():
    from palu_kernels.tiny import build_tokenizer
    from palu_kernels.io.data import encode_record
    from palu_kernels.io.records import QARecord

    tok = build_tokenizer(["user: Who wrote it?\nassistant: Basil wrote it."] * 8,
                          vocab_size=300, chat_template=CHAT)
    enc = PromptEncoder(tok)
    assert enc.prompt_format == "chat template"
    q, a = "Who wrote it?", "Basil wrote it."
    p_ids, a_ids = enc.pair(q, a)
    assert tok.decode(p_ids) == "<|bos|>user: Who wrote it?\nassistant:"
    assert encode_record(tok, QARecord(question=q, answer=a))["input_ids"].tolist() == \
        p_ids + a_ids
    # An explicit format_prompt replaces both the chat and the plain template.
    custom = PromptEncoder(tok, format_prompt=lambda s: f"Q: {s} A:")
    assert tok.decode(custom.prompt_ids(q)) == "<|bos|>Q: Who wrote it? A:"
