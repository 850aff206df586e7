"""Forget / retain records for PALU: their formats, loading and validation, and passages.
Their tokenisation, masks and collation: :mod:`palu_kernels.io.data`.

Record formats (JSON lines, one object per line, or a JSON array of objects):

* forget (span-annotated), e.g. ``../shared/data/tofu/forget01_spans.jsonl``::

      {"question": "...", "answer": "...", "target_words": [{"word": "Basil", "start": 7, "end": 12}]}

  ``start``/``end`` are character offsets into ``answer`` (end exclusive), in any order.
* retain (plain TOFU), e.g. ``../shared/data/tofu/retain99.json`` (JSON lines despite the
  name): ``{"question": "...", "answer": "..."}``.
* raw passages (:func:`load_passages`, :func:`load_forget`): a ``.txt`` file (passages
  separated by blank lines), a JSON array / JSON lines of strings, or of objects
  ``{"text": "...", "target_words": [...]}`` (``palu-spans`` writes these; offsets into
  ``text``). A passage becomes a :class:`QARecord` with ``raw=True``: no question, no prompt,
  every token an answer token; :func:`chunk_passages` cuts it to ``max_length`` tokens.

Every bad record (invalid JSON, missing field, span outside the answer,
``answer[start:end] != word``, overlapping spans) is reported with its file, line and reason:
:func:`load_records` raises one ``ValueError`` listing them all, or with ``skip_bad=True``
skips them and returns them in :class:`LoadReport` (and warns). Nothing is dropped silently.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from ..errors import UsageError
from ..jsonio import iter_json_objects as _iter_json_objects
from ..jsonio import iter_json_values as _iter_json_values
from ..jsonio import strip_bom as _strip_bom

__all__ = ["LoadReport", "QARecord", "Span", "chunk_passages", "is_passage_file", "load_forget",
           "load_passages", "load_records"]


@dataclass(frozen=True)
class Span:
    """A sensitive character span ``answer[start:end] == word``."""

    start: int
    end: int
    word: str


@dataclass(frozen=True)
class QARecord:
    """One validated question/answer record with its sensitive spans (sorted by start)."""

    question: str
    answer: str
    spans: tuple[Span, ...] = ()
    source: str = ""
    line: int = 0
    raw: bool = False  # a raw passage: empty question, no prompt (only BOS), all tokens answer


@dataclass
class LoadReport:
    """What :func:`load_records` read: counts and every skipped record as ``(line, reason)``."""

    path: str
    n_records: int = 0
    n_loaded: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)

    def describe(self) -> str:
        s = f"{self.path}: {self.n_loaded} of {self.n_records} records loaded"
        if self.skipped:
            s += f", {len(self.skipped)} bad record(s) skipped"
        return s


def _check_record(obj, spans: str, merge_overlaps: bool = False,
                  keys: tuple = ("question", "answer")) -> tuple[str, str, tuple[Span, ...]]:
    """Validate one object; raise ``ValueError(reason)`` for a bad one. ``keys``: the
    question and answer fields (``("", "text")`` for a passage: no question)."""
    if isinstance(obj, str):  # a JSON error message from the reader
        raise ValueError(obj)
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    if not keys[0]:
        obj = {"question": "", "answer": obj.get(keys[1]), **{k: v for k, v in obj.items()
                                                            if k == "target_words"}}
        if obj["answer"] is None:
            raise ValueError(f"missing field {keys[1]!r}")
    for key in ("question", "answer"):
        if key not in obj:
            raise ValueError(f"missing field {key!r}")
        if not isinstance(obj[key], str):
            raise ValueError(f"field {key!r} must be a string, got {type(obj[key]).__name__}")
    question, answer = obj["question"], obj["answer"]
    if not answer.strip():
        raise ValueError("empty answer" if keys[0] else f"empty {keys[1]!r} (a blank passage)")
    if spans == "ignore":
        return question, answer, ()
    if "target_words" not in obj:
        if spans == "required":
            raise ValueError("missing field 'target_words'")
        return question, answer, ()
    words = obj["target_words"]
    if not isinstance(words, list):
        raise ValueError(f"field 'target_words' must be a list, got {type(words).__name__}")
    out = []
    for j, w in enumerate(words):
        if not isinstance(w, dict):
            raise ValueError(f"target_words[{j}] must be an object, got {type(w).__name__}")
        for key in ("word", "start", "end"):
            if key not in w:
                raise ValueError(f"target_words[{j}]: missing field {key!r}")
        s, e, word = w["start"], w["end"], w["word"]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (s, e)):
            raise ValueError(f"target_words[{j}]: start and end must be integers, got {s!r}, {e!r}")
        if not isinstance(word, str):
            raise ValueError(f"target_words[{j}]: word must be a string, got {type(word).__name__}")
        if not 0 <= s < e <= len(answer):
            raise ValueError(f"target_words[{j}] {word!r}: span [{s}, {e}) outside the answer "
                             f"(length {len(answer)}) or empty")
        if answer[s:e] != word:
            raise ValueError(f"target_words[{j}]: answer[{s}:{e}] is {answer[s:e]!r}, not {word!r}")
        out.append(Span(s, e, word))
    out.sort(key=lambda sp: (sp.start, sp.end))
    if merge_overlaps:
        return question, answer, _merge_spans(answer, out)
    for a, b in zip(out, out[1:]):
        if b.start < a.end:
            raise ValueError(f"overlapping spans {a.word!r} [{a.start}, {a.end}) and "
                             f"{b.word!r} [{b.start}, {b.end})")
    return question, answer, tuple(out)


def _merge_spans(answer: str, spans) -> tuple[Span, ...]:
    """Overlapping (or touching) sorted spans merged into one span each."""
    merged: list[list[int]] = []
    for sp in spans:
        if merged and sp.start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], sp.end)
        else:
            merged.append([sp.start, sp.end])
    return tuple(Span(a, b, answer[a:b]) for a, b in merged)


def load_records(path: str, *, spans: str = "required", skip_bad: bool = False,
                 max_listed: int = 20, merge_overlaps: bool = False
                 ) -> tuple[list[QARecord], LoadReport]:
    """Read and validate question/answer records from a JSON or JSON-lines file.

    Args:
        path: the file.
        spans: ``"required"`` (forget data: ``target_words`` must be present, may be empty),
            ``"optional"`` (used when present) or ``"ignore"`` (retain data).
        skip_bad: False (default): any bad record raises one ``ValueError`` listing every bad
            record as ``file:line: reason``. True: bad records are skipped, warned about and
            listed in the returned report.
        max_listed: how many bad records the error message / warning spells out.
        merge_overlaps: overlapping spans of a record are merged into one (annotations
            compared character by character) instead of being an error.

    Returns:
        ``(records, report)``. Raises ``ValueError`` when no usable record remains.
    """
    return _load(path, spans=spans, skip_bad=skip_bad, max_listed=max_listed,
                 merge_overlaps=merge_overlaps, passages=False)


def _load(path: str, *, spans: str, skip_bad: bool, max_listed: int, merge_overlaps: bool,
          passages: bool) -> tuple[list[QARecord], LoadReport]:
    if spans not in ("required", "optional", "ignore"):
        raise ValueError(f"spans must be 'required', 'optional' or 'ignore', got {spans!r}")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ValueError(f"cannot read data file {path!r}: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    report = LoadReport(path=path)
    records: list[QARecord] = []
    text = _strip_bom(text)
    if passages and path.lower().endswith(".txt"):
        items = _txt_passages(text)
    elif passages:
        items = ((ln, {"text": v} if isinstance(v, str) else v, err)
                 for ln, v, err in _iter_json_values(path, text))
    else:
        items = ((ln, obj, None) for ln, obj in _iter_json_objects(path, text))
    for line, obj, err in items:
        report.n_records += 1
        try:
            if err is not None:
                raise ValueError(err)
            keys = ("", "text") if passages else ("question", "answer")
            q, a, sp = _check_record(obj, spans, merge_overlaps, keys)
        except ValueError as e:
            report.skipped.append((line, str(e)))
            continue
        records.append(QARecord(q, a, sp, source=path, line=line, raw=passages))
    report.n_loaded = len(records)
    if report.skipped:
        listed = "\n".join(f"  {path}:{ln}: {why}" for ln, why in report.skipped[:max_listed])
        more = len(report.skipped) - max_listed
        if more > 0:
            listed += f"\n  ... and {more} more"
        if not skip_bad and len(report.skipped) == 1:  # one line
            ln, why = report.skipped[0]
            raise UsageError(None, f"{path}:{ln}: {why} (1 bad record; "
                                   "`skip_bad_records=True` skips it)")
        if not skip_bad:
            raise UsageError(None, f"{len(report.skipped)} bad record(s) in {path} "
                                   f"(`skip_bad_records=True` skips them):\n{listed}")
        warnings.warn(f"skipped {len(report.skipped)} bad record(s) of {report.n_records} in "
                      f"{path}:\n{listed}", stacklevel=2)
    if not records:
        raise ValueError(f"{path}: no usable records ({report.n_records} read, "
                         f"{len(report.skipped)} bad)")
    return records, report


def _txt_passages(text: str):
    """``(line, {"text": passage}, None)`` of a text file: passages separated by blank lines."""
    start, block = 1, []
    for i, raw in enumerate(text.splitlines(), start=1):
        if raw.strip():
            if not block:
                start = i
            block.append(raw)
        elif block:
            yield start, {"text": "\n".join(block)}, None
            block = []
    if block:
        yield start, {"text": "\n".join(block)}, None


def load_passages(path: str, *, spans: str = "optional", skip_bad: bool = False,
                  max_listed: int = 20, merge_overlaps: bool = False
                  ) -> tuple[list[QARecord], LoadReport]:
    """Raw passages (``raw=True`` records, empty question): a ``.txt`` file (passages
    separated by blank lines), or JSON / JSON lines of strings or of ``{"text",
    "target_words"}`` objects. Same validation and report as :func:`load_records`."""
    return _load(path, spans=spans, skip_bad=skip_bad, max_listed=max_listed,
                 merge_overlaps=merge_overlaps, passages=True)


def is_passage_file(path: str) -> bool:
    """Whether ``path`` holds raw passages (``.txt``, or JSON whose first value is a string or
    an object with ``text`` and no ``answer``) rather than question/answer records."""
    if path.lower().endswith(".txt"):
        return True
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError):
        return False
    for _, value, err in _iter_json_values(path, text):
        if err is not None:
            return False
        return isinstance(value, str) or (isinstance(value, dict) and "text" in value
                                          and "answer" not in value)
    return False


def load_forget(path: str, *, spans: str = "required", skip_bad: bool = False,
                merge_overlaps: bool = False) -> tuple[list[QARecord], LoadReport]:
    """Forget data of either kind: :func:`load_passages` for a passage file
    (:func:`is_passage_file`), else :func:`load_records`."""
    if is_passage_file(path):
        return load_passages(path, spans="optional" if spans == "required" else spans,
                             skip_bad=skip_bad, merge_overlaps=merge_overlaps)
    return load_records(path, spans=spans, skip_bad=skip_bad, merge_overlaps=merge_overlaps)


def chunk_passages(tokenizer, records: list[QARecord], max_length: int) -> list[QARecord]:
    """Cut every raw passage of ``records`` into pieces of at most ``max_length`` tokens with
    BOS and EOS (cuts at token boundaries; spans clipped to their piece and shifted);
    question/answer records pass unchanged."""
    from dataclasses import replace

    specials = 1 + (tokenizer.bos_token_id is not None)
    budget = max_length - specials
    if budget < 1:
        raise ValueError(f"max_length={max_length} leaves no room for passage tokens")
    out = []
    for r in records:
        if not r.raw:
            out.append(r)
            continue
        offs = tokenizer(r.answer, add_special_tokens=False,
                         return_offsets_mapping=True)["offset_mapping"]
        i = 0
        while i < len(offs):
            j = min(len(offs), i + budget)
            while True:  # re-tokenising a piece may merge differently at its edges
                s, e = offs[i][0], offs[j - 1][1] if j < len(offs) else len(r.answer)
                n = len(tokenizer(r.answer[s:e], add_special_tokens=False)["input_ids"])
                if n <= budget or j - i == 1:
                    break
                j -= max(1, n - budget)
                j = max(j, i + 1)
            piece = r.answer[s:e]
            if piece.strip():
                spans = tuple(Span(max(sp.start, s) - s, min(sp.end, e) - s,
                                   r.answer[max(sp.start, s):min(sp.end, e)])
                              for sp in r.spans if sp.start < e and sp.end > s)
                out.append(replace(r, answer=piece, spans=spans))
            i = j
    return out
