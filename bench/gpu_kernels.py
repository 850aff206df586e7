"""GPU check of the fused Triton kernels: correctness at scale, times and achieved bandwidth.

At a realistic shape (default 8192 rows x V = 128256, bf16, K = 5000, 10% initiating and 60%
common rows) it times forward, backward and forward+backward of

* ``triton``   - ``palu_local_entropy_loss(..., backend="triton")`` (the fused kernels),
* ``torch``    - the chunked torch backend,
* ``released`` - ``reference.palu_loss_released`` (the authors' arithmetic, plain autograd),

plus the top-K selection alone (``topk_threshold`` against ``torch.topk`` on the initiating
rows), and reports the achieved bandwidth against the device's peak. The minimum traffic of
forward+backward is one read of ``z`` and ``r`` and one write of the gradient for the rows
that carry loss (``bench.common.Case.min_bytes``).

Run from the repository root::

    python -m bench.gpu_kernels                  # on a GPU; JSON to $PALU_BENCH_OUT if set
    TRITON_INTERPRET=1 python -m bench.gpu_kernels --tiny   # CPU smoke run of this script

``--tiny`` shrinks the shape so the script runs anywhere (the Triton interpreter on CPU); its
numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from bench.common import Case, environment, make_inputs, peak_bandwidth_gbps

PROVIDERS = ("triton", "torch", "released")


def provider(name: str, k: int | None):
    from palu_kernels import palu_local_entropy_loss
    from reference.palu import palu_loss_released

    if name == "released":
        return lambda z, r, i, c: palu_loss_released(z, r, i, c, k=k)
    return lambda z, r, i, c: palu_local_entropy_loss(z, r, i, c, k=k, backend=name)


def time_ms(fn, *, cuda: bool, reps: int, setup=None) -> float:
    """Median wall time of ``fn(setup())`` in ms (CUDA events on a GPU; no L2 flush between
    repeats of different rows, which cannot help a 4 GB working set)."""
    times = []
    for rep in range(reps + 1):  # the first call warms up (JIT compilation)
        arg = setup() if setup else None
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn(arg)
            end.record()
            torch.cuda.synchronize()
            ms = start.elapsed_time(end)
        else:
            t = time.perf_counter()
            fn(arg)
            ms = 1e3 * (time.perf_counter() - t)
        if rep:
            times.append(ms)
    return statistics.median(times)


def measure(name: str, case: Case, device: str, reps: int) -> dict:
    cuda = device == "cuda"
    fn = provider(name, case.k)
    z, r, i, c = make_inputs(case, device)

    def fwd(_):
        with torch.no_grad():
            return fn(z, r, i, c)

    def fwd_bwd(_):
        z.grad = None
        fn(z, r, i, c).backward()

    def make_loss():
        z.grad = None
        return fn(z, r, i, c)

    out = {"provider": name}
    try:
        out["forward_ms"] = time_ms(fwd, cuda=cuda, reps=reps)
        out["forward_grad_ms"] = time_ms(lambda _: make_loss(), cuda=cuda, reps=reps)
        out["backward_ms"] = time_ms(lambda loss: loss.backward(), cuda=cuda, reps=reps,
                                     setup=make_loss)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        out["forward+backward_ms"] = time_ms(fwd_bwd, cuda=cuda, reps=reps)
        if cuda:
            out["peak_bytes_above_inputs"] = torch.cuda.max_memory_allocated() - base
        out["status"] = "ok"
    except Exception as e:  # noqa: BLE001 - an out-of-memory baseline is a result
        out["status"] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    finally:
        z.grad = None
        del z, r, i, c
        if cuda:
            torch.cuda.empty_cache()
    return out


def measure_topk(case: Case, device: str, reps: int) -> dict:
    from palu_kernels.ops.topk import topk_threshold

    cuda = device == "cuda"
    z, r, i, _ = make_inputs(case, device, requires_grad=False)
    rows = r[i]  # the initiating rows, the only ones that pay for a selection
    k = case.k_eff
    res = {"rows": int(rows.shape[0])}
    res["topk_threshold_ms"] = time_ms(lambda _: topk_threshold(rows, k), cuda=cuda, reps=reps)
    res["torch.topk_ms"] = time_ms(lambda _: torch.topk(rows, k, dim=1), cuda=cuda, reps=reps)
    read = rows.numel() * rows.element_size()
    res["topk_threshold_GBps_per_pass"] = read / res["topk_threshold_ms"] / 1e6
    del z, r, i, rows
    return res


def check_against_torch_backend(case: Case, device: str) -> dict:
    """Loss and gradient of the triton backend against the torch backend on a slice."""
    small = Case(rows=min(case.rows, 256), vocab=case.vocab, k=case.k, dtype=case.dtype,
                 init_frac=case.init_frac, common_frac=case.common_frac)
    out = {}
    for name in ("triton", "torch"):
        z, r, i, c = make_inputs(small, device)
        loss = provider(name, small.k)(z, r, i, c)
        loss.backward()
        out[name] = (loss.detach().double().cpu(), z.grad.double().cpu())
    (a, ga), (b, gb) = out["triton"], out["torch"]
    return {"rows": small.rows, "loss_triton": a.item(), "loss_torch": b.item(),
            "loss_rel_diff": abs(a - b).item() / max(abs(b).item(), 1e-30),
            "grad_max_abs_diff": (ga - gb).abs().max().item(),
            "grad_max_abs": gb.abs().max().item()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=8192)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--k", type=int, default=5000)
    ap.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    ap.add_argument("--init-frac", type=float, default=0.1)
    ap.add_argument("--common-frac", type=float, default=0.6)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--providers", default=",".join(PROVIDERS))
    ap.add_argument("--tiny", action="store_true",
                    help="16 x 1000, 1 repeat: a smoke run that works on the CPU interpreter")
    ap.add_argument("--out", default=os.environ.get("PALU_BENCH_OUT"),
                    help="folder for gpu_kernels.json (default: $PALU_BENCH_OUT, else none)")
    args = ap.parse_args(argv)
    if args.tiny:
        args.rows, args.vocab, args.k, args.reps = 16, 1000, 50, 1

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and os.environ.get("TRITON_INTERPRET", "0") != "1":
        raise SystemExit("no CUDA device: run on a GPU, or with TRITON_INTERPRET=1 --tiny")
    case = Case(rows=args.rows, vocab=args.vocab, k=args.k, init_frac=args.init_frac,
                common_frac=args.common_frac, dtype=args.dtype)
    peak, peak_src = peak_bandwidth_gbps(device)
    report = {"environment": environment(device), "case": case.to_dict(),
              "loss_rows": case.loss_rows, "min_bytes": case.min_bytes,
              "peak_GBps": peak, "peak_source": peak_src, "results": []}
    print(f"{report['environment']['device_name']}: {case.label()}, loss rows "
          f"{case.loss_rows}, minimum fwd+bwd traffic {case.min_bytes / 1e9:.2f} GB, "
          f"peak {peak:.0f} GB/s ({peak_src})", flush=True)

    report["check"] = check_against_torch_backend(case, device)
    print("triton vs torch backend:", report["check"], flush=True)

    print(f"{'provider':<10}{'fwd ms':>10}{'fwd+grad ms':>13}{'bwd ms':>10}{'fwd+bwd ms':>12}"
          f"{'GB/s':>9}{'% peak':>8}{'peak mem GB':>13}")
    for name in args.providers.split(","):
        res = measure(name, case, device, args.reps)
        if res["status"] == "ok":
            gbps = case.min_bytes / res["forward+backward_ms"] / 1e6
            res["achieved_GBps"] = gbps
            res["fraction_of_peak"] = gbps / peak
            mem = res.get("peak_bytes_above_inputs")
            print(f"{name:<10}{res['forward_ms']:>10.2f}{res['forward_grad_ms']:>13.2f}"
                  f"{res['backward_ms']:>10.2f}{res['forward+backward_ms']:>12.2f}{gbps:>9.0f}"
                  f"{100 * gbps / peak:>7.1f}%"
                  f"{(mem / 1e9 if mem is not None else float('nan')):>13.2f}", flush=True)
        else:
            print(f"{name:<10} {res['status']}", flush=True)
        report["results"].append(res)

    report["topk"] = measure_topk(case, device, args.reps)
    print("top-K selection on the initiating rows:", report["topk"], flush=True)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, "gpu_kernels.json")
        with open(path, "w") as f:
            json.dump(report, f, indent=1)
        print("wrote", path)
    return report


if __name__ == "__main__":
    main()
