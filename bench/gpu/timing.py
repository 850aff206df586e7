"""Sections c and d: ``timing`` (forward, backward, forward+backward of the triton and torch
backends and the released code; the trainer's path; the top-K selection alone), ``compile``
(``torch.compile`` of the reference) and ``bandwidth`` (arithmetic on the measured times)."""

from __future__ import annotations

import os
import time

from bench.gpu.core import Context, Results, _fraction, _gbps, _run_entry, time_ms
from bench.gpu.report import _f, _pct

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
                   "dense_min_bytes": case.dense_min_bytes,
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
    warmed = os.environ.get("PALU_GPU_WARMED") == "1"
    ctx.put(value={"case": case.label(), "what": "torch.compile(reference.palu_loss_reference, "
                   f"backend={backend!r})", "compile_cache": (
                       "warm: bench/gpu/warmup.py compiled the same graphs first, so compile_s "
                       "is a cached compile" if warmed else "as found (no warm-up ran)")})
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


def sec_bandwidth(results: Results) -> str:
    """Arithmetic on the times of ``timing`` and ``compile`` (nothing is measured here)."""
    doc = results.load().get("sections", {})
    env = doc.get("environment", {})
    peak = env.get("peak_GBps")
    timing, comp = doc.get("timing", {}), doc.get("compile", {})
    min_bytes = timing.get("min_bytes") or comp.get("min_bytes")
    dense = timing.get("dense_min_bytes") or comp.get("dense_min_bytes")
    out = {"peak_GBps": peak, "peak_source": env.get("peak_source"),
           "traffic": "minimum forward+backward traffic: read logits and ref_logits, write the "
                      "gradient, for the rows in I or C (bench.common.Case.min_bytes)",
           "dense_traffic": "the same plus one zero gradient row per row without a loss (the "
                            "floor of a dense gradient, bench/static_model.py's roofline)",
           "min_bytes": min_bytes, "dense_min_bytes": dense, "entries": []}
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
                               "fraction_of_peak": _fraction(gbps, peak),
                               "fraction_of_peak_dense": _fraction(_gbps(dense, ms), peak)})
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
