"""MUSE's files: the benchmark's data (:data:`MUSE_FILES`, :func:`load_muse`: the layout in
:mod:`palu_kernels.eval.muse`'s docstring, read and checked) and the evaluation's results
(:func:`write_muse_result` writes ``eval.json`` / ``eval.md``, :func:`read_muse_result`
reads a reference back from an earlier ``eval.json``)."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import List, Optional, Tuple

from ..outputs import atomic_write_text
from .table import format_number, format_table

__all__ = ["CONVENTIONS", "MUSE_FILES", "MuseData", "load_muse", "muse_summary_markdown",
           "read_muse_result", "write_muse_result"]

CONVENTIONS = "muse"
"""``config.conventions`` of every result: MUSE's AUC (forget 0, holdout 1), PrivLeak and
absolute utility. Results without it used the earlier, inverted conventions."""


MUSE_FILES = {
    "verbmem": "verbmem/forget.json",
    "knowmem_forget": "knowmem/forget_qa.json",
    "knowmem_forget_icl": "knowmem/forget_qa_icl.json",
    "knowmem_retain": "knowmem/retain2_qa.json",
    "knowmem_retain_icl": "knowmem/retain2_qa_icl.json",
    "privleak_forget": "privleak/forget.json",
    "privleak_holdout": "privleak/holdout.json",
}


# ------------------------------------------------------------------------------ data


@dataclass
class MuseData:
    """The MUSE evaluation sets (the first ``max_samples`` items of each)."""

    verbmem: List[dict]
    knowmem_forget: List[dict]
    knowmem_forget_icl: List[dict]
    knowmem_retain: List[dict]
    knowmem_retain_icl: List[dict]
    privleak_forget: List[str]
    privleak_holdout: List[str]


def _read_list(path: str) -> list:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"MUSE data file not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, list) or not data:
        raise ValueError(f"{path}: expected a non-empty JSON list, got "
                         f"{type(data).__name__ if not isinstance(data, list) else 'an empty list'}")
    return data


def _check_objects(path: str, items: list, keys: Tuple[str, ...]) -> List[dict]:
    for i, r in enumerate(items):
        if not isinstance(r, dict) or not all(isinstance(r.get(k), str) for k in keys):
            raise ValueError(f"{path}: item {i}: expected an object with string fields "
                             f"{', '.join(keys)}, got {str(r)[:80]!r}")
    return items


def load_muse(data_dir: str, max_samples: Optional[int] = None) -> MuseData:
    """Read and check the MUSE files of ``data_dir`` (see module docstring); the in-context
    examples are never cut by ``max_samples``."""
    if max_samples is not None and (not isinstance(max_samples, int) or max_samples < 1):
        raise ValueError(f"max_samples: expected a positive integer or None, got {max_samples!r}")
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"data_dir: MUSE data directory not found: {data_dir}")
    out = {}
    for name, rel in MUSE_FILES.items():
        path = os.path.join(data_dir, rel)
        items = _read_list(path)
        if name.startswith("privleak"):
            bad = [i for i, x in enumerate(items) if not (isinstance(x, str) and x.strip())]
            if bad:
                raise ValueError(f"{path}: item {bad[0]}: expected a non-empty string passage")
        else:
            keys = ("prompt", "gt") if name == "verbmem" else ("question", "answer")
            items = _check_objects(path, items, keys)
        if max_samples is not None and not name.endswith("_icl"):
            items = items[:max_samples]
        out[name] = items
    return MuseData(**out)


# ------------------------------------------------------------------- saved results, output


def read_muse_result(path: str, flag: str, key: str,
                     max_samples: Optional[int] = None) -> float:
    """``metrics[key]`` of the ``eval.json`` of a previous MUSE evaluation (``key``:
    ``privleak_auc`` for ``--retain-result``, ``knowmem_retain`` for ``--target-result``);
    ``FileNotFoundError`` / ``ValueError`` naming ``flag``. A result computed on another
    ``max_samples`` is refused (its AUC or KnowMem is over other items), and so is one written
    before the MUSE conventions (no ``config.conventions``: its AUC is inverted)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{flag}: file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{flag}: {path} is not JSON ({e.msg})") from None
    cfg = data.get("config") if isinstance(data, dict) else None
    if not isinstance(cfg, dict) or cfg.get("benchmark") != "muse":
        raise ValueError(f"{flag}: {path} is not the eval.json of a MUSE evaluation (expected "
                         "the file that palu-eval writes for the MUSE benchmark)")
    if cfg.get("conventions") != CONVENTIONS:
        raise ValueError(f"{flag}: {path} was written before palu-eval used MUSE's conventions "
                         "(its AUC has forget as the positive class: 1 - MUSE's); evaluate "
                         "that model again")
    value = (data.get("metrics") or {}).get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
        raise ValueError(f"{flag}: {path} has no number metrics.{key}")
    if cfg.get("max_samples") != max_samples:
        raise ValueError(f"{flag}: {path} was computed with max_samples "
                         f"{cfg.get('max_samples')}, this evaluation uses {max_samples}")
    return float(value)


_ROWS = (
    ("verbmem_forget", "VerbMem on forget (ROUGE-L F1)", "lower; retrained model's level"),
    ("knowmem_forget", "KnowMem on forget (ROUGE-L F1)", "lower; retrained model's level"),
    ("knowmem_retain", "Utility: KnowMem on retain (ROUGE-L F1)", "higher"),
    ("privleak_auc", "Min-40% AUC (forget = 0, holdout = 1)", "retrained model's AUC"),
    ("privleak", "PrivLeak (%)", "0 (-100: still memorised; + over-unlearned)"),
    ("knowmem_retain_vs_target", "KnowMem retain / target's (%, not a MUSE metric)", "100"),
)


def muse_summary_markdown(result: dict, title: str = "MUSE evaluation") -> str:
    """A markdown summary of :func:`evaluate_muse`'s result."""
    m, cfg = result["metrics"], result["config"]
    rows = [[label, format_number(m[key]), best] for key, label, best in _ROWS]
    lines = [f"# {title}", "",
             f"Data: `{cfg['data_dir']}`, max samples per set: {cfg['max_samples'] or 'all'}, "
             f"items: {cfg['n']}; new tokens: VerbMem {cfg['verbmem_max_new_tokens']}, "
             f"KnowMem {cfg['knowmem_max_new_tokens']}.", "",
             format_table(["metric", "value", "best"], rows), ""]
    cut = {k: v for k, v in cfg["n_cut"].items() if v}
    if cut:
        lines += [f"Cut to the model's context of {cfg['context']} tokens: {cut}.", ""]
    if m["privleak"] is None:
        lines += ["PrivLeak needs the retrained model (or the eval.json of its evaluation).",
                  ""]
    if m["knowmem_retain_vs_target"] is None and m["target_knowmem_retain"] is not None:
        lines += ["The ratio to the target is undefined: the target model's KnowMem on retain "
                  "is 0.", ""]
    elif m["knowmem_retain_vs_target"] is None:
        lines += ["The ratio to the target needs the target model (or the eval.json of its "
                  "evaluation).", ""]
    lines += ["MUSE's conventions: AUC of the Min-40% score with forget labelled 0 and holdout "
              "1; PrivLeak = (AUC - AUC_retrain) / AUC_retrain x 100; utility = KnowMem on "
              "retain, absolute (MUSE prints VerbMem, KnowMem and utility x 100). "
              "Definitions: `palu_kernels/eval/muse.py`."]
    return "\n".join(lines) + "\n"


def write_muse_result(result: dict, output_dir: str, title: str = "MUSE evaluation"
                      ) -> Tuple[str, str]:
    """Write ``eval.json`` and ``eval.md`` into ``output_dir`` (each atomically)."""
    json_path = os.path.join(output_dir, "eval.json")
    md_path = os.path.join(output_dir, "eval.md")
    atomic_write_text(json_path, json.dumps(result, indent=1, ensure_ascii=False))
    atomic_write_text(md_path, muse_summary_markdown(result, title=title))
    return json_path, md_path
