"""pytest-benchmark benchmarks of the PALU loss: ``pytest bench/ --benchmark-only``.

One group per operation and mode: ``palu forward``, ``palu backward``,
``palu forward+backward`` and ``topk``. Sizes default to a CPU-friendly shape and can be set
with environment variables:

    PALU_BENCH_DEVICE=cuda PALU_BENCH_SHAPE=8192,128256,5000 PALU_BENCH_DTYPE=bf16 \\
        pytest bench/ --benchmark-only

``PALU_BENCH_SHAPE`` is ``rows,V,K`` (default ``128,32000,5000`` on CPU,
``8192,128256,5000`` on CUDA); 10% of the rows are initiating and 60% common. The
``reference_compile`` warm-up round absorbs ``torch.compile``'s compilation. These are
measurements, not tests: they assert nothing about time. The sweep with memory and
bandwidth is ``python -m bench.run``.
"""

import os

import pytest
import torch

from bench.common import (
    PROVIDERS, TOPK_PROVIDERS, Case, Unavailable, get_provider, make_inputs, topk_providers,
)

DEVICE = os.environ.get("PALU_BENCH_DEVICE", "cuda" if torch.cuda.is_available() else "cpu")
_DEFAULT_SHAPE = "8192,128256,5000" if DEVICE == "cuda" else "128,32000,5000"
ROWS, VOCAB, K = (int(x) for x in os.environ.get("PALU_BENCH_SHAPE", _DEFAULT_SHAPE).split(","))
DTYPE = os.environ.get("PALU_BENCH_DTYPE", "bf16" if DEVICE == "cuda" else "fp32")
CASE = Case(rows=ROWS, vocab=VOCAB, k=K, dtype=DTYPE)
ROUNDS = int(os.environ.get("PALU_BENCH_ROUNDS", "3" if DEVICE == "cpu" else "20"))


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


@pytest.fixture(scope="module")
def inputs():
    return make_inputs(CASE, DEVICE)


def _provider(name):
    try:
        return get_provider(name, DEVICE, CASE.k)
    except Unavailable as e:
        pytest.skip(str(e))


@pytest.mark.parametrize("provider", PROVIDERS)
def bench_forward(benchmark, provider, inputs):
    fn = _provider(provider)
    benchmark.group = f"palu forward {CASE.label()} {DEVICE}"

    def run():
        loss = fn(*inputs)
        _sync()
        return loss

    benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=1)
    inputs[0].grad = None


@pytest.mark.parametrize("provider", PROVIDERS)
def bench_backward(benchmark, provider, inputs):
    fn = _provider(provider)
    benchmark.group = f"palu backward {CASE.label()} {DEVICE}"
    z = inputs[0]

    def setup():
        z.grad = None
        loss = fn(*inputs)
        _sync()
        return (loss,), {}

    def run(loss):
        loss.backward()
        _sync()

    benchmark.pedantic(run, setup=setup, rounds=ROUNDS, warmup_rounds=1)
    z.grad = None


@pytest.mark.parametrize("provider", PROVIDERS)
def bench_forward_backward(benchmark, provider, inputs):
    fn = _provider(provider)
    benchmark.group = f"palu forward+backward {CASE.label()} {DEVICE}"
    z = inputs[0]

    def setup():
        z.grad = None
        return (), {}

    def run():
        fn(*inputs).backward()
        _sync()

    benchmark.pedantic(run, setup=setup, rounds=ROUNDS, warmup_rounds=1)
    z.grad = None


@pytest.mark.parametrize("provider", TOPK_PROVIDERS)
def bench_topk(benchmark, provider, inputs):
    fns = topk_providers(DEVICE, CASE.k_eff)
    if provider not in fns:
        pytest.skip(f"{provider} needs CUDA and palu_kernels.backends.triton_topk")
    rows = inputs[1][: max(1, CASE.n_init)]  # the initiating rows pay the selection
    fn = fns[provider]
    benchmark.group = f"topk {rows.shape[0]}x{CASE.vocab} K={CASE.k_eff} {CASE.dtype} {DEVICE}"

    def run():
        out = fn(rows)
        _sync()
        return out

    benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=1)
