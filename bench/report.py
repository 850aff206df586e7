"""CSV, markdown tables and plots of a sweep (``python -m bench.report results.csv`` redraws)."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from .common import MODES, Case

PROVIDER_ORDER = ("triton", "torch", "reference", "reference_compile", "released",
                  "topk_threshold", "topk_membership", "torch.kthvalue", "torch.topk")
FIELDS = ("timestamp", "device", "device_name", "torch", "triton", "commit", "sections",
          "provider", "mode", "rows", "vocab", "k", "init_frac", "common_frac", "dtype",
          "loss_rows", "metric", "value", "unit", "status", "note")
MIB = 2**20


def to_rows(records, env) -> list[dict]:
    """Flatten ``[(sections, record)]`` to CSV rows: one per provider, mode, shape and metric."""
    rows = []
    for sections, rec in records:
        case = Case(**rec["case"])
        base = {
            "timestamp": env["timestamp"], "device": rec["device"],
            "device_name": env["device_name"], "torch": env["torch"], "triton": env["triton"],
            "commit": env["commit"], "sections": ";".join(sections),
            "provider": rec["provider"], "rows": case.rows, "vocab": case.vocab,
            "k": case.k_eff, "init_frac": case.init_frac, "common_frac": case.common_frac,
            "dtype": case.dtype, "loss_rows": case.loss_rows, "status": rec["status"],
            "note": rec.get("error", ""),
        }

        def add(mode, metric, value, unit):
            rows.append({**base, "mode": mode, "metric": metric, "unit": unit,
                         "value": "" if value is None else round(value, 4)})

        if rec["status"] != "ok":
            add("", "status", None, "")
            continue
        if "topk" in sections:
            res = rec["forward"]
            add("select", "time_ms", res["time_ms"], "ms")
            add("select", "peak_mem_mib", _mib(res["peak_bytes"]), "MiB")
            read = case.rows * case.vocab * case.elem_size  # one read of the reference rows
            gbps = _ratio(read, (res["time_ms"] or 0) * 1e-3 * 1e9)
            add("select", "bandwidth_gbps", gbps, "GB/s")
            add("select", "bandwidth_frac_of_peak", _ratio(gbps, env.get("peak_bandwidth_gbps")),
                "fraction")
            continue
        add("warmup", "warmup_s", rec.get("warmup_s"), "s")
        for mode in MODES:
            res = rec.get(mode)
            if res is None:
                continue
            if "error" in res:  # this mode failed, the others were measured
                rows.append({**base, "mode": mode, "metric": "status", "unit": "",
                             "value": "", "status": "failed", "note": res["error"]})
                continue
            add(mode, "time_ms", res["time_ms"], "ms")
            if res.get("cpu_ms") is not None:
                add(mode, "cpu_ms", res["cpu_ms"], "ms")
            add(mode, "peak_mem_mib", _mib(res["peak_bytes"]), "MiB")
            if mode == "forward+backward" and res["time_ms"]:
                gbps = _ratio(case.min_bytes, res["time_ms"] * 1e-3 * 1e9)
                add(mode, "bandwidth_gbps", gbps, "GB/s")
                add(mode, "bandwidth_frac_of_peak", _ratio(gbps, env.get("peak_bandwidth_gbps")),
                    "fraction")
    return rows


def _ratio(num, den):
    """``num / den``, or None when either is missing, zero or not finite (a peak or a time
    that could not be measured must not turn into a division error or an infinite figure)."""
    import math

    if num is None or not den or not math.isfinite(den) or not math.isfinite(num):
        return None
    return num / den


def _mib(b):
    return None if b is None else b / MIB


def write_csv(rows, path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _key(r):
    return (int(r["rows"]), int(r["vocab"]), int(r["k"]), float(r["init_frac"]),
            float(r["common_frac"]), r["dtype"])


def _index(rows):
    """``{(shape key, provider, mode, metric): row}`` plus failures ``{(key, provider): note}``."""
    vals, fails = {}, {}
    for r in rows:
        if r["status"] != "ok":
            fails[(_key(r), r["provider"])] = f"{r['status']}"
            continue
        vals[(_key(r), r["provider"], r["mode"], r["metric"])] = r
    return vals, fails


def _providers(rows, section):
    present = {r["provider"] for r in rows if section in str(r["sections"]).split(";")}
    return [p for p in PROVIDER_ORDER if p in present]


def _shapes(rows, section):
    return sorted({_key(r) for r in rows if section in str(r["sections"]).split(";")})


def _fmt(x, digits=1):
    x = float(x)
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:,.{digits}f}" if abs(x) >= 1 else f"{x:.3g}"


def _cell(vals, fails, key, p, mode, with_bw=False):
    t = vals.get((key, p, mode, "time_ms"))
    if t is None:
        return fails.get((key, p), "")
    s = f"{_fmt(t['value'])} ms"
    cpu = vals.get((key, p, mode, "cpu_ms"))
    if cpu is not None and cpu["value"] != "":
        s += f" ({_fmt(cpu['value'])} ms CPU)"
    m = vals.get((key, p, mode, "peak_mem_mib"))
    if m is not None and m["value"] != "":
        s += f" / {_fmt(m['value'])} MiB"
    bw = vals.get((key, p, mode, "bandwidth_frac_of_peak"))
    if with_bw and bw is not None:
        s += f" / {100 * float(bw['value']):.0f}%"
    return s


def _shape_label(key):
    rows, vocab, k, i, c, dtype = key
    return f"{rows} x {vocab}, K={k}, I={i:g}, C={c:g}, {dtype}"


SECTION_TITLES = {
    "headline": "Headline shape", "rows": "Against rows", "vocab": "Against V",
    "k": "Against K", "fractions": "Against the initiating / common fractions",
    "dtype": "Other dtype",
}


def headline_shape(rows):
    """The shape of the headline table: the ``headline`` section, else the largest ``rows``."""
    for sec in ("headline", "rows"):
        shapes = _shapes(rows, sec)
        if shapes:
            return max(shapes), sec
    return None, None


def markdown(rows, env) -> str:
    vals, fails = _index(rows)
    lines = [
        f"# PALU loss benchmarks on {env['device_name']}",
        "",
        f"torch {env['torch']}, triton {env['triton']}, commit {env['commit']}, "
        f"{env['timestamp']}; sweep wall time {env.get('wall_s', '?')} s, CPU time "
        f"{env.get('cpu_s', '?')} s on {env.get('cpu_count', '?')} cores, load average "
        f"{env.get('load_average_1min', '?')} at the start, "
        f"{env.get('load_average_1min_end', '?')} at the end.",
        f"Command: `{env.get('command', '?')}`.",
        "",
        f"Cells: median wall time (on CPU: median process CPU time, all threads) / extra peak "
        f"memory above the inputs (/ achieved bandwidth as a "
        f"fraction of the device's peak, {env['peak_bandwidth_gbps']:.1f} GB/s, "
        f"{env['peak_bandwidth_source']}; minimum traffic = 3 x loss rows x V x element "
        "size). Target \"mean\", reverse KL, mean reduction. I, C: fractions of initiating and "
        "common rows.",
    ]
    key, sec = headline_shape(rows)
    if key is not None:
        provs = _providers(rows, sec)
        lines += ["", f"## Headline: {_shape_label(key)}", "",
                  "| provider | " + " | ".join(MODES) + " |",
                  "|---|" + "---:|" * len(MODES)]
        for p in provs:
            lines.append(f"| {p} | " + " | ".join(
                _cell(vals, fails, key, p, m, with_bw=(m == "forward+backward")) for m in MODES)
                + " |")
    for sec, title in SECTION_TITLES.items():
        shapes, provs = _shapes(rows, sec), _providers(rows, sec)
        if not shapes or sec == "headline":
            continue
        lines += ["", f"## {title} (forward+backward)", "",
                  "| shape | " + " | ".join(provs) + " |", "|---|" + "---:|" * len(provs)]
        for key in shapes:
            lines.append(f"| {_shape_label(key)} | " + " | ".join(
                _cell(vals, fails, key, p, "forward+backward", with_bw=True) for p in provs)
                + " |")
    shapes, provs = _shapes(rows, "topk"), _providers(rows, "topk")
    if shapes:
        lines += ["", "## Top-K selection (rows = initiating rows; time / extra peak memory)",
                  "", "| rows x V, K, dtype | " + " | ".join(provs) + " |",
                  "|---|" + "---:|" * len(provs)]
        for key in shapes:
            lines.append(f"| {key[0]} x {key[1]}, K={key[2]}, {key[5]} | " + " | ".join(
                _cell(vals, fails, key, p, "select") for p in provs) + " |")
    failed = sorted({(r["provider"], _shape_label(_key(r)), r["status"], r["note"])
                     for r in rows if r["status"] != "ok"})
    if failed:
        lines += ["", "## Not measured", ""]
        lines += [f"- {p} at {s}: {st} ({n})" for p, s, st, n in failed]
    return "\n".join(lines) + "\n"


def plots(rows, env, out_dir) -> list[Path]:
    """Time and peak memory against rows and against V, one line per provider and mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vals, _ = _index(rows)
    written = []
    for sec, xname, xi in (("rows", "rows", 0), ("vocab", "V", 1)):
        shapes, provs = _shapes(rows, sec), _providers(rows, sec)
        if len(shapes) < 2:
            continue
        metrics = [("time_ms", "median wall time (ms)")]
        if any(key[3] == "cpu_ms" for key in vals):  # CPU runs: process CPU time as well
            metrics.append(("cpu_ms", "median process CPU time (ms)"))
        metrics.append(("peak_mem_mib", "extra peak memory (MiB)"))
        fig, axes = plt.subplots(len(metrics), len(MODES), figsize=(5 * len(MODES),
                                                                    4 * len(metrics)),
                                 squeeze=False)
        for j, mode in enumerate(MODES):
            for i, (metric, ylabel) in enumerate(metrics):
                ax = axes[i][j]
                for p in provs:
                    pts = [(key[xi], float(vals[(key, p, mode, metric)]["value"]))
                           for key in shapes if (key, p, mode, metric) in vals
                           and vals[(key, p, mode, metric)]["value"] != ""]
                    if pts:
                        xs, ys = zip(*pts)
                        ax.plot(xs, ys, marker="o", label=p)
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                ax.set_xlabel(xname)
                ax.set_ylabel(ylabel)
                ax.set_title(mode)
                ax.grid(True, which="both", alpha=0.3)
                if i == 0 and j == 0:
                    ax.legend()
        fixed = shapes[0]
        rest = (f"V={fixed[1]}" if sec == "rows" else f"rows={fixed[0]}")
        fig.suptitle(f"PALU loss on {env['device_name']}: {rest}, K={fixed[2]}, "
                     f"I={fixed[3]:g}, C={fixed[4]:g}, {fixed[5]} ({env['timestamp']})")
        fig.tight_layout()
        path = Path(out_dir) / f"time_memory_vs_{sec}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def main(argv=None) -> int:
    """Redraw ``results.md`` and the plots from a ``results.csv`` (env read from raw.json)."""
    import json

    path = Path((argv or sys.argv[1:])[0])
    rows = read_csv(path)
    env = json.loads((path.parent / "raw.json").read_text())["env"]
    (path.parent / "results.md").write_text(markdown(rows, env))
    plots(rows, env, path.parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
