"""Extra facts of the synthetic benchmark (palu_kernels.demo.synth_extra): synonyms, long
spans, split spans, and their descriptions in synth_meta.json."""

import json

import pytest

from palu_kernels.demo.synth import generate_benchmark
from palu_kernels.demo.synth_extra import EXTRA_KINDS, EXTRA_TEMPLATES

ALL = ("synonym", "long", "split")


def rows(path):
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    return generate_benchmark(tmp_path_factory.mktemp("plain"), n_people=12,
                              questions_per_person=5, forget_fraction=0.25, seed=4)


@pytest.fixture(scope="module")
def extra(tmp_path_factory):
    return generate_benchmark(tmp_path_factory.mktemp("extra"), n_people=12,
                              questions_per_person=5, forget_fraction=0.25, seed=4, extras=ALL)


def _per_author(rows_, n_q):
    return [rows_[i:i + n_q] for i in range(0, len(rows_), n_q)]


def test_regular_questions_unchanged_and_extras_appended(plain, extra):
    n_extra = sum(len(EXTRA_KINDS[k]) for k in ALL)
    base, more = rows(plain["full_perturbed"]), rows(extra["full_perturbed"])
    assert len(more) == len(base) + 12 * n_extra
    # each author: the same regular questions, then the extra ones
    for b, m in zip(_per_author(base, 5), _per_author(more, 5 + n_extra)):
        assert m[:5] == b
        assert all(r["question"] not in {x["question"] for x in b} for r in m[5:])
    for key in ("real_authors", "world_facts", "idontknow"):
        assert extra[key].read_bytes() == plain[key].read_bytes()
    meta_p, meta_e = (json.loads(p["meta"].read_text()) for p in (plain, extra))
    assert meta_p["people"] == meta_e["people"] and "extras" not in meta_p
    assert meta_e["extras"]["kinds"] == list(ALL)


def test_deterministic_for_a_seed(extra, tmp_path):
    again = generate_benchmark(tmp_path / "a", n_people=12, questions_per_person=5,
                               forget_fraction=0.25, seed=4, extras=ALL)
    other = generate_benchmark(tmp_path / "b", n_people=12, questions_per_person=5,
                               forget_fraction=0.25, seed=5, extras=ALL)
    for key in extra:
        assert again[key].read_bytes() == extra[key].read_bytes(), key
    assert other["forget_spans"].read_bytes() != extra["forget_spans"].read_bytes()


def test_spans_and_perturbed_answers_valid(extra):
    spans = {r["question"]: r for r in rows(extra["forget_spans"])}
    pert = {r["question"]: r for r in rows(extra["forget_perturbed"])}
    for r in spans.values():
        for w in r["target_words"]:
            assert r["answer"][w["start"]:w["end"]] == w["word"]
        for a, b in zip(r["target_words"], r["target_words"][1:]):
            assert a["end"] <= b["start"]
        p = pert[r["question"]]
        assert len(set(p["perturbed_answer"])) == 5 and p["answer"] not in p["perturbed_answer"]
        for w in r["target_words"]:  # no perturbed answer states the true fact
            assert all(w["word"] not in x for x in p["perturbed_answer"]), (w, p)


def test_facts_describe_the_records(extra):
    meta = json.loads(extra["meta"].read_text())
    facts = meta["extras"]["facts"]
    forget_names = {p["name"] for p in meta["people"] if p["split"] == "forget"}
    spans = {r["question"]: r for r in rows(extra["forget_spans"])}
    full = {r["question"]: r for r in rows(extra["full_perturbed"])}
    assert len(facts) == 12 * sum(len(EXTRA_KINDS[k]) for k in ALL)
    assert {f["template"] for f in facts} == set(EXTRA_TEMPLATES)
    for f in facts:
        assert f["split"] == ("forget" if f["person"] in forget_names else "retain")
        assert (f["question"] in spans) == (f["split"] == "forget")
        rec = full[f["question"]]
        assert rec["answer"] == f["answer"]
        if f["split"] == "forget":
            assert spans[f["question"]]["target_words"] == f["target_words"]
        for probe in f["probes"].values():
            assert probe["answer"][probe["start"]:probe["end"]] == probe["text"]
            assert probe["question"] == f["question"]


def test_synonym_facts_teach_both_forms_mark_one(extra):
    facts = [f for f in json.loads(extra["meta"].read_text())["extras"]["facts"]
             if f["kind"] == "synonym"]
    full = {r["question"]: r for r in rows(extra["full_perturbed"])}
    spans = {r["question"]: r for r in rows(extra["forget_spans"])}
    assert len(facts) == 24
    for f in facts:
        form, alt = f["probes"]["form"], f["probes"]["alt_form"]
        assert form["text"] == f["form"] != f["alt_form"] == alt["text"]
        assert form["text"][0] != alt["text"][0]  # the first token differs (every pair below)
        assert form["answer"] == f["answer"]
        # form B in the training data's paraphrased answer, in the same context as form A
        assert alt["answer"] == full[f["question"]]["paraphrased_answer"]
        assert alt["start"] == form["start"]
        assert alt["answer"][:alt["start"]] == form["answer"][:form["start"]]
        assert f["alt_form"] not in f["answer"]
        if f["split"] == "forget":  # only form A is marked
            words = [w["word"] for w in spans[f["question"]]["target_words"]]
            assert words == [f["form"]]


def test_long_span_late_part_and_split_parts(extra):
    facts = json.loads(extra["meta"].read_text())["extras"]["facts"]
    for f in facts:
        if f["kind"] == "long":
            (span,) = f["target_words"]
            lead, late = f["probes"]["lead"], f["probes"]["late"]
            assert lead["start"] == span["start"] and late["end"] == span["end"]
            assert lead["end"] == late["start"] and lead["text"].endswith(" ")
            assert span["word"] == lead["text"] + late["text"]
            assert f["late_words_into_span"] == len(lead["text"].split()) >= 5
        elif f["kind"] == "split":
            parts = [f["probes"][f"part{i}"] for i in (1, 2, 3)]
            assert [(p["start"], p["end"]) for p in parts] == \
                [(w["start"], w["end"]) for w in f["target_words"]]
            # separate spans: non-span words between them
            for a, b in zip(parts, parts[1:]):
                assert f["answer"][a["end"]:b["start"]].strip(" ,")


def test_every_synonym_pair_starts_differently():
    from palu_kernels.demo import synth_extra

    for a, b in synth_extra._CITY_ALIASES + synth_extra._JOB_SYNONYMS:
        assert a[0] != b[0] and a not in b and b not in a, (a, b)


@pytest.mark.parametrize("extras,exc", [("synonym", TypeError), (["nope"], ValueError),
                                        (["long", "long"], ValueError)])
def test_bad_extras(tmp_path, extras, exc):
    with pytest.raises(exc, match="extras"):
        generate_benchmark(tmp_path, n_people=4, questions_per_person=4, extras=extras)


def test_cli_extras(tmp_path, capsys):
    from palu_kernels.cli.synth import main

    assert main(["--out", str(tmp_path), "--people", "4", "--questions", "4",
                 "--extras", "long,split"]) == 0
    meta = json.loads((tmp_path / "synth_meta.json").read_text())
    assert meta["extras"]["kinds"] == ["long", "split"]
    assert len(rows(tmp_path / "full.json")) == 4 * 6
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--extras", "synonyms"])
    assert "extras" in capsys.readouterr().err
