"""The one JSON / JSON-lines reader: the trainer's validating loader
(:func:`palu_kernels.io.records.load_records`), the evaluation's TOFU files
(:func:`palu_kernels.eval.tofu.read_json_records`), the demo and the tokenizer texts all read
records through :func:`iter_json_objects`."""

from __future__ import annotations

import json
from typing import List

__all__ = ["iter_json_objects", "iter_json_values", "read_json_objects", "strip_bom"]


def strip_bom(text: str) -> str:
    """``text`` without a leading byte-order mark (editors on Windows write one)."""
    return text[1:] if text.startswith("\ufeff") else text


def iter_json_values(path: str, text: str):
    """Yield ``(line, value, error)`` of ``text`` (the contents of ``path``): a JSON array or
    JSON lines (blank lines skipped); ``error`` is ``None`` or a message (``value`` then
    ``None``). A broken array element ends the iteration. Values may be any JSON value (a
    list of passages is a JSON array of strings). A UTF-8 byte-order mark is skipped."""
    text = strip_bom(text)
    stripped = text.lstrip()
    if stripped.startswith("["):
        dec = json.JSONDecoder()
        pos = len(text) - len(stripped) + 1
        n = len(text)
        while True:
            while pos < n and text[pos] in " \t\r\n,":
                pos += 1
            if pos >= n:
                raise ValueError(f"{path}: JSON array is not closed with ']'")
            if text[pos] == "]":
                return
            line = text.count("\n", 0, pos) + 1
            try:
                obj, pos = dec.raw_decode(text, pos)
            except json.JSONDecodeError as e:
                # One broken element makes the rest of an array unreadable: report and stop.
                yield line, None, f"invalid JSON ({e.msg}); the rest of the array cannot be read"
                return
            yield line, obj, None
    else:
        for i, raw in enumerate(text.splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                yield i, json.loads(raw), None
            except json.JSONDecodeError as e:
                yield i, None, f"invalid JSON ({e.msg} at column {e.colno})"


def iter_json_objects(path: str, text: str):
    """Yield ``(line, object_or_error_message)`` of ``text`` (the contents of ``path``): a JSON
    array or JSON lines (blank lines skipped). A broken array element ends the iteration."""
    for line, obj, err in iter_json_values(path, text):
        yield line, (err if err is not None else obj)


def read_json_objects(path: str) -> List[dict]:
    """Every object of a JSON array / JSON-lines file; ``ValueError`` naming ``path:line`` for
    invalid JSON or an element that is not an object."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    records = []
    for line, obj in iter_json_objects(path, text):
        if isinstance(obj, str):  # the error message
            raise ValueError(f"{path}:{line}: {obj}")
        if not isinstance(obj, dict):
            raise ValueError(f"{path}:{line}: expected a JSON object, got {type(obj).__name__}")
        records.append(obj)
    return records
