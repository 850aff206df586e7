"""Fused linear PALU loss against the unfused path: peak memory and time of forward+backward.

Run from the repository root, either way::

    python -m bench.bench_fused_linear                 # CPU size, plus the GPU size on CUDA
    python bench/bench_fused_linear.py --rows 2048 --hidden 512 --vocab 32000

Paths (both give gradients of ``hidden`` and ``weight``; the reference side is frozen):

* ``unfused``: ``logits = F.linear(hidden, weight)``, ``ref_logits`` likewise under
  ``no_grad``, then :func:`palu_kernels.palu_local_entropy_loss` and ``backward``: what a
  trainer does with the model's logits;
* ``fused``: :func:`palu_kernels.fused_linear.palu_fused_linear_loss` on the same tensors.

Each path runs in a fresh process. Peak memory is measured above the inputs:

* CPU: the process's resident high-water mark above the resident size right before the
  measured call (``bench.common.RssWindow``: ``malloc_trim``, then ``VmHWM`` reset through
  ``/proc/self/clear_refs``; NaN where Linux's ``/proc`` is missing).
* CUDA: ``torch.cuda.max_memory_allocated`` minus the allocated memory before the call.

Time: median (and best) of ``--repeats`` forward+backward calls after one warm-up call; on a
shared CPU the best-of ratio is the less noisy one.
The masks follow a PALU batch: a share of rows are initiating (``--frac-i``), a share common
(``--frac-c``) and the rest (prompt, padding, redundant sensitive rows) carries no loss.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.common import RssWindow  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PATHS = ("unfused", "fused")


# ---------------------------------------------------------------- measurement (worker side)

def _inputs(cfg, device):
    dtype = DTYPES[cfg["dtype"]]
    g = torch.Generator(device=device).manual_seed(0)
    n, h, v = cfg["rows"], cfg["hidden"], cfg["vocab"]

    def rnd(*shape, scale):
        t = torch.randn(*shape, generator=g, device=device, dtype=dtype)
        return t.mul_(scale)

    hidden = rnd(n, h, scale=1.0).requires_grad_()
    weight = rnd(v, h, scale=h ** -0.5).requires_grad_()
    ref_hidden = rnd(n, h, scale=1.0)
    ref_weight = rnd(v, h, scale=h ** -0.5)
    u = torch.rand(n, generator=g, device=device)
    i_mask = u < cfg["frac_i"]
    c_mask = (u >= cfg["frac_i"]) & (u < cfg["frac_i"] + cfg["frac_c"])
    return hidden, weight, ref_hidden, ref_weight, i_mask, c_mask


def _step(path, tensors, cfg):
    from palu_kernels.fused_linear import palu_fused_linear_loss
    from palu_kernels.loss import palu_local_entropy_loss

    hidden, weight, ref_hidden, ref_weight, i_mask, c_mask = tensors
    kw = dict(k=cfg["k"], backend=cfg["backend"])
    if path == "fused":
        loss = palu_fused_linear_loss(hidden, weight, ref_hidden, ref_weight, i_mask, c_mask,
                                      chunk_rows=cfg["chunk_rows"], **kw)
    else:
        logits = F.linear(hidden, weight)
        with torch.no_grad():
            ref_logits = F.linear(ref_hidden, ref_weight)
        loss = palu_local_entropy_loss(logits, ref_logits, i_mask, c_mask, **kw)
    loss.backward()
    return loss.detach()


def worker(path, cfg):
    """Measure one path in this (fresh) process; returns a dict.

    One warm-up call (library initialisation, thread pools, lazy imports), then
    ``repeats`` calls, each timed and with its own peak measured from a reset counter.
    """
    import palu_kernels.fused_linear  # noqa: F401  (imports outside the measured calls)
    import palu_kernels.loss  # noqa: F401

    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    device = torch.device(cfg["device"])
    torch.manual_seed(0)
    tensors = _inputs(cfg, device)
    hidden, weight = tensors[:2]
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    loss = _step(path, tensors, cfg)  # warm-up
    # summary of the gradients, to check that both paths agree
    check = {"loss": float(loss), "grad_hidden_norm": float(hidden.grad.double().norm()),
             "grad_weight_norm": float(weight.grad.double().norm())}
    times, cpu_times, peaks = [], [], []
    for _ in range(cfg["repeats"]):
        hidden.grad = weight.grad = None
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        window = RssWindow() if not cuda else None
        with window or contextlib.nullcontext():
            t0, c0 = time.perf_counter(), time.process_time()
            _step(path, tensors, cfg)
            sync()
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
        if cuda:
            peaks.append((torch.cuda.max_memory_allocated() - base) / 2 ** 20)
        else:
            peaks.append(float("nan") if window.extra is None else window.extra / 2 ** 20)
    return {"path": path, "peak_mib": max(peaks), "peaks_mib": peaks,
            "median_s": statistics.median(times), "times_s": times, "cpu_s": cpu_times, **check}


# ---------------------------------------------------------------- driver

def _spawn(path, cfg):
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = here + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "bench.bench_fused_linear", "--worker", path,
           "--config", json.dumps(cfg)]
    if not os.path.exists(os.path.join(here, "bench", "__init__.py")):
        cmd[1:3] = [os.path.abspath(__file__)]
    out = subprocess.run(cmd, cwd=here, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{path} worker failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(cfg):
    """Run both paths on ``cfg`` in fresh processes; print and return the results."""
    from palu_kernels.fused_linear import default_chunk_rows

    chunk = cfg["chunk_rows"] or default_chunk_rows(cfg["vocab"], cfg["hidden"],
                                                   device_type=cfg["device"])
    print(f"\n== {cfg['device']}: rows={cfg['rows']} hidden={cfg['hidden']} "
          f"vocab={cfg['vocab']} dtype={cfg['dtype']} k={cfg['k']} backend={cfg['backend']} "
          f"chunk_rows={chunk}{'' if cfg['chunk_rows'] else ' (default)'} "
          f"frac_i={cfg['frac_i']} frac_c={cfg['frac_c']} repeats={cfg['repeats']} "
          f"threads={cfg['threads'] or torch.get_num_threads()}")
    res = {}
    for path in PATHS:
        res[path] = r = _spawn(path, cfg)
        print(f"{path:8s} peak_above_inputs={r['peak_mib']:9.1f} MiB  "
              f"fwd+bwd median={r['median_s'] * 1e3:9.1f} ms  "
              f"peaks_mib={[round(m, 1) for m in r['peaks_mib']]}  "
              f"process_cpu_ms={[round(t * 1e3) for t in r['cpu_s']]}  times_ms={[round(t * 1e3, 1) for t in r['times_s']]}  loss={r['loss']:.6g}  "
              f"|grad_h|={r['grad_hidden_norm']:.6g}  |grad_w|={r['grad_weight_norm']:.6g}",
              flush=True)
    f, u = res["fused"], res["unfused"]
    rel = max(abs(f[key] - u[key]) / max(abs(u[key]), 1e-30)
              for key in ("loss", "grad_hidden_norm", "grad_weight_norm"))
    mem_ratio = u["peak_mib"] / max(f["peak_mib"], 1e-9)
    time_ratio = f["median_s"] / u["median_s"]
    min_ratio = min(f["times_s"]) / min(u["times_s"])
    cpu_ratio = statistics.median(f["cpu_s"]) / statistics.median(u["cpu_s"])
    logits_mib = cfg["rows"] * cfg["vocab"] * torch.finfo(DTYPES[cfg["dtype"]]).bits / 8 / 2**20
    print(f"one model's logits: {logits_mib:.1f} MiB; unfused/fused peak memory = "
          f"{mem_ratio:.2f}x (goal >= 4x); fused/unfused time = {time_ratio:.2f}x "
          f"(goal <= 1.3x; best-of-repeats ratio {min_ratio:.2f}x, "
          f"process CPU time ratio {cpu_ratio:.2f}x); max relative difference of loss and gradient norms = {rel:.2e}")
    print("load average after:", " ".join(f"{x:.2f}" for x in os.getloadavg()))
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=2048)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--dtype", choices=DTYPES, default="fp32")
    p.add_argument("--k", type=int, default=5000)
    p.add_argument("--chunk-rows", type=int, default=None)
    p.add_argument("--frac-i", type=float, default=0.05, help="share of initiating rows")
    p.add_argument("--frac-c", type=float, default=0.65, help="share of common rows")
    p.add_argument("--repeats", type=int, default=3, help="measured calls after one warm-up")
    p.add_argument("--backend", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--no-gpu", action="store_true", help="skip the GPU size even on CUDA")
    p.add_argument("--gpu-only", action="store_true", help="only the GPU size")
    p.add_argument("--worker", choices=PATHS, help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(a.worker, json.loads(a.config))))
        return

    prog = "python -m bench.bench_fused_linear" if __package__ else "python " + sys.argv[0]
    print("command:", " ".join([prog] + sys.argv[1:]))
    print(f"torch {torch.__version__}, {os.cpu_count()} CPU(s), "
          f"cuda={'yes: ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no'}, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} (a shared machine "
          "inflates wall times)")
    base = dict(k=a.k, chunk_rows=a.chunk_rows, frac_i=a.frac_i, frac_c=a.frac_c,
                repeats=a.repeats, backend=a.backend, threads=a.threads)
    if not a.gpu_only:
        compare(dict(base, device="cpu", rows=a.rows, hidden=a.hidden, vocab=a.vocab,
                     dtype=a.dtype))
    if torch.cuda.is_available() and not a.no_gpu:
        compare(dict(base, device="cuda", rows=8192, hidden=4096, vocab=128256, dtype="bf16"))


if __name__ == "__main__":
    main()
