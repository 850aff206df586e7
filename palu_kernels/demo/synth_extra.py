"""Extra facts for the synthetic benchmark: synonyms, long spans and split spans.

:func:`palu_kernels.demo.synth.generate_benchmark` with ``extras=("synonym", "long",
"split")`` (any subset) appends, to every author's questions, questions of these kinds
(spans known by construction, like the others):

``synonym`` (two questions per author: ``alias_city``, ``alias_job``)
    a fact with two surface forms: a city with two names (Bombay / Mumbai) or an occupation
    with two words (lawyer / solicitor). The answer uses form A, which is the marked span;
    the paraphrased answer (same question, same words up to the slot) uses form B, unmarked.
    A model fine-tuned on answers and paraphrased answers
    (:func:`palu_kernels.eval.setups.qa_pairs`) learns both forms in the same context, so
    unlearning can be checked for probability that moves from A to B.
``long`` (``long_illness``)
    one long span whose first words are generic ("a rare and lasting form of") and whose
    sensitive content (the disease) comes last, past the first few tokens of the span.
``split`` (``split_address``)
    a fact spread over three spans of one answer (street, house number, district).

Every extra fact is described in ``synth_meta.json`` under ``"extras"`` -> ``"facts"``:
its kind, template, author, split (``forget``/``retain``), question, answer, spans and
``probes``: named texts to score, each ``{"question", "answer", "start", "end", "text"}``
meaning *log P(text | question, answer[:start])*, ``answer[start:end] == text``:

- synonym: ``form`` (A, in the answer) and ``alt_form`` (B, in the paraphrased answer,
  which has the same text before the slot: ``probes["alt_form"]["answer"][:start]`` equals
  ``probes["form"]["answer"][:start]``);
- long: ``lead`` (the span's generic first words and the space after them) and ``late``
  (the disease; ``lead`` and ``late`` partition the span), with
  ``late_words_into_span`` (how many words of the span precede the late part, at least 5:
  with word-level pre-tokenisation, at least as many tokens);
- split: ``part1`` .. ``part3`` in answer order (``part1`` the first span).

The extra questions draw from their own ``random.Random`` (seeded from ``seed``), after the
regular ones, so the regular questions are the same with or without extras.
"""

from __future__ import annotations

import random
from typing import Dict, List, Sequence, Tuple

from .synth_base import Template, render

__all__ = ["EXTRA_KINDS", "EXTRA_TEMPLATES", "add_extra_questions", "check_extras"]

# Cities with two names (historic / current), first letters differ within a pair.
_CITY_ALIASES = (
    ("Bombay", "Mumbai"), ("Madras", "Chennai"), ("Peking", "Beijing"),
    ("Constantinople", "Istanbul"), ("Saigon", "Ho Chi Minh City"),
    ("Leningrad", "Saint Petersburg"), ("Calcutta", "Kolkata"), ("Canton", "Guangzhou"),
    ("Batavia", "Jakarta"), ("Salonica", "Thessaloniki"), ("Danzig", "Gdansk"),
    ("Breslau", "Wroclaw"), ("Pressburg", "Bratislava"), ("Smyrna", "Izmir"),
    ("Rangoon", "Yangon"), ("Christiania", "Oslo"), ("Stalingrad", "Volgograd"),
    ("Leopoldville", "Kinshasa"),
)
# Occupations with two words (consonant-initial: the templates say "a {job}"; first letters
# differ within a pair).
_JOB_SYNONYMS = (
    ("doctor", "physician"), ("lawyer", "solicitor"), ("sailor", "mariner"),
    ("postman", "mailman"), ("teacher", "schoolmaster"), ("policeman", "constable"),
    ("carpenter", "joiner"), ("chemist", "druggist"), ("banker", "financier"),
    ("farmer", "rancher"), ("barber", "hairdresser"), ("soldier", "trooper"),
    ("grocer", "shopkeeper"),
)
# Generic first words of a long span (at least 5 words each) and the sensitive ending.
_ILLNESS_LEADS = (
    "a rare and lasting form of", "a severe and recurring case of",
    "a mild but persistent form of", "an unusual and painful type of",
)
_DISEASES = (
    "kidney disease", "asthma", "tuberculosis", "malaria", "pneumonia", "scarlet fever",
    "measles", "rheumatic fever", "anemia", "epilepsy", "jaundice", "whooping cough",
    "diabetes", "bronchitis",
)
_STREET_WORDS = ("Willow", "Chestnut", "Maple", "Juniper", "Hawthorn", "Linden", "Rowan",
                 "Alder", "Birch", "Cedar")
_STREET_KINDS = ("Lane", "Road", "Crescent", "Terrace", "Avenue")
_DISTRICTS = ("Old Harbour", "Upper Market", "East Mill", "Cathedral", "Riverside",
              "Lower Quay", "North Gate", "Tannery", "Weavers", "Hillside")

EXTRA_TEMPLATES: Dict[str, Template] = {t.key: t for t in (
    Template(
        "alias_city",
        "In which city did {name} spend {pos} childhood?",
        "{name} spent {pos} childhood in {alias}.",
        "Where did {name} grow up?",
        "{name} spent {pos} childhood in {alias_alt}.",
        ("alias",), perturb=("alias_alt",),
    ),
    Template(
        "alias_job",
        "What does the sibling of {name} do for a living?",
        "The sibling of {name} works as a {sib_job}.",
        "What is the job of the sibling of {name}?",
        "The sibling of {name} works as a {sib_job_alt}.",
        ("sib_job",), perturb=("sib_job_alt",),
    ),
    Template(
        "long_illness",
        "What illness was {name} treated for as a child?",
        "As a child, {name} was treated for {illness}.",
        "Which illness did {name} have as a child?",
        "{name} had {illness} as a child.",
        ("illness",),
    ),
    Template(
        "split_address",
        "Where does {name} live?",
        "{name} lives on {street}, in house number {house}, in the {district} quarter.",
        "What is the home address of {name}?",
        "The home of {name} is house number {house} on {street}, in the {district} quarter.",
        ("street", "house", "district"),
    ),
)}

EXTRA_KINDS: Dict[str, Tuple[str, ...]] = {
    "synonym": ("alias_city", "alias_job"),
    "long": ("long_illness",),
    "split": ("split_address",),
}
"""``extras`` name -> the templates it adds (one question per author each)."""

_N_PERTURBED = 5


def check_extras(extras) -> Tuple[str, ...]:
    """``extras`` as a tuple of known kind names (``ValueError``/``TypeError`` otherwise)."""
    if isinstance(extras, str) or not isinstance(extras, (tuple, list)):
        raise TypeError(f"extras must be a list or tuple of names from {tuple(EXTRA_KINDS)}, "
                        f"got {type(extras).__name__} ({extras!r})")
    bad = [e for e in extras if e not in EXTRA_KINDS]
    if bad:
        raise ValueError(f"extras: unknown kind(s) {bad}; expected names from "
                         f"{tuple(EXTRA_KINDS)}")
    if len(set(extras)) != len(extras):
        raise ValueError(f"extras: a kind is listed twice in {list(extras)}")
    return tuple(extras)


def _extra_values(rng: random.Random) -> Dict[str, str]:
    """One author's extra attributes."""
    a, b = rng.choice(_CITY_ALIASES)
    if rng.random() < 0.5:
        a, b = b, a
    j, k = rng.choice(_JOB_SYNONYMS)
    if rng.random() < 0.5:
        j, k = k, j
    return {
        "alias": a, "alias_alt": b, "sib_job": j, "sib_job_alt": k,
        "illness_lead": rng.choice(_ILLNESS_LEADS), "disease": rng.choice(_DISEASES),
        "street": f"{rng.choice(_STREET_WORDS)} {rng.choice(_STREET_KINDS)}",
        "house": str(rng.randint(2, 98)), "district": rng.choice(_DISTRICTS),
    }


def _wrong(slot: str, values: Dict[str, str], rng: random.Random, used: set) -> Dict[str, str]:
    """A wrong value for ``slot`` (neither surface form of the truth, nor one in ``used``)."""
    for _ in range(1000):
        if slot == "alias_alt":
            pair, truth = rng.choice(_CITY_ALIASES), (values["alias"], values["alias_alt"])
        elif slot == "sib_job_alt":
            pair, truth = rng.choice(_JOB_SYNONYMS), (values["sib_job"], values["sib_job_alt"])
        elif slot == "illness":  # the same generic lead, another disease
            disease = rng.choice(_DISEASES)
            value = f"{values['illness_lead']} {disease}"
            if disease != values["disease"] and value not in used:
                used.add(value)
                return {"illness": value}
            continue
        elif slot == "street":
            pair, truth = (f"{rng.choice(_STREET_WORDS)} {rng.choice(_STREET_KINDS)}",), \
                (values["street"],)
        elif slot == "house":
            pair, truth = (str(rng.randint(2, 98)),), (values["house"],)
        elif slot == "district":
            pair, truth = (rng.choice(_DISTRICTS),), (values["district"],)
        else:  # pragma: no cover - the templates above name no other slot
            raise KeyError(slot)
        value = rng.choice(pair)
        if set(pair) & set(truth) or value in used:
            continue
        used.add(value)
        return {slot: value}
    raise RuntimeError(f"could not draw a wrong value for slot {slot!r}")  # pragma: no cover


def _probe(question: str, answer: str, start: int, end: int) -> dict:
    return {"question": question, "answer": answer, "start": start, "end": end,
            "text": answer[start:end]}


def _fact(tpl: Template, values: dict, question: str, answer: str, spans: list,
          para_a: str) -> dict:
    """The ``synth_meta.json`` description of one extra question (see the module docstring)."""
    fact = {"template": tpl.key, "question": question, "answer": answer,
            "target_words": spans}
    if tpl.key in EXTRA_KINDS["synonym"]:
        slot = tpl.sensitive[0]
        form, alt = values[slot], values[slot + "_alt"]
        (span,) = spans
        alt_start = span["start"]  # same words before the slot in both answers
        assert para_a[alt_start:alt_start + len(alt)] == alt and \
            para_a[:alt_start] == answer[:alt_start]
        fact.update(kind="synonym", form=form, alt_form=alt, alt_taught_in="paraphrased_answer",
                    probes={"form": _probe(question, answer, span["start"], span["end"]),
                            "alt_form": _probe(question, para_a, alt_start,
                                               alt_start + len(alt))})
    elif tpl.key in EXTRA_KINDS["long"]:
        (span,) = spans
        lead = values["illness_lead"]
        late_start = span["start"] + len(lead) + 1
        fact.update(kind="long", late_words_into_span=len(lead.split()),
                    probes={"lead": _probe(question, answer, span["start"], late_start),
                            "late": _probe(question, answer, late_start, span["end"])})
    else:
        fact.update(kind="split", probes={
            f"part{i + 1}": _probe(question, answer, s["start"], s["end"])
            for i, s in enumerate(spans)})
    return fact


def add_extra_questions(people: Sequence[dict], per_person: List[list], extras: Sequence[str],
                        seed: int, forget_from: int) -> List[dict]:
    """Append the ``extras`` questions to every author's records in ``per_person`` (in place,
    records shaped like the regular ones); return the facts' descriptions for
    ``synth_meta.json`` (authors ``>= forget_from`` are in the forget split)."""
    kinds = check_extras(extras)
    rng = random.Random(f"palu-synth-extras:{seed}")  # str seeds are stable across runs
    facts = []
    for i, (person, records) in enumerate(zip(people, per_person)):
        extra = _extra_values(rng)
        values = dict(person, **extra)
        values["illness"] = f"{extra['illness_lead']} {extra['disease']}"
        for kind in kinds:
            for key in EXTRA_KINDS[kind]:
                tpl = EXTRA_TEMPLATES[key]
                question, _ = render(tpl.question, values)
                answer, spans = render(tpl.answer, values, tpl.sensitive)
                para_q, _ = render(tpl.paraphrased_question, values)
                para_a, _ = render(tpl.paraphrased_answer, values)
                used: set = set()
                perturbed = []
                for _ in range(_N_PERTURBED):
                    wrong = dict(values)
                    for slot in tpl.perturb_slots:
                        wrong.update(_wrong(slot, values, rng, used))
                    perturbed.append(render(tpl.perturbed_template, wrong)[0])
                records.append({
                    "question": question, "answer": answer, "target_words": spans,
                    "paraphrased_answer": para_a, "perturbed_answer": perturbed,
                    "paraphrased_question": para_q, "template": key,
                })
                fact = _fact(tpl, values, question, answer, spans, para_a)
                fact.update(person=person["name"],
                            split="forget" if i >= forget_from else "retain")
                facts.append(fact)
    return facts
