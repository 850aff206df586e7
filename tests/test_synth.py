"""Synthetic TOFU-layout benchmark (palu_kernels.demo.synth)."""

import json
from pathlib import Path

import pytest

from helpers import TOFU_ABSENT
from palu_kernels.cli.synth import main
from palu_kernels.demo.synth import generate_benchmark
from palu_kernels.demo.synth_templates import NO_INFO_TEMPLATES, TEMPLATES

TOFU = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "tofu"

# Our key -> the real TOFU file with the same layout.
REAL_COUNTERPART = {
    "full": "full.json",
    "forget": "forget01.json",
    "forget_perturbed": "forget01_perturbed.json",
    "forget_spans": "forget01_spans.jsonl",
    "retain": "retain99.json",
    "retain_perturbed": "retain_perturbed.json",
    "real_authors": "real_authors.json",
    "real_authors_perturbed": "real_authors_perturbed.json",
    "world_facts": "world_facts.json",
    "world_facts_perturbed": "world_facts_perturbed.json",
}
# The TOFU field names, in file order (checked against the real files when present).
EXPECTED_KEYS = {
    "full": ["question", "answer"],
    "forget": ["question", "answer"],
    "retain": ["question", "answer"],
    "forget_perturbed": ["question", "answer", "paraphrased_answer", "perturbed_answer",
                         "paraphrased_question"],
    "retain_perturbed": ["question", "answer", "paraphrased_answer", "perturbed_answer",
                         "paraphrased_question"],
    "full_perturbed": ["question", "answer", "paraphrased_answer", "perturbed_answer",
                       "paraphrased_question"],
    "forget_spans": ["question", "answer", "target_words"],
    "real_authors": ["question", "option1", "option2", "option3", "option4", "answer"],
    "world_facts": ["question", "option1", "option2", "option3", "option4", "answer"],
    "real_authors_perturbed": ["question", "answer", "perturbed_answer"],
    "world_facts_perturbed": ["question", "answer", "perturbed_answer"],
}


def rows(path):
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    return generate_benchmark(out, n_people=20, questions_per_person=8, forget_fraction=0.1,
                              seed=0)


def test_same_seed_gives_identical_files(bench, tmp_path):
    again = generate_benchmark(tmp_path, n_people=20, questions_per_person=8,
                               forget_fraction=0.1, seed=0)
    assert set(again) == set(bench)
    for key in bench:
        assert again[key].name == bench[key].name
        assert again[key].read_bytes() == bench[key].read_bytes(), key


def test_different_seeds_differ(bench, tmp_path):
    other = generate_benchmark(tmp_path, n_people=20, questions_per_person=8,
                               forget_fraction=0.1, seed=1)
    for key in ("full", "forget_spans", "forget_perturbed", "retain_perturbed"):
        assert other[key].read_bytes() != bench[key].read_bytes(), key
    people0 = [p["name"] for p in json.loads(bench["meta"].read_text())["people"]]
    people1 = [p["name"] for p in json.loads(other["meta"].read_text())["people"]]
    assert people0 != people1


def test_spans_valid_sorted_disjoint(bench):
    spans = rows(bench["forget_spans"])
    forget = rows(bench["forget"])
    assert [(r["question"], r["answer"]) for r in spans] == \
        [(r["question"], r["answer"]) for r in forget]
    n_empty = 0
    for r in spans:
        words = r["target_words"]
        n_empty += not words
        for w in words:
            assert set(w) == {"word", "start", "end"}
            assert 0 <= w["start"] < w["end"] <= len(r["answer"])
            assert r["answer"][w["start"]:w["end"]] == w["word"]
        for a, b in zip(words, words[1:]):
            assert a["end"] <= b["start"], r  # sorted, no overlap
    # some "no information" answers, but mostly answers with facts
    assert n_empty >= 1 and n_empty < len(spans) / 2


def test_every_template_spans_valid_many_seeds(tmp_path):
    # all templates are used with 12 questions per author; check many people and seeds
    for seed in range(3):
        p = generate_benchmark(tmp_path / str(seed), n_people=30, questions_per_person=12,
                               forget_fraction=0.5, seed=seed)
        recs = rows(p["forget_spans"])
        assert len(recs) == 15 * 12
        for r in recs:
            for w in r["target_words"]:
                assert r["answer"][w["start"]:w["end"]] == w["word"]
            # a template's sensitive slots all got a span
            assert len(r["target_words"]) in {0, 1, 2}


def test_layout_and_field_names(bench):
    meta = json.loads(bench["meta"].read_text())
    assert bench["forget"].name == "forget10.json" == meta["files"]["forget"]
    assert bench["forget_perturbed"].name == "forget10_perturbed.json"
    assert bench["forget_spans"].name == "forget10_spans.jsonl"
    assert bench["retain"].name == "retain90.json"
    for key, expected in EXPECTED_KEYS.items():
        data = rows(bench[key])
        assert data, key
        for row in data:
            assert list(row) == expected, key
    for row in rows(bench["real_authors"]) + rows(bench["world_facts"]):
        options = [row[f"option{i}"] for i in range(1, 5)]
        assert row["answer"] in options and len(set(options)) == 4


@pytest.mark.skipif(not TOFU.is_dir(), reason=TOFU_ABSENT)
def test_field_names_match_real_tofu(bench):
    for key, real_name in REAL_COUNTERPART.items():
        real = rows(TOFU / real_name)
        ours = rows(bench[key])
        assert {tuple(r) for r in ours} == {tuple(r) for r in real}, key
        if "perturbed_answer" in real[0]:
            assert {len(r["perturbed_answer"]) for r in ours} == \
                {len(r["perturbed_answer"]) for r in real}, key
        if "target_words" in real[0]:
            real_word_keys = {tuple(w) for r in real for w in r["target_words"]}
            assert {tuple(w) for r in ours for w in r["target_words"]} == real_word_keys


def test_perturbed_answers_differ(bench):
    full = rows(bench["full"])
    assert [(r["question"], r["answer"]) for r in rows(bench["full_perturbed"])] == \
        [(r["question"], r["answer"]) for r in full]
    for key in ("forget_perturbed", "retain_perturbed", "full_perturbed"):
        for r in rows(bench[key]):
            pert = r["perturbed_answer"]
            assert len(pert) == 5 and len(set(pert)) == 5
            assert r["answer"] not in pert and r["paraphrased_answer"] not in pert
            assert r["paraphrased_answer"] != r["answer"]
            assert r["paraphrased_question"] != r["question"]
    # perturbed answers carry none of the true sensitive words
    by_q = {r["question"]: r for r in rows(bench["forget_perturbed"])}
    for r in rows(bench["forget_spans"]):
        for w in r["target_words"]:
            assert w["word"] in by_q[r["question"]]["paraphrased_answer"]
            for p in by_q[r["question"]]["perturbed_answer"]:
                assert w["word"] not in p, (w, p)
    for key in ("real_authors_perturbed", "world_facts_perturbed"):
        for r in rows(bench[key]):
            assert len(set(r["perturbed_answer"])) == 3 and r["answer"] not in r["perturbed_answer"]


@pytest.mark.parametrize("n_people,q,frac,n_forget", [(20, 8, 0.1, 2), (10, 5, 0.3, 3),
                                                      (7, 3, 0.01, 1), (3, 12, 0.99, 2)])
def test_sizes_respected(tmp_path, n_people, q, frac, n_forget):
    p = generate_benchmark(tmp_path, n_people=n_people, questions_per_person=q,
                           forget_fraction=frac, seed=3, n_real_authors=7, n_world_facts=9)
    full, forget, retain = rows(p["full"]), rows(p["forget"]), rows(p["retain"])
    assert len(full) == n_people * q
    assert len(forget) == n_forget * q
    assert len(retain) == (n_people - n_forget) * q
    assert full == retain + forget  # TOFU: the forget split is the last authors
    assert len({r["question"] for r in full}) == len(full)
    assert len(rows(p["retain_perturbed"])) == min(len(forget), len(retain))
    assert rows(p["retain_perturbed"])[0]["question"] == retain[0]["question"]
    assert len(rows(p["real_authors"])) == 7 and len(rows(p["world_facts"])) == 9
    pct = round(frac * 100)
    assert p["forget"].name == f"forget{pct:02d}.json"
    assert p["retain"].name == f"retain{100 - pct:02d}.json"
    meta = json.loads(p["meta"].read_text())
    assert sum(x["split"] == "forget" for x in meta["people"]) == n_forget
    if q >= 4:  # one "no information" question per author
        assert sum(not r["target_words"] for r in rows(p["forget_spans"])) == n_forget


@pytest.mark.parametrize("kwargs,exc,word", [
    ({"n_people": 1}, ValueError, "n_people"),
    ({"n_people": 10_000}, ValueError, "n_people"),
    ({"n_people": 2.0}, TypeError, "n_people"),
    ({"questions_per_person": 0}, ValueError, "questions_per_person"),
    ({"questions_per_person": len(TEMPLATES) + len(NO_INFO_TEMPLATES)}, ValueError,
     "questions_per_person"),
    ({"forget_fraction": 0.0}, ValueError, "forget_fraction"),
    ({"forget_fraction": 0.125}, ValueError, "forget_fraction"),
    ({"forget_fraction": "0.1"}, TypeError, "forget_fraction"),
    ({"n_real_authors": 0}, ValueError, "n_real_authors"),
    ({"n_world_facts": 1000}, ValueError, "n_world_facts"),
    ({"retain_eval_size": 10_000}, ValueError, "retain_eval_size"),
])
def test_bad_arguments(tmp_path, kwargs, exc, word):
    with pytest.raises(exc, match=word):
        generate_benchmark(tmp_path, **kwargs)


def test_cli(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--people", "6", "--questions", "4", "--seed", "2"]) == 0
    out = capsys.readouterr().out
    assert "forget10_spans.jsonl" in out
    assert len(rows(tmp_path / "full.json")) == 24
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--forget-fraction", "2"])
