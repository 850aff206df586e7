"""The experiment cache's keys and files: :func:`config_hash` (a configuration's key),
:func:`file_sha` (a file named in a run is keyed by its content), :func:`read_cached` (a
cached JSON, or ``None`` with a warning when damaged) and :func:`check_run` (a cached run
has every field a row reads)."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from typing import Callable, List

__all__ = ["check_run", "config_hash", "file_knobs", "file_sha", "read_cached"]


def config_hash(obj) -> str:
    """16 hex digits of the SHA-256 of ``obj`` as canonical JSON."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def file_knobs() -> List[str]:
    """The method settings that name a file (hashed by content, like ``forget_file``)."""
    from ..train.registry import all_knobs

    return [name for name, decl in all_knobs().items() if next(iter(decl.values())).file]


def file_sha(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read())
    return h.hexdigest()[:16]


def read_cached(path: str, parse: Callable):
    """``parse(the JSON of path)``; ``None`` when ``path`` does not exist, or is damaged (not
    JSON, truncated, missing fields): then a warning names it, and the caller redoes it."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return parse(json.load(f))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        why = f"missing {e}" if isinstance(e, KeyError) else str(e)
        # (from here, not the caller: a file read twice before it is redone warns once)
        warnings.warn(f"{path}: damaged cache file ({type(e).__name__}: {why}); redoing it")
        return None


def check_run(res: dict) -> dict:
    """A cached run's result, with every field :meth:`~palu_kernels.experiments.harness.Harness.row` reads (``KeyError`` /
    ``TypeError`` otherwise)."""
    for key in ("key", "seed", "setup", "steps", "train_s"):
        res[key]  # noqa: B018 - presence
    res["spec"]["method"]
    m = res["metrics"]
    for key in ("forget_quality", "model_utility"):
        m[key]
    m["forget"]["probability"], m["forget"]["rouge_l_recall"], m["retain"]["probability"]
    return res
