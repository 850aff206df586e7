"""``results.md``: the results of every section as tables (rewritten with results.json)."""

from __future__ import annotations

from bench.gpu.core import RUNNING, SECTIONS

def _f(x, spec=".3g") -> str:
    """A number formatted, or an em dash when it was not measured."""
    if x is None or isinstance(x, str):
        return "—" if x is None else x
    try:
        return format(x, spec)
    except (TypeError, ValueError):
        return str(x)


def _pct(x):
    return None if x is None else 100 * x


def _gb(x):
    return None if x is None else x / 1e9


def render_markdown(doc: dict) -> str:
    secs = doc.get("sections", {})
    env = secs.get("environment", {})
    lines = ["# PALU kernels: GPU check", ""]
    if doc.get("dry_run"):
        lines += ["**DRY RUN** on the CPU through the Triton interpreter, tiny shapes: every "
                  "number below only shows that the script works, none means anything.", ""]
    lines += [f"Started {doc.get('started')}, updated {doc.get('updated')}, commit "
              f"{env.get('commit', '?')}, written by `bench/gpu_check.py` (`bash bench/gpu.sh`).",
              ""]
    lines += ["| section | status | seconds |", "|---|---|---:|"]
    for name in ["environment", "cuda_tests", *SECTIONS]:
        if name in secs:
            st = secs[name].get("status", "?")
            if st == RUNNING:
                st = "running (or stopped while running)"
            lines.append(f"| {name} | {st} | {_f(secs[name].get('seconds'), '.0f')} |")
        else:
            lines.append(f"| {name} | not run yet | — |")
    lines.append("")

    if env:
        lines += ["## Environment", ""]
        lines.append(f"{env.get('device_name', '?')}; torch {env.get('torch')} (CUDA "
                     f"{env.get('cuda')}), triton {env.get('triton')}, transformers "
                     f"{env.get('transformers')}, accelerate {env.get('accelerate')}, "
                     f"safetensors {env.get('safetensors')}, hypothesis "
                     f"{env.get('hypothesis')}, Python {env.get('python')}. Peak bandwidth "
                     f"used for the GB/s figures: {_f(env.get('peak_GBps'), '.0f')} GB/s "
                     f"({env.get('peak_source')}).")
        lines.append("")
    t = secs.get("cuda_tests")
    if t:
        lines += ["## CUDA tests (tests/test_triton_cuda.py)", "",
                  f"{t.get('status')}: {t.get('summary') or 'no summary line'}", ""]

    s = secs.get("smoke")
    if s:
        lines += [f"## {SECTIONS['smoke'][0]}", "",
                  "| family | result | checks | failed | largest errors (tolerance) |",
                  "|---|---|---:|---:|---|"]
        for fam, r in s.get("families", {}).items():
            errs = ", ".join(f"{k} {_f(v)}" for k, v in r.get("max_error", {}).items())
            result = r.get("result") if r.get("status") in ("ok", "failed") else r.get("status")
            lines.append(f"| {fam} | {result} | {r.get('checks')} | {r.get('failed')} "
                         f"| {errs or '—'} ({_f(r.get('tolerance'))}) |")
        for fam, r in s.get("families", {}).items():
            for line in r.get("failures", []):
                lines.append(f"- {fam}: {line}")
        lines.append("")

    e = secs.get("exactness")
    if e:
        lines += [f"## {SECTIONS['exactness'][0]} ({e.get('case', '')})", ""]
        for key in ("topk_sets", "gradient", "triton_vs_torch_backend", "triton_vs_fp64_reference"):
            if key in e:
                vals = ", ".join(f"{k} {_f(v)}" for k, v in e[key].items())
                lines.append(f"- {key.replace('_', ' ')}: {vals}")
        lines.append("")

    tm, cp = secs.get("timing", {}), secs.get("compile", {})
    if tm or cp:
        lines += [f"## {SECTIONS['timing'][0]} ({tm.get('case') or cp.get('case', '')})", "",
                  f"Median of {tm.get('reps', '?')} repeats after {tm.get('warmup', '?')} "
                  f"warm-up calls, {tm.get('timer', '')}; peak memory above the inputs during "
                  "forward+backward.", "",
                  "| provider | fwd, no grad (ms) | fwd, grad (ms) | bwd (ms) | fwd+bwd (ms) | "
                  "peak mem (GB) | status |", "|---|---:|---:|---:|---:|---:|---|"]
        provs = dict(tm.get("providers", {}))
        provs.update(cp.get("providers", {}))
        for name, p in provs.items():
            extra = f", compile {_f(p.get('compile_s'), '.1f')} s" if "compile_s" in p else ""
            lines.append(f"| {name} | {_f(p.get('forward_nograd_ms'))} | {_f(p.get('forward_ms'))}"
                         f" | {_f(p.get('backward_ms'))} | {_f(p.get('forward+backward_ms'))} | "
                         f"{_f(_gb(p.get('peak_bytes_above_inputs')))} | {p.get('status')}{extra} |")
        for name, p in tm.get("trainer_path", {}).items():
            lines.append(f"| {name}, reduction none + weighted sum | | | | "
                         f"{_f(p.get('forward+backward_ms'))} | | {p.get('status')} |")
        topk = tm.get("topk", {})
        if topk:
            lines += ["", f"Top-K selection on the {topk.get('rows', '?')} initiating rows: "
                      + ", ".join(f"{n} {_f(topk[n].get('ms'))} ms ({topk[n].get('status')})"
                                  for n in ("topk_threshold", "torch.topk") if n in topk)]
        if cp.get("what"):
            lines += ["", f"compile: {cp['what']}"
                      + (f"; compile cache {cp['compile_cache']}" if cp.get("compile_cache")
                         else "") + "."]
        lines.append("")

    b = secs.get("bandwidth")
    if b and b.get("entries"):
        lines += [f"## {SECTIONS['bandwidth'][0]}", "",
                  f"Peak {_f(b.get('peak_GBps'), '.0f')} GB/s ({b.get('peak_source')}); "
                  f"{b.get('traffic')}: {_f(_gb(b.get('min_bytes')), '.2f')} GB; "
                  f"{b.get('dense_traffic', 'dense floor')}: "
                  f"{_f(_gb(b.get('dense_min_bytes')), '.2f')} GB.", "",
                  "| provider | mode | ms | GB/s | % of peak | % of peak, dense floor |",
                  "|---|---|---:|---:|---:|---:|"]
        for r in b["entries"]:
            lines.append(f"| {r['provider']} | {r['mode']} | {_f(r['ms'])} | {_f(r['GBps'], '.0f')}"
                         f" | {_f(_pct(r['fraction_of_peak']), '.1f')} | "
                         f"{_f(_pct(r.get('fraction_of_peak_dense')), '.1f')} |")
        lines.append("")

    sw = secs.get("sweep")
    if sw and sw.get("points") is not None:
        keys = sw.get("swept", [])
        lines += [f"## {SECTIONS['sweep'][0]}", "", f"{sw.get('mode', '')}; swept: "
                  f"{', '.join(keys) or 'nothing (launcher accepts none of the keywords)'}.", "",
                  "| point | " + " | ".join(keys) + " | fwd (ms) | GB/s | % of peak | "
                  "loss rel. diff vs default | status |",
                  "|---|" + "---:|" * len(keys) + "---:|---:|---:|---:|---|"]
        for p in sw["points"]:
            lines.append(f"| {p.get('point')} | " + " | ".join(str(p.get(k, '')) for k in keys)
                         + f" | {_f(p.get('forward_ms'))} | {_f(p.get('GBps'), '.0f')} | "
                         f"{_f(_pct(p.get('fraction_of_peak')), '.1f')} | "
                         f"{_f(p.get('loss_rel_diff_vs_default'))} | {p.get('status')} |")
        lines.append("")

    tr = secs.get("trainer")
    if tr:
        lines += [f"## {SECTIONS['trainer'][0]}", "", f"Model: {tr.get('model', 'not built')}.",
                  f"Data: {tr.get('data', '—')}; {tr.get('steps', '?')} steps, batch 4, "
                  f"{tr.get('precision', '')}.", "",
                  "| run | s/step (median after the first) | first step (s) | wall (s) | "
                  "peak GPU mem (GB) | status |", "|---|---:|---:|---:|---:|---|"]
        for label, r in tr.get("runs", {}).items():
            lines.append(f"| {label} | {_f(r.get('s_per_step_median_after_first'))} | "
                         f"{_f(r.get('first_step_s'))} | {_f(r.get('wall_s'), '.1f')} | "
                         f"{_f(_gb(r.get('peak_gpu_mem_bytes')))} | {r.get('status')} |")
        lines.append("")
    return "\n".join(lines) + "\n"
