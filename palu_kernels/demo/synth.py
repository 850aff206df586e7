"""Synthetic TOFU-style unlearning benchmark with sensitive spans known by construction.

Fictitious authors get attributes (full name, birthplace, birth date, genre, parents'
occupations, two book titles, an award, a spouse, a former occupation, a writing language,
the year of the first book). Each author gets templated question/answer pairs
(:mod:`palu_kernels.demo.synth_templates`); every fact
slot of an answer that carries a sensitive value is recorded with its character offsets while
the answer is assembled, so ``answer[start:end] == word`` holds by construction. Some
questions have no sensitive span at all ("No information is available about ..."), like the
few such answers in TOFU.

The files written are those of TOFU (``../shared/data/tofu``), with the same field names, one
JSON object per line:

=============================  =================================================================
``full.json``                  every author question: ``question``, ``answer``
``forgetXX.json``              the last ``XX`` % of the authors (TOFU convention)
``forgetXX_perturbed.json``    plus ``paraphrased_answer``, ``perturbed_answer`` (5 answers),
                               ``paraphrased_question``
``forgetXX_spans.jsonl``       ``question``, ``answer``, ``target_words``:
                               ``[{"word", "start", "end"}, ...]``
``retainYY.json``              the other authors (``YY = 100 - XX``)
``retain_perturbed.json``      the first questions of the retain split, perturbed layout
``real_authors.json``          ``question``, ``option1`` .. ``option4``, ``answer``
``real_authors_perturbed.json``  ``question``, ``answer``, ``perturbed_answer`` (3 answers)
``world_facts.json``           as ``real_authors.json``
``world_facts_perturbed.json``   as ``real_authors_perturbed.json``
``full_perturbed.json``        every author question in the perturbed layout (not in TOFU;
                               for training on paraphrases)
``idontknow.jsonl``            plain lines of refusal answers
``synth_meta.json``            the parameters, split names and the generated authors
=============================  =================================================================

Perturbed answers follow TOFU: the paraphrased answer's template with every sensitive value
replaced by a wrong value of the same kind (another place, date, title, name...), so a truth
ratio compares answers that differ only in the facts. Real-authors and world-facts questions
are real, widely known facts (a pre-trained model knows them; a tiny model built from scratch
must be taught them together with the authors).

Everything derives from ``random.Random(seed)``: the same arguments give byte-identical files.

Example::

    >>> import tempfile
    >>> from palu_kernels.demo.synth import generate_benchmark
    >>> paths = generate_benchmark(tempfile.mkdtemp(), n_people=20, questions_per_person=8,
    ...                            forget_fraction=0.1, seed=0)
    >>> paths["forget"].name, paths["retain"].name
    ('forget10.json', 'retain90.json')

Command line: ``python -m palu_kernels.cli.synth --out DIR [--people 20 --questions 8
--forget-fraction 0.1 --seed 0]``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .synth_base import render as _render
from .synth_pools import (
    FIRST_MALE as _FIRST_MALE,
    FIRST_FEMALE as _FIRST_FEMALE,
    SURNAMES as _SURNAMES,
    PLACES as _PLACES,
    MONTHS as _MONTHS,
    JOBS as _JOBS,
    GENRES as _GENRES,
    LANGUAGES as _LANGUAGES,
    AWARDS as _AWARDS,
    TITLE_ADJ as _TITLE_ADJ,
    TITLE_NOUN as _TITLE_NOUN,
    TITLE_PLACE as _TITLE_PLACE,
    IDONTKNOW as _IDONTKNOW,
    REAL_AUTHORS as _REAL_AUTHORS,
    CAPITALS as _CAPITALS,
    WORLD_MISC as _WORLD_MISC,
)
from .synth_templates import NO_INFO_TEMPLATES, TEMPLATES

__all__ = ["generate_benchmark"]

_N_PERTURBED = 5  # TOFU: 5 perturbed answers per author question
_N_OPTIONS = 4  # TOFU real_authors / world_facts: 4 options, 3 perturbed


# --------------------------------------------------------------------------------------------
# Value generation.
# --------------------------------------------------------------------------------------------


def _all_titles() -> List[str]:
    titles = [f"The {a} {n}" for a in _TITLE_ADJ for n in _TITLE_NOUN]
    titles += [f"The {n} of {p}" for n in _TITLE_NOUN for p in _TITLE_PLACE]
    titles += [f"{a} {n}s" for a in _TITLE_ADJ for n in _TITLE_NOUN[:9]]
    return titles


def _random_date(rng: random.Random) -> Tuple[str, int]:
    year = rng.randint(1931, 1989)
    return f"{rng.randint(1, 28)} {rng.choice(_MONTHS)} {year}", year


class _Pools:
    """Draws wrong values of the same kind as a slot's true value."""

    def __init__(self, titles: Sequence[str], names: Sequence[str]):
        self.choices = {
            "genre": _GENRES, "father_job": _JOBS, "mother_job": _JOBS, "occupation": _JOBS,
            "language": _LANGUAGES, "award": _AWARDS, "book1": titles, "book2": titles,
            "name": names, "spouse": names,
        }

    def wrong(self, slot: str, person: Dict[str, str], rng: random.Random,
              used: set) -> Dict[str, str]:
        """Wrong values for ``slot`` (and its tied slots), avoiding the truth and ``used``."""
        for _ in range(1000):
            if slot in ("city", "country"):
                city, country = rng.choice(_PLACES)
                if city != person["city"] and country != person["country"] and city not in used:
                    used.add(city)
                    return {"city": city, "country": country}
                continue
            if slot == "date":
                value = _random_date(rng)[0]
            elif slot == "year":
                value = str(rng.randint(1950, 2015))
            else:
                value = rng.choice(self.choices[slot])
            truths = {person.get(slot), person.get("book1"), person.get("book2")} \
                if slot in ("book1", "book2") else {person.get(slot)}
            if value not in truths and value not in used:
                used.add(value)
                return {slot: value}
        raise RuntimeError(f"could not draw a wrong value for slot {slot!r}")  # pragma: no cover


def _make_people(rng: random.Random, n_people: int, titles: List[str]):
    combos = [(f, s) for f in _FIRST_MALE + _FIRST_FEMALE for s in _SURNAMES]
    n_names_needed = 2 * n_people  # author + spouse
    if n_names_needed > len(combos) or 2 * n_people > len(titles):
        raise ValueError(
            f"n_people must be at most {min(len(combos), len(titles)) // 2}, got {n_people}")
    names = rng.sample(combos, n_names_needed)
    book_titles = rng.sample(titles, 2 * n_people)
    people = []
    for i in range(n_people):
        first, surname = names[i]
        gender = "male" if first in _FIRST_MALE else "female"
        sp_first, _ = names[n_people + i]
        city, country = rng.choice(_PLACES)
        date, birth_year = _random_date(rng)
        father_job, mother_job = rng.sample(_JOBS, 2)
        people.append({
            "name": f"{first} {surname}",
            "gender": gender,
            "pos": "his" if gender == "male" else "her",
            "city": city,
            "country": country,
            "date": date,
            "genre": rng.choice(_GENRES),
            "father_job": father_job,
            "mother_job": mother_job,
            "book1": book_titles[2 * i],
            "book2": book_titles[2 * i + 1],
            "award": rng.choice(_AWARDS),
            "spouse": f"{sp_first} {surname}",
            "occupation": rng.choice(_JOBS),
            "language": rng.choice(_LANGUAGES),
            "year": str(birth_year + rng.randint(20, 40)),
        })
    return people


def _person_questions(person, rng: random.Random, questions_per_person: int, pools: _Pools):
    """The author's records: dicts with question, answer, target_words, paraphrases, perturbed."""
    n_no_info = 1 if questions_per_person >= 4 else 0
    chosen = rng.sample(TEMPLATES, questions_per_person - n_no_info)
    chosen += rng.sample(NO_INFO_TEMPLATES, n_no_info)
    rng.shuffle(chosen)
    records = []
    for tpl in chosen:
        question, _ = _render(tpl.question, person)
        answer, spans = _render(tpl.answer, person, tpl.sensitive)
        para_q, _ = _render(tpl.paraphrased_question, person)
        para_a, _ = _render(tpl.paraphrased_answer, person)
        used: set = set()
        perturbed = []
        for _ in range(_N_PERTURBED):
            values = dict(person)
            for slot in tpl.perturb_slots:
                if slot == "country" and "city" in tpl.perturb_slots:
                    continue  # drawn together with "city"
                values.update(pools.wrong(slot, person, rng, used))
            perturbed.append(_render(tpl.perturbed_template, values)[0])
        records.append({
            "question": question, "answer": answer, "target_words": spans,
            "paraphrased_answer": para_a, "perturbed_answer": perturbed,
            "paraphrased_question": para_q, "template": tpl.key,
        })
    return records


def _multiple_choice(rng: random.Random, items):
    """``items``: (question, answer, wrong options). Returns (mc rows, perturbed rows)."""
    mc, perturbed = [], []
    for question, answer, wrong in items:
        options = [answer, *wrong]
        rng.shuffle(options)
        row = {"question": question}
        row.update({f"option{i + 1}": o for i, o in enumerate(options)})
        row["answer"] = answer
        mc.append(row)
        perturbed.append({"question": question, "answer": answer,
                          "perturbed_answer": [o for o in options if o != answer]})
    return mc, perturbed


def _real_author_items(rng: random.Random, n: int):
    picked = rng.sample(_REAL_AUTHORS, n)
    authors = [a for _, a in _REAL_AUTHORS]
    return [(q, a, rng.sample([x for x in authors if x != a], _N_OPTIONS - 1)) for q, a in picked]


def _world_fact_items(rng: random.Random, n: int):
    capitals = [c for _, c in _CAPITALS]
    items = [(f"What is the capital of {country}?", capital,
              tuple(rng.sample([c for c in capitals if c != capital], _N_OPTIONS - 1)))
             for country, capital in _CAPITALS]
    items += list(_WORLD_MISC)
    return rng.sample(items, n)


# --------------------------------------------------------------------------------------------
# Writing.
# --------------------------------------------------------------------------------------------

_QA_KEYS = ("question", "answer")
_PERTURBED_KEYS = ("question", "answer", "paraphrased_answer", "perturbed_answer",
                   "paraphrased_question")
_SPAN_KEYS = ("question", "answer", "target_words")


def _write_jsonl(path: Path, rows, keys=None, compact=True) -> Path:
    seps = (",", ":") if compact else (", ", ": ")
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            if keys is not None:
                row = {k: row[k] for k in keys}
            fh.write(json.dumps(row, ensure_ascii=True, separators=seps) + "\n")
    return path


def _check_int(name: str, value, low: int, high: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < low or (high is not None and value > high):
        rng = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {rng}, got {value}")
    return value


def generate_benchmark(
    out_dir,
    *,
    n_people: int = 20,
    questions_per_person: int = 8,
    forget_fraction: float = 0.1,
    seed: int = 0,
    n_real_authors: int = 20,
    n_world_facts: int = 20,
    retain_eval_size: Optional[int] = None,
    extras: Sequence[str] = (),
) -> Dict[str, Path]:
    """Write a synthetic TOFU-layout benchmark to ``out_dir`` and return the paths written.

    Args:
        out_dir: directory (created if missing); existing files of the same names are replaced.
        n_people: number of fictitious authors (2 .. 297, the supply of distinct titles).
        questions_per_person: questions per author (1 .. 12); from 4 on, one of them has no
            sensitive span ("No information is available ...").
        forget_fraction: share of the authors to forget, a whole percentage in [0.01, 0.99];
            it names the files (0.1 -> ``forget10.json``, ``retain90.json``); the last
            ``max(1, round(n_people * forget_fraction))`` authors are forgotten (at least one
            author is always retained).
        seed: seed of the ``random.Random`` every choice comes from.
        n_real_authors: questions in ``real_authors.json`` (1 .. 30).
        n_world_facts: questions in ``world_facts.json`` (1 .. 30).
        retain_eval_size: questions in ``retain_perturbed.json`` (the first ones of the
            retain split); default: as many as the forget split has, at most the retain size.
        extras: kinds of extra facts appended to every author's questions, any of
            ``"synonym"`` (two questions), ``"long"``, ``"split"`` (one each); see
            :mod:`palu_kernels.demo.synth_extra`. Their descriptions (surface forms, late
            parts, probes) go in ``synth_meta.json`` under ``"extras"``. Default ``()``: the
            files are byte-identical to those without the option.

    Returns:
        ``{"full", "full_perturbed", "forget", "forget_perturbed", "forget_spans", "retain",
        "retain_perturbed",
        "real_authors", "real_authors_perturbed", "world_facts", "world_facts_perturbed",
        "idontknow", "meta"}`` -> ``pathlib.Path``.

    >>> import tempfile, json
    >>> p = generate_benchmark(tempfile.mkdtemp(), n_people=10, questions_per_person=5)
    >>> row = json.loads(p["forget_spans"].read_text().splitlines()[0])
    >>> all(row["answer"][w["start"]:w["end"]] == w["word"] for w in row["target_words"])
    True
    """
    n_people = _check_int("n_people", n_people, 2)
    n_q = _check_int("questions_per_person", questions_per_person, 1,
                     len(TEMPLATES) + 1)
    n_real_authors = _check_int("n_real_authors", n_real_authors, 1, len(_REAL_AUTHORS))
    n_world_facts = _check_int("n_world_facts", n_world_facts, 1,
                               len(_CAPITALS) + len(_WORLD_MISC))
    _check_int("seed", seed, -(2 ** 63))
    if isinstance(forget_fraction, bool) or not isinstance(forget_fraction, (int, float)):
        raise TypeError(f"forget_fraction must be a float, got {type(forget_fraction).__name__}")
    pct = round(forget_fraction * 100)
    if not 1 <= pct <= 99 or abs(pct - forget_fraction * 100) > 1e-6:
        raise ValueError("forget_fraction must be a whole percentage in [0.01, 0.99] "
                         f"(it names the files, e.g. 0.1 -> forget10.json), got {forget_fraction}")
    n_forget = min(n_people - 1, max(1, round(n_people * forget_fraction)))
    if extras:
        from .synth_extra import check_extras

        extras = check_extras(extras)

    rng = random.Random(seed)
    titles = _all_titles()
    people = _make_people(rng, n_people, titles)
    wrong_names = [f"{f} {s}" for f in _FIRST_MALE + _FIRST_FEMALE for s in _SURNAMES]
    pools = _Pools(titles, wrong_names)
    per_person = [_person_questions(p, rng, n_q, pools) for p in people]
    extra_facts = None
    if extras:
        from .synth_extra import add_extra_questions

        extra_facts = add_extra_questions(people, per_person, extras, seed,
                                          forget_from=n_people - n_forget)
    real_mc, real_pert = _multiple_choice(rng, _real_author_items(rng, n_real_authors))
    world_mc, world_pert = _multiple_choice(rng, _world_fact_items(rng, n_world_facts))

    retain_rows = [r for recs in per_person[: n_people - n_forget] for r in recs]
    forget_rows = [r for recs in per_person[n_people - n_forget:] for r in recs]
    full_rows = retain_rows + forget_rows
    if retain_eval_size is None:
        retain_eval_size = min(len(forget_rows), len(retain_rows))
    retain_eval_size = _check_int("retain_eval_size", retain_eval_size, 1, len(retain_rows))

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fname, rname = f"forget{pct:02d}", f"retain{100 - pct:02d}"
    paths = {
        "full": _write_jsonl(out / "full.json", full_rows, _QA_KEYS),
        "full_perturbed": _write_jsonl(out / "full_perturbed.json", full_rows, _PERTURBED_KEYS),
        "forget": _write_jsonl(out / f"{fname}.json", forget_rows, _QA_KEYS),
        "forget_perturbed": _write_jsonl(out / f"{fname}_perturbed.json", forget_rows,
                                         _PERTURBED_KEYS),
        "forget_spans": _write_jsonl(out / f"{fname}_spans.jsonl", forget_rows, _SPAN_KEYS,
                                     compact=False),
        "retain": _write_jsonl(out / f"{rname}.json", retain_rows, _QA_KEYS),
        "retain_perturbed": _write_jsonl(out / "retain_perturbed.json",
                                         retain_rows[:retain_eval_size], _PERTURBED_KEYS),
        "real_authors": _write_jsonl(out / "real_authors.json", real_mc, compact=False),
        "real_authors_perturbed": _write_jsonl(out / "real_authors_perturbed.json", real_pert),
        "world_facts": _write_jsonl(out / "world_facts.json", world_mc, compact=False),
        "world_facts_perturbed": _write_jsonl(out / "world_facts_perturbed.json", world_pert),
        "idontknow": out / "idontknow.jsonl",
        "meta": out / "synth_meta.json",
    }
    paths["idontknow"].write_text("".join(line + "\n" for line in _IDONTKNOW), encoding="utf-8")
    meta = {
        "generator": "palu_kernels.demo.synth",
        "seed": seed, "n_people": n_people, "questions_per_person": n_q,
        "forget_fraction": forget_fraction, "forget_split": fname, "retain_split": rname,
        "n_forget_people": n_forget, "n_forget_questions": len(forget_rows),
        "n_retain_questions": len(retain_rows), "retain_eval_size": retain_eval_size,
        "n_real_authors": n_real_authors, "n_world_facts": n_world_facts,
        "files": {k: v.name for k, v in paths.items()},
        "people": [dict(p, split="forget" if i >= n_people - n_forget else "retain")
                   for i, p in enumerate(people)],
    }
    if extra_facts is not None:
        meta["extras"] = {"kinds": list(extras), "facts": extra_facts}
    paths["meta"].write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return paths
