"""The static model's report: per-loop figures from the SASS profiles (section 1), the
passes per row (section 2) and the predicted times against the HBM roofline (section 3)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from .model import (CASE, MACHINES, NOTE, Case, Machine, ModelError, check_passes,
                    issue_cycles, issue_seconds_per_element, last_line, predict, unroll_factor)
from .sources import SASS_PROFILE, find_loop_lines, materialise, run_profiles
from .versions import VERSIONS

WIDTH_NAMES = {"16": "v4.b32", "8": "v2.b32", "4": "b32", "2": "b16", "1": "b8"}


def _width_text(widths) -> str:
    if widths is None:
        return "n/a (this sass_profile keeps no per-instruction SASS)"
    parts = []
    for kind in ("LDG", "STG"):
        for b, n in sorted(widths[kind].items(), key=lambda kv: -int(kv[0])):
            parts.append(f"{kind} {b} B ({WIDTH_NAMES.get(b, '?')}) x{n}")
    return ", ".join(parts) or "no global access"


def _loop_figures(lp: dict, elements: int, threads: int, tensors: int, case: Case,
                  m: Machine, unroll: int | None = None) -> dict:
    """One SASS loop's per-element figures (raises ModelError from ``unroll_factor``);
    ``unroll`` states the unroll factor of a loop that moves more than its tensors (the
    split-row kernel's rows and records) instead of inferring it from the bytes moved."""
    if unroll is None:
        unroll = unroll_factor(lp["global_bytes_per_thread"], elements / threads,
                               tensors * case.elem_size)
    e = unroll * elements / threads
    g = lp["groups"]
    cycles, bound = issue_cycles(lp["instructions"], g["int"], g["special"], m)
    s_el = issue_seconds_per_element(lp["instructions"], g["int"], g["special"], e, m)
    return {"label": lp["label"], "unroll": unroll, "e": e, "cycles": cycles, "bound": bound,
            "s_per_element": s_el, "instructions_per_element": lp["instructions"] / e,
            "b_el": lp["global_bytes_per_thread"] / e}


def loop_table(version: dict, profiles: dict, where: dict, case: Case, machines):
    """Per role: the loop's profile and model figures; and the report lines of section 1.

    ``machines``: one Machine or a list; the issue bound uses the first (H100 and H200 share
    the chip), the memory- or issue-bound verdict is given against each one's HBM.
    """
    machines = [machines] if isinstance(machines, Machine) else list(machines)
    m = machines[0]
    loops, lines = {}, []
    for job_name, job in version["jobs"].items():
        r = profiles["jobs"][job_name]
        lines += [f"{r['kernel']} ({job_name}; {job['kernel']}, num_warps {r['num_warps']}): "
                  f"registers {r['registers']}, spills {r['spill_store_bytes']} B stored / "
                  f"{r['spill_load_bytes']} B loaded, stack {r['stack_bytes']} B, shared "
                  f"{r['shared_bytes']} B, {r['programs_per_sm']} programs/SM (limited by "
                  f"{r['occupancy_limit']}) = {r['programs_per_sm'] * m.sms} rows in flight",
                  "  PTX global accesses: " + (", ".join(
                      f"{k} x{v}" for k, v in sorted(r["ptx_global"].items())) or "none")]
        for role, spec in job["loops"].items():
            fname, line, how = where[role]
            src = f"{fname}:{line}"
            hits = [lp for lp in r["loops"] if lp["source"] == src]
            if not hits:
                raise ModelError(f"loop {role} ({src}, {how}) is not a loop in the SASS of "
                                 f"{r['kernel']}; its loops: " + ", ".join(
                                     f"{lp['label']} {lp['source']}" for lp in r["loops"]), lines)
            lp = max(hits, key=lambda x: x["instructions"])
            elements = spec["elements"]
            elements = job["constexprs"][elements] if isinstance(elements, str) else elements
            threads = 32 * job["num_warps"]
            try:
                fig = _loop_figures(lp, elements, threads, spec["tensors"], case, m,
                                    spec.get("unroll"))
            except ModelError as e:
                raise ModelError(f"loop {role} ({src}): {e}", lines) from None
            # every SASS loop of this source line, in program order: one per pass when the
            # source loop was unrolled by tl.static_range (see loop_instances)
            instances = []
            for h in sorted(hits, key=lambda x: int(x["head"], 16)):
                try:
                    instances.append(_loop_figures(h, elements, threads, spec["tensors"], case,
                                                   m, spec.get("unroll")))
                except ModelError:
                    instances = []
                    break
            e, unroll, s_el, b_el = fig["e"], fig["unroll"], fig["s_per_element"], fig["b_el"]
            gbs = b_el / s_el / 1e9
            verdicts = {mm.name: "memory-bound" if gbs > mm.hbm_tbs * 1e3 else "issue-bound"
                        for mm in machines}
            loops[role] = {"s_per_element": s_el, "label": lp["label"],
                           "rows_in_flight": r["programs_per_sm"] * m.sms, "kernel": r["kernel"],
                           "source": src, "instructions_per_element": lp["instructions"] / e,
                           "verdict": verdicts[machines[-1].name], "verdicts": verdicts,
                           "registers": r["registers"],
                           "spill_bytes": r["spill_store_bytes"] + r["spill_load_bytes"],
                           "instances": instances if len(instances) > 1 else []}
            g = lp["groups"]
            n_el = lambda k: g[k] / e  # noqa: E731
            on = ", ".join(f"{gbs / mm.hbm_tbs / 10:.0f}% of the {mm.name}'s {mm.hbm_tbs} TB/s"
                           for mm in machines)
            verdict = (next(iter(verdicts.values())) if len(set(verdicts.values())) == 1
                       else ", ".join(f"{v} on the {k}" for k, v in verdicts.items()))
            lines += [
                f"  {role:<10} {src} ({how}; SASS {lp['label']}): {elements} elements per "
                f"source iteration" + (f", unrolled x{unroll} by ptxas" if unroll > 1 else "")
                + f" -> {e:g} elements/thread/iteration",
                f"    {lp['instructions']} SASS instructions/iteration = "
                f"{lp['instructions'] / e:.1f}/element: int {n_el('int'):.1f}, fp32 "
                f"{n_el('fp32'):.1f}, MUFU {n_el('special'):.2f}, memory (global + shared) "
                f"{n_el('memory'):.1f}, "
                f"other {n_el('other'):.1f}; {lp['inner_branches']} branches inside (all paths "
                "counted)",
                f"    global per thread-iteration: {_width_text(lp.get('widths'))}; "
                f"{b_el:g} B/element",
                f"    {NOTE}: {fig['cycles']} cycles/warp-iteration ({fig['bound']}) -> "
                f"{1 / s_el / 1e9:.0f} G elements/s = {s_el * 1e12:.2f} ps/element; at "
                f"{b_el:g} B/element {gbs:.0f} GB/s ({on}): {verdict}",
            ]
            if len(instances) > 1:
                lines.append(f"    {len(instances)} SASS loops at {src}, in program order: "
                             + ", ".join(f"{f['label']} {f['instructions_per_element']:.1f}/"
                                         f"element ({f['s_per_element'] * 1e12:.2f} ps)"
                                         for f in instances)
                             + f"; a phase with {len(instances)} {role} passes is charged "
                             "each its own loop, in this order")
        lines += [f"  warning: {w}" for w in r.get("warnings", [])]
    return loops, lines


def _fmt_bytes(b: float) -> str:
    return f"{b / 1e9:.2f} GB" if b >= 1e9 else f"{b / 1e6:.1f} MB" if b >= 1e6 else \
        f"{b / 1e3:.1f} KB"


def pass_lines(pred: dict, case: Case, m: Machine) -> list:
    rows = case.kind_rows()
    out = [f"row = V x {case.elem_size} B = {_fmt_bytes(case.row_bytes)} of one tensor; "
           f"L2 hit of a re-read = min(1, L2 {m.l2_bytes / 2**20:.0f} MiB / (rows in flight x "
           "reuse x row)), reuse = rows this row streams between the two reads (a reversed "
           "pass: reuse grows from 0 to 2 x its average, h = min(1, share / (2 x reuse)))",
           f"  {'kind':<11}{'phase':<9}{'loop':<10}{'x':>2}  {'reads':<7}{'re-reads':<9}"
           f"{'reuse':>5}{'L2 hit':>7}  {'writes':<9}{'HBM/row':>10}  why"]
    for r in pred["passes"]:
        p = r["pass"]
        reuse = f"{p.reuse:g}" if p.rereads else "-"
        hit = f"{r['l2_hit']:.2f}" if p.rereads else "-"
        out.append(f"  {r['kind']:<11}{r['phase']:<9}{p.loop:<10}{p.repeat:>2}  "
                   f"{' '.join(p.reads) or '-':<7}{' '.join(p.rereads) or '-':<9}"
                   f"{reuse:>5}{hit:>7}  "
                   f"{' '.join(p.writes) or '-':<9}{_fmt_bytes(r['hbm_bytes_per_row']):>10}  "
                   f"{p.why}")
    out.append("  rows: " + ", ".join(f"{k} {v}" for k, v in rows.items()))
    return out


def time_lines(pred: dict, case: Case, m: Machine, bounds: dict) -> list:
    out = [f"  {'kind':<11}{'rows':>5}  {'phase':<9}{'loop':<10}{'SASS':<5}{'HBM':>9}"
           f"{'memory ms':>10}{'issue ms':>10}{'time ms':>9}  bound"]
    for r in pred["passes"]:
        out.append(f"  {r['kind']:<11}{r['rows']:>5}  {r['phase']:<9}{r['loop']:<10}"
                   f"{r.get('sass') or '-':<5}"
                   f"{_fmt_bytes(r['hbm_bytes']):>9}{r['mem_s'] * 1e3:>10.3f}"
                   f"{r['issue_s'] * 1e3:>10.3f}{r['time_s'] * 1e3:>9.3f}  {r['bound']}")
    f_s, b_s, t_s = pred["phase_s"]["forward"], pred["phase_s"]["backward"], pred["total_s"]
    ideal = pred["ideal_s"]
    n = case.kind_rows()
    loss_ideal = pred["loss_min_bytes"] / m.hbm_bytes_per_s
    out += [
        f"predicted forward: {f_s * 1e3:.3f} ms ({NOTE})",
        f"predicted backward: {b_s * 1e3:.3f} ms ({NOTE})",
        f"predicted forward+backward: {t_s * 1e3:.3f} ms, {_fmt_bytes(pred['hbm_bytes'])} of "
        f"HBM traffic ({NOTE})",
        f"minimum traffic of a dense gradient: (3 x {n['initiating'] + n['common']} "
        f"loss-carrying rows + 1 x {n['other']} zero gradient rows) x "
        f"{_fmt_bytes(case.row_bytes)} = {_fmt_bytes(pred['min_bytes'])} = {ideal * 1e3:.3f} ms "
        f"at {m.hbm_tbs} TB/s (the HBM roofline)",
        f"fraction of the HBM roofline: forward {pred['forward_roofline'] * 100:.1f}%, "
        f"forward+backward {pred['roofline'] * 100:.1f}% ({NOTE})",
        f"against the loss-carrying rows alone ({_fmt_bytes(pred['loss_min_bytes'])} = "
        f"{loss_ideal * 1e3:.3f} ms, the floor before issue 23): forward+backward "
        f"{pred['loss_roofline'] * 100:.1f}% ({NOTE})",
        f"bounds of the same model: every re-read from L2 {bounds[1.0] * 1e3:.3f} ms, none "
        f"{bounds[0.0] * 1e3:.3f} ms; perfect overlap of memory- and issue-bound work "
        f"{pred['overlap_s'] * 1e3:.3f} ms ({NOTE})",
    ]
    return out


def parse_machines(choice: str) -> list:
    """``h100``, ``h200`` or ``both`` -> Machines (H100 first); ModelError names the option."""
    if choice == "both":
        return [MACHINES["h100"], MACHINES["h200"]]
    if choice not in MACHINES:
        raise ModelError(f"--machine {choice!r}: choose from {', '.join(MACHINES)}, both")
    return [MACHINES[choice]]


def report(name: str, case: Case = CASE, machines=None) -> tuple[list, dict]:
    """The report lines of one version and its forward+backward roofline fraction per machine
    name (``machines``: Machines, default the H200 alone)."""
    version = VERSIONS[name]
    machines = [MACHINES["h200"]] if machines is None else list(machines)
    if not SASS_PROFILE.is_file():
        raise ModelError(f"{SASS_PROFILE} is missing (the shared tools sit at ../shared/tools)")
    with tempfile.TemporaryDirectory(prefix="static_model_") as tmp:
        tmp = Path(tmp)
        origin = materialise(version["source"], tmp)
        all_loops = {role: spec for job in version["jobs"].values()
                     for role, spec in job["loops"].items()}
        where = find_loop_lines(tmp / "palu_kernels", all_loops)
        profiles = run_profiles(tmp, version["jobs"])
    machines = [m.with_tool(profiles["tool_constants"]) for m in machines]
    n = case.kind_rows()
    names = " and ".join(m.name for m in machines)
    lines = [
        f"static {names} model of the PALU Triton kernels, version {name}: {version['label']} "
        f"({origin}) -- {NOTE}",
        f"triton {profiles['jobs'][next(iter(version['jobs']))]['triton']}, compiled for "
        f"sm_90a by ../shared/tools/sass_profile.py",
        *(f"  {m.label}" for m in machines),
        f"headline case: {case.rows} rows x V {case.vocab}, {case.dtype}, K {case.k}, "
        f"{n['initiating']} initiating / {n['common']} common / {n['other']} other rows, target "
        "mean, reverse KL, gradient written; backward: " + version.get(
            "backward", "the trainer's path"),
        "",
        "1. Kernel loops (SASS for sm_90a; per-element figures are per element of V handled; "
        "the issue bound is the same on both parts)",
    ]
    loops, sec1 = loop_table(version, profiles, where, case, machines)
    lines += sec1
    try:
        check_passes(version["passes"], loops, f"VERSIONS[{name!r}]['passes']")
    except ModelError as e:
        raise ModelError(str(e), lines) from None
    fractions, tail = {}, []
    for m in machines:
        pred = predict(case, m, loops, version["passes"])
        bounds = {h: predict(case, m, loops, version["passes"], l2_hit=h)["total_s"]
                  for h in (0.0, 1.0)}
        lines += ["", f"2. {m.name}: passes per row (hand-written from the kernel source, see "
                  "VERSIONS in bench/static/versions.py)"]
        lines += pass_lines(pred, case, m)
        lines += ["", f"3. {m.name}: predicted time, per row kind and loop max(HBM bytes / "
                  f"{m.hbm_tbs} TB/s, issue-bound time), summed ({NOTE})"]
        lines += time_lines(pred, case, m, bounds)
        fractions[m.name] = pred["roofline"]
        tail.append(last_line(case, pred["roofline"], m))
    lines += ["", *tail]
    return lines, fractions
