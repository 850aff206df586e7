"""The demo's result table: one row per model (fine-tuned, retain, each method)."""

from __future__ import annotations

from typing import Dict, List

from ..eval.table import format_number
from ..eval.table import format_table as format_table_cells

__all__ = ["format_table", "table_rows"]


def _fmt(x) -> str:
    return format_number(x, exp_digits=2, large=None)


_COLUMNS = (
    ("model", "model"),
    ("forget_quality", "Forget Quality"),
    ("model_utility", "Model Utility"),
    ("forget_probability", "forget prob"),
    ("forget_rouge", "forget ROUGE-L"),
    ("retain_probability", "retain prob"),
    ("retain_rouge", "retain ROUGE-L"),
    ("seconds", "time (s)"),
)


def table_rows(results: Dict[str, dict]) -> List[dict]:
    out = []
    for name, r in results.items():
        m = r["eval"]["metrics"]
        out.append({"model": name, "forget_quality": m["forget_quality"],
                    "model_utility": m["model_utility"],
                    "forget_probability": m["forget"]["probability"],
                    "forget_rouge": m["forget"].get("rouge_l_recall"),
                    "retain_probability": m["retain"]["probability"],
                    "retain_rouge": m["retain"].get("rouge_l_recall"),
                    "seconds": r.get("seconds")})
    return out


def format_table(rows: List[dict], markdown: bool = False) -> str:
    """The result table, as aligned text (``markdown=False``) or a markdown table."""
    heads = [h for _, h in _COLUMNS]
    cells = [[("n/a" if r[k] is None else f"{r[k]:.1f}") if k == "seconds" else _fmt(r[k])
              for k, _ in _COLUMNS]
             for r in rows]
    return format_table_cells(heads, cells, markdown=markdown)
