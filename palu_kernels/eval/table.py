"""The one table formatter of the application: numbers and tables (markdown or aligned text)
for ``eval.md`` (:func:`palu_kernels.eval.tofu.summary_markdown`), the comparison
(:mod:`palu_kernels.experiments.compare`) and the demo (:mod:`palu_kernels.demo.table`)."""

from __future__ import annotations

from typing import Optional, Sequence

__all__ = ["format_number", "format_table"]


def format_number(x, digits: int = 4, *, exp_digits: int = 3,
                  large: Optional[float] = 1e4) -> str:
    """``None`` -> ``"n/a"``; a float with ``digits`` decimals, or in scientific notation
    (``exp_digits`` decimals) below ``10 ** -(digits - 1)`` or from ``large`` up; anything
    else as ``str``."""
    if x is None:
        return "n/a"
    if isinstance(x, float):
        if x != 0 and (abs(x) < 10 ** -(digits - 1) or (large is not None and abs(x) >= large)):
            return f"{x:.{exp_digits}e}"
        return f"{x:.{digits}f}"
    return str(x)


def format_table(heads: Sequence[str], cells: Sequence[Sequence[str]], *,
                 markdown: bool = True) -> str:
    """Rows of formatted ``cells`` under ``heads``: a markdown table, or aligned text (first
    column left-aligned, the others right-aligned, a dashed rule under the heads)."""
    if markdown:
        lines = ["| " + " | ".join(heads) + " |", "|" + "|".join("-" * 3 for _ in heads) + "|"]
        lines += ["| " + " | ".join(c) + " |" for c in cells]
        return "\n".join(lines)
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)]

    def line(vals):
        return "  ".join(v.ljust(w) if i == 0 else v.rjust(w)
                         for i, (v, w) in enumerate(zip(vals, widths)))

    return "\n".join([line(heads), line(["-" * w for w in widths])] + [line(c) for c in cells])
