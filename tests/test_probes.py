"""Probability probes, synonym leakage and beyond-prefix measures
(palu_kernels.experiments.probes) on the synthetic benchmark's extra facts."""

import json
import math

import pytest
import torch

from palu_kernels.demo.synth import generate_benchmark
from palu_kernels.experiments.probes import (probability_change, score_probes,
                                             span_token_offset, synonym_leakage)
from palu_kernels.tiny import build_tiny_llama, build_tokenizer
from palu_kernels.io.data import prompt_ids

pytestmark = pytest.mark.usefixtures("one_thread")

TEMPLATE = ("{{ bos_token }}{% for message in messages %}Question: {{ message['content'] }}\n"
            "Answer: {% endfor %}")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    p = generate_benchmark(tmp_path_factory.mktemp("probes"), n_people=6,
                           questions_per_person=4, forget_fraction=0.5, seed=2,
                           extras=("synonym", "long", "split"))
    texts = [r[k] for line in open(p["full_perturbed"]) for r in [json.loads(line)]
             for k in ("question", "answer", "paraphrased_answer")]
    tok = build_tokenizer(texts, vocab_size=400, chat_template=TEMPLATE)
    model = build_tiny_llama(tok, hidden_size=32, num_layers=1, num_heads=2, seed=0)
    facts = json.loads(p["meta"].read_text())["extras"]["facts"]
    return tok, model, facts


def reference_logprob(model, tok, probe):
    """Token by token, unbatched: the prompt, then the answer's tokens one at a time; sum the
    log-probabilities of the tokens whose first non-space character is in the probe."""
    ids = prompt_ids(tok, probe["question"])
    text = probe["answer"]
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    total, n = 0.0, 0
    for t, (a, b) in zip(enc["input_ids"], enc["offset_mapping"]):
        first = a + len(text[a:b]) - len(text[a:b].lstrip()) if text[a:b].strip() else a
        if probe["start"] <= first < probe["end"]:
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
            total += float(torch.log_softmax(logits.double(), -1)[t])
            n += 1
        ids = ids + [t]
    return total, n


def test_scores_match_a_token_by_token_reference(setup):
    tok, model, facts = setup
    probes = [p for f in facts[:8] for p in f["probes"].values()]
    got = score_probes(model, tok, probes, batch_size=3)  # padding inside batches
    for probe, g in zip(probes, got):
        ref, n = reference_logprob(model, tok, probe)
        assert g["n_tokens"] == n >= 1
        assert g["logprob"] == pytest.approx(ref, abs=1e-4)
        assert g["logprob"] < 0


def test_chain_rule_over_the_parts_of_a_long_span(setup):
    tok, model, facts = setup
    for f in [f for f in facts if f["kind"] == "long"][:3]:
        (span,) = f["target_words"]
        whole = dict(f["probes"]["lead"], start=span["start"], end=span["end"])
        lead, late, all_ = score_probes(model, tok, [f["probes"]["lead"], f["probes"]["late"],
                                                     whole])
        assert lead["logprob"] + late["logprob"] == pytest.approx(all_["logprob"], abs=1e-4)
        # the late part lies past the span's first five tokens
        assert span_token_offset(tok, f["probes"]["late"], span["start"], span["end"]) >= 5
        assert span_token_offset(tok, f["probes"]["lead"], span["start"], span["end"]) == 0


def test_synonym_leakage_against_formulas():
    before = [{"form": math.log(0.5), "alt_form": math.log(0.4)},
              {"form": math.log(0.6), "alt_form": math.log(0.2)}]
    after = [{"form": math.log(0.1), "alt_form": math.log(0.7)},
             {"form": math.log(0.3), "alt_form": math.log(0.1)}]
    m = synonym_leakage(before, after)
    assert m["n_facts"] == 2
    assert m["p_form_before"] == pytest.approx(0.55)
    assert m["p_alt_after"] == pytest.approx(0.4)
    assert m["alt_share_before"] == pytest.approx((0.4 / 0.9 + 0.2 / 0.8) / 2)
    assert m["alt_share_after"] == pytest.approx((0.7 / 0.8 + 0.1 / 0.4) / 2)
    assert m["moved_to_alt"] == pytest.approx((0.3 - 0.1) / 2)
    assert m["alt_kept"] == pytest.approx(0.4 / 0.3)
    same = synonym_leakage(before, before)
    assert same["moved_to_alt"] == 0 and same["alt_kept"] == pytest.approx(1)
    with pytest.raises(ValueError, match="same facts"):
        synonym_leakage(before, after[:1])


def test_probability_change_against_formulas():
    m = probability_change([math.log(0.5), math.log(0.25)], [math.log(0.25), math.log(0.25)])
    assert m["p_before"] == pytest.approx(0.375) and m["p_after"] == pytest.approx(0.25)
    assert m["kept"] == pytest.approx(0.25 / 0.375)
    assert m["logp_drop"] == pytest.approx(math.log(2) / 2) and m["n"] == 2
    with pytest.raises(ValueError, match="same probes"):
        probability_change([0.0], [])


def test_bad_probe(setup):
    tok, model, facts = setup
    probe = dict(facts[0]["probes"]["form"])
    with pytest.raises(ValueError, match="outside"):
        score_probes(model, tok, [dict(probe, end=len(probe["answer"]) + 1)])
    with pytest.raises(ValueError, match="batch_size"):
        score_probes(model, tok, [probe], batch_size=0)
