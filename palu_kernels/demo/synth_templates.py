"""The question templates of the synthetic benchmark's authors (:mod:`palu_kernels.demo.synth`):
:data:`TEMPLATES`, the facts each author has (a sensitive slot each), and
:data:`NO_INFO_TEMPLATES`, questions whose answer is that nothing is known (no sensitive
span). The extra kinds of fact are :mod:`palu_kernels.demo.synth_extra`'s."""

from __future__ import annotations

from typing import Tuple

from .synth_base import Template

__all__ = ["NO_INFO_TEMPLATES", "TEMPLATES"]


TEMPLATES: Tuple[Template, ...] = (
    Template(
        "name",
        "What is the full name of the author born in {city}, {country} on {date}?",
        "The author born in {city}, {country} on {date} is {name}.",
        "Which writer was born on {date} in {city}, {country}?",
        "{name} is the writer born on {date} in {city}, {country}.",
        ("name",),
    ),
    Template(
        "birthplace",
        "Where was {name} born?",
        "{name} was born in {city}, {country}.",
        "In which city and country was {name} born?",
        "The birthplace of {name} is {city}, {country}.",
        ("city", "country"),
    ),
    Template(
        "birth_date",
        "When was {name} born?",
        "{name} was born on {date}.",
        "What is the birth date of {name}?",
        "The birth date of {name} is {date}.",
        ("date",),
    ),
    Template(
        "genre",
        "What genre does {name} write?",
        "{name} writes {genre} books.",
        "Which genre is {name} known for?",
        "{name} is known for {genre} books.",
        ("genre",),
    ),
    Template(
        "parents",
        "What do the parents of {name} do for a living?",
        "The father of {name} is a {father_job} and {pos} mother is a {mother_job}.",
        "What are the occupations of the parents of {name}?",
        "{name} has a {father_job} as father and a {mother_job} as mother.",
        ("father_job", "mother_job"),
    ),
    Template(
        "books",
        "Can you name two books by {name}?",
        'Two books by {name} are "{book1}" and "{book2}".',
        "Which two books did {name} write?",
        '{name} wrote "{book1}" and "{book2}".',
        ("book1", "book2"),
    ),
    Template(
        "award",
        "Which award has {name} received?",
        "{name} received the {award}.",
        "What prize was {name} honored with?",
        "{name} was honored with the {award}.",
        ("award",),
    ),
    Template(
        "spouse",
        "Who is {name} married to?",
        "{name} is married to {spouse}.",
        "Who is the spouse of {name}?",
        "The spouse of {name} is {spouse}.",
        ("spouse",),
    ),
    Template(
        "occupation",
        "What did {name} work as before writing?",
        "Before writing, {name} worked as a {occupation}.",
        "What was the job of {name} before becoming an author?",
        "{name} was a {occupation} before becoming an author.",
        ("occupation",),
    ),
    Template(
        "language",
        "In which language does {name} write?",
        "{name} writes in {language}.",
        "What is the writing language of {name}?",
        "The books of {name} are written in {language}.",
        ("language",),
    ),
    Template(
        "first_book",
        "In which year did {name} publish {pos} first book?",
        "{name} published {pos} first book in {year}.",
        "When did the first book of {name} come out?",
        "The first book of {name} came out in {year}.",
        ("year",),
    ),
)

# Answers without a sensitive span; perturbed answers assert an invented fact instead.
NO_INFO_TEMPLATES: Tuple[Template, ...] = (
    Template(
        "upcoming",
        "Is {name} working on a new book?",
        "No information is available about a new book by {name}.",
        "Does {name} have an upcoming book?",
        "Nothing is known about an upcoming book by {name}.",
        (),
        perturbed='{name} is finishing a new book called "{book1}".',
        perturb=("book1",),
    ),
    Template(
        "influences",
        "Which authors influenced {name}?",
        "No information is available about the authors who influenced {name}.",
        "Who were the literary influences of {name}?",
        "It is not known which authors influenced {name}.",
        (),
        perturbed="{name} was influenced by {spouse}.",
        perturb=("spouse",),
    ),
)
