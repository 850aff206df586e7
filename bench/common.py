"""Shared pieces of the PALU benchmarks: shapes, inputs, providers and measurements.

Measurements
------------
* **Time**: median over repeats. On CUDA, ``triton.testing.do_bench`` (its own warm-up,
  L2 flush, ``grad_to_none``). On CPU, one warm-up call (it absorbs ``torch.compile``'s
  compilation, which is reported apart as ``warmup_s``), then ``reps`` timed repeats; each
  repeat times the forward and the backward separately, so the three modes come from the
  same calls (``forward+backward`` = forward + backward of one repeat).
* **Peak memory above the inputs**: on CUDA, ``torch.cuda.max_memory_allocated`` minus the
  memory allocated when the mode starts. On CPU, the process's real resident peak: the peak
  RSS counter (``VmHWM``) is reset through ``/proc/self/clear_refs`` right before the
  measured call and read right after, minus the RSS at that moment. Before that,
  ``malloc_trim(0)`` hands memory the C allocator kept from earlier calls back to the OS, so
  that no peak hides in it. Each provider runs in its own fresh process. The ``backward`` figure is
  measured above the state after the forward (saved tensors included in the baseline);
  ``forward`` and ``forward+backward`` above the inputs.
* **Achieved bandwidth** (``forward+backward`` only): the minimum traffic, one read of
  ``logits`` and ``ref_logits`` and one write of the gradient for the rows that carry loss
  (``3 x (|I| + |C|) x V x element size``), divided by the median time.
"""

from __future__ import annotations

import datetime
import gc
import os
import platform
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass

import torch

PROVIDERS = ("triton", "torch", "reference", "reference_compile", "released")
MODES = ("forward", "backward", "forward+backward")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Case:
    """One benchmark shape: ``rows`` x ``vocab`` logits, top-K size and mask fractions.

    ``k=None`` means the whole vocabulary. The first ``round(rows * init_frac)`` rows of a
    seeded permutation are initiating, the next ``round(rows * common_frac)`` common
    (disjoint by construction); the rest carry no loss.
    """

    rows: int
    vocab: int
    k: int | None = 5000
    init_frac: float = 0.1
    common_frac: float = 0.6
    dtype: str = "fp32"
    seed: int = 0

    @property
    def k_eff(self) -> int:
        return self.vocab if self.k is None else min(self.k, self.vocab)

    @property
    def n_init(self) -> int:
        return round(self.rows * self.init_frac)

    @property
    def n_common(self) -> int:
        return min(round(self.rows * self.common_frac), self.rows - self.n_init)

    @property
    def loss_rows(self) -> int:
        return self.n_init + self.n_common

    @property
    def elem_size(self) -> int:
        return torch.empty((), dtype=DTYPES[self.dtype]).element_size()

    @property
    def min_bytes(self) -> int:
        """Minimum forward+backward traffic: read z, read r, write the gradient (loss rows)."""
        return 3 * self.loss_rows * self.vocab * self.elem_size

    @property
    def dense_min_bytes(self) -> int:
        """``min_bytes`` plus one zero gradient row per row without a loss: the floor of a dense
        [N, V] gradient (issue 23; bench/static_model.py's roofline)."""
        return self.min_bytes + (self.rows - self.loss_rows) * self.vocab * self.elem_size

    @property
    def input_bytes(self) -> int:
        return 2 * self.rows * self.vocab * self.elem_size

    def label(self) -> str:
        k = "V" if self.k is None else str(self.k)
        return (f"{self.rows}x{self.vocab} K={k} I={self.init_frac:g} C={self.common_frac:g} "
                f"{self.dtype}")

    def to_dict(self) -> dict:
        return asdict(self)


def make_inputs(case: Case, device="cpu", requires_grad=True):
    """Seeded ``(logits, ref_logits, initiating_mask, common_mask)`` for ``case``.

    The logits are allocated once and filled in place (no temporary of their size), with a
    spread (std 2) close to a language model's.
    """
    dtype = DTYPES[case.dtype]
    gen = torch.Generator(device=device).manual_seed(case.seed)
    shape = (case.rows, case.vocab)
    z = torch.empty(shape, dtype=dtype, device=device).normal_(0.0, 2.0, generator=gen)
    r = torch.empty(shape, dtype=dtype, device=device).normal_(0.0, 2.0, generator=gen)
    perm = torch.randperm(case.rows, generator=torch.Generator().manual_seed(case.seed))
    i = torch.zeros(case.rows, dtype=torch.bool)
    c = torch.zeros(case.rows, dtype=torch.bool)
    i[perm[: case.n_init]] = True
    c[perm[case.n_init: case.n_init + case.n_common]] = True
    return z.requires_grad_(requires_grad), r, i.to(device), c.to(device)


class Unavailable(RuntimeError):
    """The provider cannot run here (e.g. triton without CUDA, kernels not written yet)."""


def get_provider(name: str, device, k):
    """Callable ``(logits, ref_logits, initiating_mask, common_mask) -> loss`` for ``name``.

    All providers compute the released configuration: target ``"mean"``, reverse KL, mean
    reduction, ``gamma = alpha = 1``. ``triton`` is imported lazily and only on CUDA.
    """
    device = torch.device(device)
    if name == "triton":
        if device.type != "cuda":
            raise Unavailable("triton provider runs on CUDA only")
        try:
            import palu_kernels.backends.triton_loss  # noqa: F401
        except ImportError as e:
            raise Unavailable(f"palu_kernels.backends.triton_loss not importable: {e}") from e
        from palu_kernels import palu_local_entropy_loss

        return lambda z, r, i, c: palu_local_entropy_loss(z, r, i, c, k=k, backend="triton")
    if name == "torch":
        from palu_kernels import palu_local_entropy_loss

        return lambda z, r, i, c: palu_local_entropy_loss(z, r, i, c, k=k, backend="torch")
    from reference.palu import palu_loss_reference, palu_loss_released

    if name == "reference":
        return lambda z, r, i, c: palu_loss_reference(z, r, i, c, k=k)
    if name == "reference_compile":
        compiled = torch.compile(palu_loss_reference)
        return lambda z, r, i, c: compiled(z, r, i, c, k=k)
    if name == "released":
        return lambda z, r, i, c: palu_loss_released(z, r, i, c, k=k)
    raise ValueError(f"provider must be one of {PROVIDERS}, got {name!r}")


TOPK_PROVIDERS = ("topk_threshold", "torch.topk", "torch.kthvalue", "topk_membership")


def topk_providers(device, k: int) -> dict:
    """``{name: fn(ref_rows)}``: ways to find the top-K set of ``[R, V]`` reference rows.

    ``topk_threshold`` (the Triton selection, CUDA only, imported lazily), ``torch.topk``
    (values and indices), ``torch.kthvalue`` (the K-th largest value only) and
    ``topk_membership`` (the torch backend: kthvalue plus the tie rule, a bool mask).
    """
    from palu_kernels.backends.torch_rows import topk_membership

    fns = {}
    if torch.device(device).type == "cuda":
        try:
            from palu_kernels.backends.triton_topk import topk_threshold

            fns["topk_threshold"] = lambda r: topk_threshold(r, k)
        except ImportError:
            pass
    fns["torch.topk"] = lambda r: torch.topk(r, k, dim=1)
    fns["torch.kthvalue"] = lambda r: torch.kthvalue(r, r.shape[1] - k + 1, dim=1)
    fns["topk_membership"] = lambda r: topk_membership(r.float(), k)
    return fns


# ---------------------------------------------------------------- CPU process memory

def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes() -> int | None:
    """Resident set size of this process now."""
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def reset_peak_rss() -> bool:
    """Reset the peak-RSS counter to the current RSS (Linux >= 4.0); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int | None:
    """Peak RSS since the last :func:`reset_peak_rss` (``VmHWM``)."""
    kib = _status_kib("VmHWM")
    return None if kib is None else kib * 1024


def _load_malloc_trim():
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_malloc_trim = _load_malloc_trim()


def release_free_memory() -> None:
    """Hand memory that the C allocator keeps after ``free`` back to the OS (glibc)."""
    gc.collect()
    if _malloc_trim is not None:
        _malloc_trim(0)


class RssWindow:
    """Context measuring the resident peak above the RSS at entry (None if unsupported)."""

    def __enter__(self):
        release_free_memory()
        self.ok = reset_peak_rss()
        self.base = rss_bytes()
        self.extra = None
        return self

    def __exit__(self, *exc):
        if self.ok and self.base is not None:
            self.extra = max(0, peak_rss_bytes() - self.base)
        return False


# ---------------------------------------------------------------- measurements

def _median_ms(seconds):
    return 1e3 * statistics.median(seconds) if seconds else None


def measure_cpu(fn, inputs, *, reps=3, warmup=1, backward=True):
    """Time and peak memory of ``fn(*inputs)`` and its backward on CPU (see module doc).

    Returns ``{"warmup_s", "reps", mode: {"time_ms", "times_ms", "cpu_ms", "peak_bytes"}}``
    (``cpu_ms``: median process CPU time, all threads, which a loaded machine inflates less).
    """
    z = inputs[0]
    t0 = time.perf_counter()
    for _ in range(warmup):
        loss = fn(*inputs)
        if backward:
            loss.backward()
        z.grad = None
        del loss
    warmup_s = time.perf_counter() - t0

    t_f, t_b, c_f, c_b, m_f, m_b, m_fb = [], [], [], [], [], [], []
    for _ in range(reps):
        with RssWindow() as wf:
            a, ca = time.perf_counter(), time.process_time()
            loss = fn(*inputs)
            b, cb = time.perf_counter(), time.process_time()
        t_f.append(b - a)
        c_f.append(cb - ca)
        m_f.append(wf.extra)
        if backward:
            after_fwd = rss_bytes()
            with RssWindow() as wb:
                a, ca = time.perf_counter(), time.process_time()
                loss.backward()
                b, cb = time.perf_counter(), time.process_time()
            t_b.append(b - a)
            c_b.append(cb - ca)
            m_b.append(wb.extra)
            if None not in (wf.extra, wb.extra, wf.base, after_fwd):
                m_fb.append(max(wf.extra, after_fwd - wf.base + wb.extra))
        z.grad = None
        del loss

    def peak(ms):
        ms = [m for m in ms if m is not None]
        return max(ms) if ms else None

    out = {"warmup_s": warmup_s, "reps": reps,
           "forward": {"time_ms": _median_ms(t_f), "times_ms": [1e3 * t for t in t_f],
                       "cpu_ms": _median_ms(c_f), "peak_bytes": peak(m_f)}}
    if backward:
        t_fb = [f + b for f, b in zip(t_f, t_b)]
        c_fb = [f + b for f, b in zip(c_f, c_b)]
        out["backward"] = {"time_ms": _median_ms(t_b), "times_ms": [1e3 * t for t in t_b],
                           "cpu_ms": _median_ms(c_b), "peak_bytes": peak(m_b)}
        out["forward+backward"] = {"time_ms": _median_ms(t_fb),
                                   "times_ms": [1e3 * t for t in t_fb],
                                   "cpu_ms": _median_ms(c_fb), "peak_bytes": peak(m_fb)}
    return out


def cuda_peak(run, prepare=None):
    """Peak CUDA memory of ``run()`` above the memory allocated when it starts."""
    state = prepare() if prepare else None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = run(state)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out, state
    return peak


def measure_cuda(fn, inputs, *, modes=MODES, warmup_ms=25, rep_ms=100):
    """Time (``triton.testing.do_bench``, median) and peak memory of each mode on CUDA.

    A mode that fails (out of memory, say) is reported as ``{"error": ...}``; the others go on.
    """
    z = inputs[0]
    t0 = time.perf_counter()
    fn(*inputs).backward()  # compiles (torch.compile, Triton JIT) outside the timings
    torch.cuda.synchronize()
    warmup_s = time.perf_counter() - t0
    z.grad = None
    out = {"warmup_s": warmup_s}
    bench = dict(warmup=warmup_ms, rep=rep_ms, grad_to_none=[z], return_mode="median")
    for mode in modes:
        try:
            out[mode] = _cuda_mode(fn, inputs, mode, bench)
        except Exception as e:  # noqa: BLE001 - e.g. out of memory in one mode only
            out[mode] = {"error": f"{type(e).__name__}: {str(e).strip()[:200]}"}
            torch.cuda.empty_cache()
        z.grad = None
    return out


def _cuda_mode(fn, inputs, mode, bench):
    from triton.testing import do_bench

    z = inputs[0]
    if mode == "forward":
        ms = do_bench(lambda: fn(*inputs), **bench)
        peak = cuda_peak(lambda _: fn(*inputs))
    elif mode == "backward":
        loss = fn(*inputs)
        ms = do_bench(lambda: loss.backward(retain_graph=True), **bench)
        del loss
        z.grad = None
        peak = cuda_peak(lambda loss: loss.backward(), prepare=lambda: fn(*inputs))
    else:
        ms = do_bench(lambda: fn(*inputs).backward(), **bench)
        z.grad = None
        peak = cuda_peak(lambda _: fn(*inputs).backward())
    return {"time_ms": ms, "times_ms": [ms], "peak_bytes": peak}


def run_case(provider: str, case: Case, device="cpu", *, reps=3, warmup=1) -> dict:
    """Measure one provider on one case; never raises (failures come back as a status)."""
    rec = {"provider": provider, "case": case.to_dict(), "device": str(device)}
    try:
        fn = get_provider(provider, device, case.k)
    except Unavailable as e:
        return {**rec, "status": "unavailable", "error": str(e)}
    inputs = None
    try:
        inputs = make_inputs(case, device)
        if torch.device(device).type == "cuda":
            res = measure_cuda(fn, inputs)
        else:
            res = measure_cpu(fn, inputs, reps=reps, warmup=warmup)
        return {**rec, "status": "ok", **res}
    except Exception as e:  # noqa: BLE001 - a failing provider is a result, not a crash
        msg = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        return {**rec, "status": "failed", "error": msg[:300]}
    finally:
        del inputs
        gc.collect()
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()


# ---------------------------------------------------------------- environment

def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    n = torch.get_num_threads()
    return f"{cpu_name()} ({n} thread{'s' if n != 1 else ''})"


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment(device) -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    return {
        "device_name": device_name(device),
        "torch": torch.__version__,
        "triton": triton_version,
        "python": platform.python_version(),
        "commit": git_commit(),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def copy_bandwidth_gbps(device="cpu", nbytes=256 << 20, reps=10) -> float:
    """STREAM-like copy bandwidth (GB/s, read + write counted) measured with ``Tensor.copy_``."""
    device = torch.device(device)
    a = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    b = torch.empty_like(a)
    times = []
    for _ in range(reps + 2):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        b.copy_(a)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return 2 * nbytes / statistics.median(times[2:]) / 1e9


def peak_bandwidth_gbps(device) -> tuple[float, str]:
    """The device's peak memory bandwidth in GB/s and where the figure comes from."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            from triton.testing import get_dram_gbps

            return float(get_dram_gbps()), "theoretical (triton.testing.get_dram_gbps)"
        except Exception:  # noqa: BLE001 - fall back to a measurement
            return copy_bandwidth_gbps(device, 1 << 30), "measured device copy (Tensor.copy_)"
    return copy_bandwidth_gbps(device), (
        f"measured STREAM-like copy (Tensor.copy_, 256 MiB, {torch.get_num_threads()} threads)")


def worker_env() -> dict:
    """Environment for CPU worker processes."""
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env
