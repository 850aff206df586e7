"""The static model's arithmetic: the machines, the headline case, passes over a row, the L2
and issue bounds and the predicted time (pure functions, tested in
``tests/test_static_model.py``; the method is in ``bench/static_model.py``'s docstring)."""

from __future__ import annotations

from dataclasses import dataclass, replace

KINDS = ("initiating", "common", "other")
PHASES = ("forward", "backward")
NOTE = "model, not measured"


class ModelError(Exception):
    """A one-line, user-facing error; ``lines`` is what the report had printed before it."""

    def __init__(self, msg: str, lines: list[str] | None = None):
        super().__init__(msg)
        self.lines = lines or []


# --------------------------------------------------------------------------------------------
# The machine, the headline case, the pass table
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Machine:
    """One GPU as the model sees it; the defaults are the H200 SXM of sass_profile.

    ``sms``, ``schedulers``, ``ghz`` and the integer / MUFU rates are the chip's (H100 and H200
    share the GH100 processor; sass_profile's constants replace them when it is loaded, see
    ``with_tool``); ``hbm_tbs`` and ``l2_bytes`` are the part's own (``MACHINES``).
    """

    sms: int = 132
    schedulers: int = 4
    ghz: float = 1.98
    hbm_tbs: float = 4.8
    int_cycles: int = 2  # integer pipe at half rate: 64 results/clock/SM
    mufu_cycles: int = 8  # MUFU: 16 results/clock/SM
    l2_bytes: int = 50 * 2**20  # not in sass_profile
    name: str = "H200"

    @property
    def hbm_bytes_per_s(self) -> float:
        return self.hbm_tbs * 1e12

    @property
    def label(self) -> str:
        return (f"{self.name}: {self.sms} SMs x {self.schedulers} schedulers at {self.ghz} GHz, "
                f"HBM {self.hbm_tbs} TB/s, L2 {self.l2_bytes / 2**20:.0f} MiB")

    @classmethod
    def from_tool(cls, consts: dict) -> "Machine":
        names = {"SMS": "sms", "SCHEDULERS": "schedulers", "GHZ": "ghz", "HBM_TBS": "hbm_tbs",
                 "INT_CYCLES": "int_cycles", "MUFU_CYCLES": "mufu_cycles"}
        return cls(**{names[k]: v for k, v in consts.items() if k in names})

    def with_tool(self, consts: dict) -> "Machine":
        """This part with sass_profile's chip constants (SMs, schedulers, clock, pipe rates);
        its HBM bandwidth and L2 stay its own."""
        names = {"SMS": "sms", "SCHEDULERS": "schedulers", "GHZ": "ghz",
                 "INT_CYCLES": "int_cycles", "MUFU_CYCLES": "mufu_cycles"}
        return replace(self, **{names[k]: v for k, v in consts.items() if k in names})


# The parts this project can be lent (docs: /work/.library/device/KINDS.md and H200.md).
# HBM: the datasheets' peaks (H100 SXM 80 GB HBM3 3.35 TB/s, H200 141 GB HBM3e 4.8 TB/s;
# a device-to-device copy reached about 3.0 and 4.3 TB/s here). L2: what PyTorch reported
# on those machines, 50 MB on the H100 and 60 MB on the H200. Both: 132 SMs, 1.98 GHz boost.
MACHINES = {
    "h100": Machine(hbm_tbs=3.35, l2_bytes=50 * 2**20, name="H100"),
    "h200": Machine(hbm_tbs=4.8, l2_bytes=60 * 2**20, name="H200"),
}


@dataclass(frozen=True)
class Case:
    """The headline case; rows of each kind rounded as ``bench.common.Case`` does."""

    rows: int = 8192
    vocab: int = 128256
    k: int = 5000
    dtype: str = "bf16"
    elem_size: int = 2
    init_frac: float = 0.1
    common_frac: float = 0.6

    def kind_rows(self) -> dict:
        n_init = round(self.rows * self.init_frac)
        n_common = min(round(self.rows * self.common_frac), self.rows - n_init)
        return {"initiating": n_init, "common": n_common, "other": self.rows - n_init - n_common}

    @property
    def row_bytes(self) -> int:
        """One row of one [N, V] tensor (z, r or a gradient)."""
        return self.vocab * self.elem_size

    @property
    def loss_min_bytes(self) -> int:
        """Read z, read r, write the gradient, once per loss-carrying row (the floor before
        issue 23, which left out the zero gradient rows)."""
        n = self.kind_rows()
        return 3 * (n["initiating"] + n["common"]) * self.row_bytes

    @property
    def min_bytes(self) -> int:
        """The floor of a dense gradient: ``loss_min_bytes`` plus one write of a zero gradient
        row for every row without a loss (the gradient is [N, V]: those rows are written
        too, whatever the kernel)."""
        return self.loss_min_bytes + self.kind_rows()["other"] * self.row_bytes


CASE = Case()


@dataclass(frozen=True)
class Pass:
    """One loop's pass(es) over one row: which tensors it reads first, re-reads and writes.

    ``repeat``: how many times the loop runs over the whole row. ``reads``: tensors this row
    reads for the first time (from HBM). ``rereads``: tensors this row read before (L2 or
    HBM); ``reuse``: rows of its own traffic between the two touches of an element (the L2
    model's reuse distance), or ``l2_hit`` to state the hit fraction outright. ``writes``:
    tensors written. Each tensor is one row of ``V`` elements of the kernel's dtype.
    """

    loop: str
    why: str
    repeat: int = 1
    reads: tuple = ()
    rereads: tuple = ()
    reuse: float = 0.0
    writes: tuple = ()
    l2_hit: float | None = None
    reverse: bool = False


def l2_hit_fraction(p: Pass, rows_in_flight: int, row_bytes: int, l2_bytes: int) -> float:
    """Fraction of ``p``'s re-reads served by L2 (see the module docstring).

    ``reverse``: the pass walks the row in the opposite direction to the pass before it, so
    the reuse distance of an element grows from 0 (the tile read last is needed first) to
    twice the average ``reuse``, uniformly; an element hits when its distance fits in the
    row's share of the L2 (``C = L2 / (P * row)`` rows): ``h = min(1, C / (2 * reuse))``.
    """
    if p.l2_hit is not None:
        return p.l2_hit
    if not p.rereads or p.reuse <= 0:
        return 0.0
    share = l2_bytes / (rows_in_flight * row_bytes)
    if p.reverse:
        return min(1.0, share / (2.0 * p.reuse))
    return min(1.0, share / p.reuse)

def issue_cycles(instructions: int, n_int: int, n_mufu: int, m: Machine) -> tuple[int, str]:
    """Scheduler cycles of one warp iteration and the term that sets them (sass_profile's)."""
    terms = {"issue": instructions, "int": m.int_cycles * n_int, "MUFU": m.mufu_cycles * n_mufu}
    bound = max(terms, key=terms.get)
    return terms[bound], bound


def issue_seconds_per_element(instructions: int, n_int: int, n_mufu: int,
                              elements_per_thread: float, m: Machine) -> float:
    """Whole-GPU issue-bound seconds per element of a loop (``e`` elements/thread/iteration)."""
    cycles, _ = issue_cycles(instructions, n_int, n_mufu, m)
    return cycles / (m.sms * m.schedulers * m.ghz * 1e9 * 32 * elements_per_thread)


def unroll_factor(global_bytes_per_thread: int, elements_per_thread: float,
                  bytes_per_element: float) -> int:
    """How many source iterations one SASS iteration of a loop covers (ptxas unrolling).

    The loop's global loads + stores per thread per SASS iteration against what one source
    iteration moves (elements per thread x bytes per element); a loop without global
    accesses counts as not unrolled. Raises ModelError when the ratio is not a whole number.
    """
    expected = elements_per_thread * bytes_per_element
    if global_bytes_per_thread <= 0 or expected <= 0:
        return 1
    ratio = global_bytes_per_thread / expected
    if ratio < 0.95 or abs(ratio - round(ratio)) > 0.05 * round(ratio):
        raise ModelError(f"{global_bytes_per_thread} B per thread per iteration is not a whole "
                         f"multiple of the {expected:g} B one source iteration moves")
    return round(ratio)


def loop_instances(passes: list, loops: dict) -> list:
    """The loop figures that charge each pass of one row kind and phase, in order.

    A role whose source ``for`` compiles to several SASS loops (``tl.static_range`` unrolls
    one source loop into one SASS loop per pass: the selection's digit passes) lists them in
    ``loops[role]["instances"]``, in program order. When the phase has exactly as many passes
    of that role as there are instances, the j-th pass is charged the j-th loop's own cost;
    otherwise (a remainder loop beside an unrolled one, a run-time loop over the passes)
    every pass is charged the role's main loop, ``loops[role]`` itself.
    """
    count: dict = {}
    for p in passes:
        count[p.loop] = count.get(p.loop, 0) + 1
    seen: dict = {}
    out = []
    for p in passes:
        lp = loops[p.loop]
        inst = lp.get("instances") or []
        j = seen.get(p.loop, 0)
        seen[p.loop] = j + 1
        out.append({**lp, **inst[j]} if len(inst) > 1 and len(inst) == count[p.loop] else lp)
    return out


def predict(case: Case, m: Machine, loops: dict, passes: dict, l2_hit: float | None = None):
    """Predicted time of each pass, phase and the whole, for ``case``.

    ``loops``: role -> {"s_per_element": issue-bound seconds per element (whole GPU),
    "rows_in_flight": rows resident on the GPU when that loop's kernel runs, and optionally
    "instances": [{"s_per_element", "label"}...], one per SASS loop of the role (see
    ``loop_instances``)}. ``passes``: the version's pass table. ``l2_hit`` overrides every
    re-read's hit fraction (the bounds). Returns {"passes": [...], "phase_s": {...},
    "total_s", "overlap_s", "min_bytes" (the dense floor), "loss_min_bytes", "ideal_s",
    "roofline" (against the dense floor), "loss_roofline" (against the loss rows' floor
    alone), "forward_roofline"}.
    """
    check_passes(passes, loops)
    rows_of = case.kind_rows()
    out, phase_s = [], dict.fromkeys(PHASES, 0.0)
    sum_bytes, sum_issue = 0.0, 0.0
    for kind in KINDS:
        for phase in PHASES:
            lst = passes[kind][phase]
            for p, lp in zip(lst, loop_instances(lst, loops)):
                h = l2_hit if (l2_hit is not None and p.rereads) else l2_hit_fraction(
                    p, lp["rows_in_flight"], case.row_bytes, m.l2_bytes)
                per_row = p.repeat * case.row_bytes * (
                    len(p.reads) + len(p.rereads) * (1.0 - h) + len(p.writes))
                n = rows_of[kind]
                hbm = n * per_row
                mem_s = hbm / m.hbm_bytes_per_s
                issue_s = n * p.repeat * case.vocab * lp["s_per_element"]
                t = max(mem_s, issue_s)
                phase_s[phase] += t
                sum_bytes += hbm
                sum_issue += issue_s
                out.append({"kind": kind, "phase": phase, "loop": p.loop, "rows": n,
                            "sass": lp.get("label"), "repeat": p.repeat, "l2_hit": h,
                            "hbm_bytes_per_row": per_row,
                            "hbm_bytes": hbm, "mem_s": mem_s, "issue_s": issue_s, "time_s": t,
                            "bound": "memory" if mem_s >= issue_s else "issue", "pass": p})
    total = sum(phase_s.values())
    ideal = case.min_bytes / m.hbm_bytes_per_s
    return {"passes": out, "phase_s": phase_s, "total_s": total,
            "overlap_s": max(sum_bytes / m.hbm_bytes_per_s, sum_issue), "hbm_bytes": sum_bytes,
            "min_bytes": case.min_bytes, "loss_min_bytes": case.loss_min_bytes,
            "ideal_s": ideal, "roofline": ideal / total,
            "loss_roofline": case.loss_min_bytes / m.hbm_bytes_per_s / total,
            "forward_roofline": ideal / phase_s["forward"]}


def check_passes(passes: dict, loops: dict, where: str = "passes") -> None:
    """A pass table has every kind and phase, each a list of Pass over known loop roles."""
    for kind in KINDS:
        for phase in PHASES:
            lst = (passes.get(kind) or {}).get(phase)
            if lst is None:
                raise ModelError(f"the pass table is not written yet: {where}[{kind!r}][{phase!r}]"
                                 " is None (TODO in bench/static/versions.py VERSIONS)")
            for p in lst:
                if p.loop not in loops:
                    raise ModelError(f"{where}[{kind!r}][{phase!r}] names loop {p.loop!r}, which "
                                     f"no job profiles (roles: {', '.join(sorted(loops))})")


def last_line(case: Case, roofline: float, m: Machine) -> str:
    return (f"predicted forward+backward at {case.rows} x {case.vocab} {case.dtype} on the "
            f"{m.name}: {roofline * 100:.0f}% of the HBM roofline, the dense zero gradient rows "
            f"in the floor ({NOTE})")

