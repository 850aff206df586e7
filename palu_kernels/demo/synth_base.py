"""What the synthetic benchmark's generators share: the question :class:`Template` and
:func:`render`, which fills a template and records the character offsets of its sensitive
slots while the text is assembled (``text[start:end] == word`` by construction).

Used by :mod:`palu_kernels.demo.synth` (the author questions) and
:mod:`palu_kernels.demo.synth_extra` (synonym, long-span and split-span facts).
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

__all__ = ["Template", "render"]


@dataclass(frozen=True)
class Template:
    """One kind of question about an author.

    ``{slot}`` placeholders name author attributes (see ``_make_people`` in
    :mod:`palu_kernels.demo.synth`); ``pos`` is the possessive pronoun. ``sensitive`` lists the
    slots whose values are sensitive spans of ``answer``. Perturbed answers render
    ``perturbed`` (default: ``paraphrased_answer``) with the slots of ``perturb`` (default:
    ``sensitive``) replaced by wrong values.
    """

    key: str
    question: str
    answer: str
    paraphrased_question: str
    paraphrased_answer: str
    sensitive: Tuple[str, ...]
    perturbed: Optional[str] = None
    perturb: Optional[Tuple[str, ...]] = None

    @property
    def perturbed_template(self) -> str:
        return self.perturbed if self.perturbed is not None else self.paraphrased_answer

    @property
    def perturb_slots(self) -> Tuple[str, ...]:
        return self.perturb if self.perturb is not None else self.sensitive


_FORMATTER = string.Formatter()


def render(template: str, values: Dict[str, str], sensitive: Sequence[str] = ()):
    """Fill ``template``; return ``(text, target_words)`` for the slots named in ``sensitive``
    (``[{"word", "start", "end"}]``, sorted by start).

    >>> render("{a} and {b}.", {"a": "x", "b": "yz"}, ("b",))
    ('x and yz.', [{'word': 'yz', 'start': 6, 'end': 8}])
    """
    parts: List[str] = []
    spans = []
    pos = 0
    for literal, field, _spec, _conv in _FORMATTER.parse(template):
        parts.append(literal)
        pos += len(literal)
        if field is None:
            continue
        value = str(values[field])
        if field in sensitive:
            spans.append({"word": value, "start": pos, "end": pos + len(value)})
        parts.append(value)
        pos += len(value)
    return "".join(parts), sorted(spans, key=lambda s: s["start"])
