"""Forget / retain data for PALU: loading, validation, tokenisation, masks and collation.

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

Positions follow the spec (``docs/spec.md``): the row masks produced here are already
*shifted*: ``initiating_mask[t]`` / ``common_mask[t]`` refer to token ``t+1``, so row ``t`` of the
model's logits (which predicts token ``t+1``) lines up with them; the last row of every
sequence and all prompt / padding rows are in neither mask.
"""

from __future__ import annotations

import random
import warnings
from dataclasses import dataclass, field

import torch

from ..constants import IGNORE_INDEX
from ..errors import UsageError
from ..jsonio import iter_json_objects as _iter_json_objects
from ..jsonio import iter_json_values as _iter_json_values
from ..jsonio import strip_bom as _strip_bom
from ..masks import initiating_mask

PLAIN_PROMPT = "Question: {question}\nAnswer:"
"""Prompt used when the tokenizer has no chat template; the answer follows after one space."""
PLAIN_ANSWER_PREFIX = " "


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


# ----------------------------------------------------------------------------- tokenisation

def format_prompt(tokenizer, question: str) -> tuple[str, str, bool]:
    """``(prompt_text, answer_prefix, prompt_has_specials)`` for ``question``.

    With a chat template: the template applied to one user turn with the generation prompt,
    answer prefix ``""`` (the template's own special tokens are in the text). Otherwise the
    plain ``Question: ...\\nAnswer:`` prompt and answer prefix ``" "``; the tokenizer's BOS (if
    any) is added by :func:`encode_record`. Generation helpers should use the same prompt.
    """
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                             tokenize=False, add_generation_prompt=True)
        return text, "", True
    return PLAIN_PROMPT.format(question=question), PLAIN_ANSWER_PREFIX, False


def prompt_ids(tokenizer, question: str) -> list[int]:
    """Token ids of the prompt exactly as the trainer builds them (for generation)."""
    text, _, has_specials = format_prompt(tokenizer, question)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    if not has_specials and bos is not None and (not ids or ids[0] != bos):
        ids = [bos] + ids
    return ids


class PromptTooLong(ValueError):
    """A record's prompt alone fills ``max_length`` (the message names ``file:line``)."""


def _too_long(record: QARecord, n_prompt: int, max_length: int) -> str:
    return (f"{record.source}:{record.line}: the prompt alone is {n_prompt} tokens, "
            f"max_length={max_length} leaves no room for the answer")


def prompt_too_long(tokenizer, record: QARecord, max_length: int | None) -> str | None:
    """Why ``record`` cannot be encoded within ``max_length`` (``None`` if it can)."""
    if max_length is None:
        return None
    n_prompt = len(prompt_ids(tokenizer, record.question))
    return _too_long(record, n_prompt, max_length) if n_prompt + 1 > max_length else None


def encode_answer(tokenizer, record: QARecord):
    """``(prompt_ids, answer_prefix, encoding)`` of ``record`` as the trainer lays it out: the
    prompt's token ids (a raw passage: just BOS, if any, and every token is an answer token)
    and the answer tokenized after its prefix, without special tokens, with character
    offsets (``return_offsets_mapping``; subtract ``len(answer_prefix)`` for offsets into the
    answer)."""
    if record.raw:
        bos = tokenizer.bos_token_id
        p_ids, prefix = ([] if bos is None else [bos]), ""
    else:
        p_ids = prompt_ids(tokenizer, record.question)
        _, prefix, _ = format_prompt(tokenizer, record.question)
    enc = tokenizer(prefix + record.answer, add_special_tokens=False, return_offsets_mapping=True)
    return p_ids, prefix, enc


def encode_record(tokenizer, record: QARecord, *, max_length: int | None = None,
                  first_n: int | None = 3) -> dict:
    """Tokenise one record and build its labels and PALU row masks.

    Sequence: prompt tokens, answer tokens, EOS. Token-aligned fields (length ``L``):
    ``input_ids``, ``attention_mask``, ``labels`` (``IGNORE_INDEX`` on the prompt, the token
    id on the answer and EOS), ``sensitive`` (answer tokens whose character span overlaps a
    sensitive span; never EOS). Row fields, shifted (row ``t`` refers to token ``t+1``, row
    ``L-1`` is empty): ``initiating_mask`` (first ``first_n`` rows of every sensitive run, via
    :func:`palu_kernels.masks.initiating_mask`) and ``common_mask`` (non-sensitive answer rows,
    EOS included). ``truncated`` says whether ``max_length`` cut the sequence.
    """
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token; set tokenizer.eos_token first")
    p_ids, prefix, enc = encode_answer(tokenizer, record)
    a_ids = list(enc["input_ids"])
    shift = len(prefix)
    sens_ans = []
    for a, b in enc["offset_mapping"]:
        a, b = a - shift, b - shift
        sens_ans.append(a < b and any(a < sp.end and b > sp.start for sp in record.spans))
    ids = p_ids + a_ids + [tokenizer.eos_token_id]
    n_prompt = len(p_ids)
    labels = [IGNORE_INDEX] * n_prompt + a_ids + [tokenizer.eos_token_id]
    sensitive = [False] * n_prompt + sens_ans + [False]
    truncated = False
    if max_length is not None and len(ids) > max_length:
        if n_prompt + 1 > max_length:
            raise PromptTooLong(_too_long(record, n_prompt, max_length))
        ids, labels, sensitive = ids[:max_length], labels[:max_length], sensitive[:max_length]
        truncated = True
    L = len(ids)
    sens_t = torch.tensor(sensitive, dtype=torch.bool)
    answer_t = torch.tensor([lab != IGNORE_INDEX for lab in labels], dtype=torch.bool)
    sens_rows = torch.zeros(L, dtype=torch.bool)
    common_rows = torch.zeros(L, dtype=torch.bool)
    sens_rows[:-1] = sens_t[1:]
    common_rows[:-1] = answer_t[1:] & ~sens_t[1:]
    return {
        "input_ids": torch.tensor(ids, dtype=torch.long),
        "attention_mask": torch.ones(L, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
        "sensitive": sens_t,
        "initiating_mask": initiating_mask(sens_rows, first_n),
        "common_mask": common_rows,
        "truncated": truncated,
    }


class PALUDataset(torch.utils.data.Dataset):
    """Forget records paired with retain records; item ``i`` = ``{"forget": ..., "retain": ...}``.

    Forget item ``i`` is paired with a retain record chosen by a permutation of the retain set
    (seeded by ``seed``) that advances with the epoch (:meth:`set_epoch`), so successive epochs
    see different retain records and a resumed run sees the same pairs. Without retain records
    the items have no ``"retain"`` part.

    A record whose prompt alone does not fit in ``max_length`` (forget or retain, found here,
    not when the record is drawn) raises ``ValueError`` naming ``file:line``, or with
    ``skip_bad`` is left out and listed in ``skipped_forget`` / ``skipped_retain``.
    ``n_initiating``: initiating rows over the whole forget set; ``n_without_spans``: forget
    records without a span.
    """

    def __init__(self, tokenizer, forget: list[QARecord], retain: list[QARecord] | None = None, *,
                 max_length: int | None = 512, first_n: int | None = 3, seed: int = 0,
                 skip_bad: bool = False):
        if not forget:
            raise ValueError("forget records must not be empty")
        self.tokenizer, self.max_length, self.first_n = tokenizer, max_length, first_n
        self.skipped_forget: list[str] = []
        self.skipped_retain: list[str] = []
        self.forget_records, self.forget = [], []
        for r in forget:
            try:
                enc = encode_record(tokenizer, r, max_length=max_length, first_n=first_n)
            except PromptTooLong as e:
                if not skip_bad:
                    raise
                self.skipped_forget.append(str(e))
                continue
            self.forget_records.append(r)
            self.forget.append(enc)
        if not self.forget:
            raise ValueError(f"every forget record was skipped ({len(self.skipped_forget)}; "
                             f"e.g. {self.skipped_forget[0]})")
        self.retain_records = []
        for r in retain or []:
            problem = prompt_too_long(tokenizer, r, max_length)
            if problem:
                if not skip_bad:
                    raise PromptTooLong(problem)
                self.skipped_retain.append(problem)
                continue
            self.retain_records.append(r)
        if retain and not self.retain_records:
            raise ValueError(f"every retain record was skipped ({len(self.skipped_retain)}; "
                             f"e.g. {self.skipped_retain[0]})")
        for part, skipped in (("forget", self.skipped_forget), ("retain", self.skipped_retain)):
            if skipped:
                warnings.warn(f"skipped {len(skipped)} {part} record(s) longer than "
                              f"max_length={max_length}: {skipped[0]}", stacklevel=2)
        self.n_initiating = sum(int(e["initiating_mask"].sum()) for e in self.forget)
        self.n_without_spans = sum(1 for r in self.forget_records if not r.spans)
        self._retain_cache: dict[int, dict] = {}
        self._perm = list(range(len(self.retain_records)))
        random.Random(seed).shuffle(self._perm)
        self.epoch = 0
        n_trunc = sum(e["truncated"] for e in self.forget)
        if n_trunc:
            warnings.warn(f"{n_trunc} of {len(self.forget)} forget records were truncated to "
                          f"max_length={max_length} tokens", stacklevel=2)
        self.n_truncated_retain = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.forget)

    def retain_index(self, i: int) -> int:
        return self._perm[(i + self.epoch * len(self.forget)) % len(self._perm)]

    def encoded_retain(self, j: int) -> dict:
        if j not in self._retain_cache:
            enc = encode_record(self.tokenizer, self.retain_records[j],
                                max_length=self.max_length, first_n=self.first_n)
            self.n_truncated_retain += enc["truncated"]
            self._retain_cache[j] = enc
        return self._retain_cache[j]

    def measurement_items(self, n_retain: int, n_forget: int | None = None) -> list[dict]:
        """A fixed measurement set: every forget item (the first ``n_forget`` when given),
        item ``i`` paired with retain record ``i mod n_retain`` of the seeded permutation (no
        retain part when ``n_retain`` is 0 or there are no retain records); independent of
        the epoch."""
        n = min(n_retain, len(self._perm))
        items = []
        for i in range(len(self.forget) if n_forget is None else min(n_forget, len(self.forget))):
            item = {"forget": self.forget[i]}
            if n:
                item["retain"] = self.encoded_retain(self._perm[i % n])
            items.append(item)
        return items

    def __getitem__(self, i: int) -> dict:
        item = {"forget": self.forget[i]}
        if self._perm:
            item["retain"] = self.encoded_retain(self.retain_index(i))
        return item


def pad_sequences(seqs: list[torch.Tensor], value) -> torch.Tensor:
    n = max(s.shape[0] for s in seqs)
    out = torch.full((len(seqs), n), value, dtype=seqs[0].dtype)
    for i, s in enumerate(seqs):
        out[i, : s.shape[0]] = s
    return out


class PALUCollator:
    """Right-pads the forget and the retain sub-batch separately.

    Output keys: ``forget_input_ids``, ``forget_attention_mask``, ``forget_labels``,
    ``forget_initiating_mask``, ``forget_common_mask`` (bool, shifted rows) and, when the items
    have a retain part, ``retain_input_ids``, ``retain_attention_mask``, ``retain_labels``.
    Padding gets ``pad_token_id``, attention 0, label ``IGNORE_INDEX`` and no mask rows.
    """

    def __init__(self, pad_token_id: int):
        if pad_token_id is None:
            raise ValueError("pad_token_id is None: set tokenizer.pad_token (e.g. to eos_token)")
        self.pad_token_id = int(pad_token_id)

    def __call__(self, items: list[dict]) -> dict:
        out = {}
        for part in ("forget", "retain"):
            if part not in items[0]:
                continue
            encs = [it[part] for it in items]
            out[f"{part}_input_ids"] = pad_sequences([e["input_ids"] for e in encs],
                                                     self.pad_token_id)
            out[f"{part}_attention_mask"] = pad_sequences([e["attention_mask"] for e in encs], 0)
            out[f"{part}_labels"] = pad_sequences([e["labels"] for e in encs], IGNORE_INDEX)
            if part == "forget":
                out["forget_initiating_mask"] = pad_sequences(
                    [e["initiating_mask"] for e in encs], False)
                out["forget_common_mask"] = pad_sequences([e["common_mask"] for e in encs], False)
        return out
