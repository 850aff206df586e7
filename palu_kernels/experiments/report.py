"""The report of an experiment: :class:`Report` (its rows, tables, plot and notes),
:func:`aggregate` (rows over seeds) and :func:`write_report` (``results.csv``, ``results.md``
and the PNG)."""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

from ..eval.table import format_number, format_table
from ..outputs import atomic_write_text

__all__ = ["Report", "aggregate", "write_report"]


@dataclass
class Report:
    """What an experiment returns. ``rows``: ``results.csv`` (one per run, or aggregated);
    ``tables``: ``(heading, [(key, column header)], rows)`` for ``results.md``, optionally with
    a fourth element, markdown shown under the table; ``plot``: a
    function writing the PNG to the path given; ``notes``: markdown after the tables."""

    title: str
    rows: List[dict]
    tables: List[tuple] = field(default_factory=list)
    plot: Optional[Callable[[str], None]] = None
    notes: str = ""
    png: str = "results.png"


def _cell(v) -> str:
    if isinstance(v, float):
        return format_number(v)
    return "-" if v is None else str(v)


def aggregate(rows: Sequence[dict], by: Sequence[str]) -> List[dict]:
    """One row per distinct value of the ``by`` keys, over seeds: ``fq_median``, ``fq_min``,
    ``fq_max``, ``mu_mean``, ``mu_std``, ``forget_prob_mean``, ``n_seeds`` (first-seen order)."""
    import statistics as st

    groups: Dict[tuple, List[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in by), []).append(r)
    out = []
    for key, rs in groups.items():
        fq = [r["forget_quality"] for r in rs if r["forget_quality"] is not None]
        mu = [r["model_utility"] for r in rs]
        fp = [r["forget_probability"] for r in rs]
        out.append({**dict(zip(by, key)),
                    "fq_median": st.median(fq) if fq else None,
                    "fq_min": min(fq) if fq else None, "fq_max": max(fq) if fq else None,
                    "mu_mean": st.fmean(mu), "mu_std": st.pstdev(mu) if len(mu) > 1 else 0.0,
                    "forget_prob_mean": st.fmean(fp), "n_seeds": len(rs)})
    return out


def write_report(report: Report, out: str, command: str = "") -> dict:
    """``results.csv``, ``results.md`` and the PNG of ``report`` in ``out``; returns the paths."""
    os.makedirs(out, exist_ok=True)
    keys: List[str] = []
    for r in report.rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    w.writeheader()
    for r in report.rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in keys})
    paths = {"csv": os.path.join(out, "results.csv"), "md": os.path.join(out, "results.md"),
             "png": None}
    atomic_write_text(paths["csv"], buf.getvalue())
    if report.plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        png = os.path.join(out, report.png)
        tmp = png + ".tmp.png"
        report.plot(tmp)
        os.replace(tmp, png)
        paths["png"] = png
    md = [f"# {report.title}", ""]
    if command:
        md += ["```", command, "```", ""]
    for heading, cols, rows, *after in report.tables:
        md += [f"## {heading}", "", format_table([h for _, h in cols],
                                                 [[_cell(r.get(k)) for k, _ in cols]
                                                  for r in rows]), ""]
        md += [text.strip() + "\n" for text in after if text]
    if report.notes:
        md += [report.notes.strip(), ""]
    if paths["png"]:
        md += [f"![{report.title}]({report.png})", ""]
    atomic_write_text(paths["md"], "\n".join(md))
    return paths
