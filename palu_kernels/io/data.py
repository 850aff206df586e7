"""Forget / retain data for PALU, tokenised: prompts, the encoded record with its masks, the
dataset of forget and retain parts, and collation. The records themselves (formats, loading,
validation, passages) are :mod:`palu_kernels.io.records`.

Positions follow the spec (``docs/spec.md``): the row masks produced here are already
*shifted*: ``initiating_mask[t]`` / ``common_mask[t]`` refer to token ``t+1``, so row ``t`` of the
model's logits (which predicts token ``t+1``) lines up with them; the last row of every
sequence and all prompt / padding rows are in neither mask.
"""

from __future__ import annotations

import random
import warnings

import torch

from ..constants import IGNORE_INDEX
from ..masks import initiating_mask
from .records import QARecord

PLAIN_PROMPT = "Question: {question}\nAnswer:"
"""Prompt used when the tokenizer has no chat template; the answer follows after one space."""
PLAIN_ANSWER_PREFIX = " "


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
