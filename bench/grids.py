"""The sweeps of ``python -m bench.run``: which shapes, with which providers, per device.

Each section varies one parameter around a base shape. The CPU grids are reduced (a few
hundred to a few thousand rows, fewer K values and providers on the larger shapes) so that
the quick sweep takes about 5 minutes on 2 cores; the CUDA grid follows the issue's ranges
(V in {32000, 49152, 128256, 151936}, rows 1k..32k, K in {1, 100, 1000, 5000, V}, initiating
fraction, bf16 and fp32). The headline shape of each device comes first, so that a sweep cut
short by its time budget still has it.
"""

from __future__ import annotations

from dataclasses import replace

from .common import Case

VOCABS = (32000, 49152, 128256, 151936)
SECTIONS = ("headline", "rows", "vocab", "k", "fractions", "dtype", "topk")
ALL = ("triton", "torch", "reference", "reference_compile", "released")
FAST = ("triton", "torch", "released")


def _sections(base: Case, rows, vocabs, ks, fracs, dtypes, *, all_p, vocab_p, cheap_p):
    """``[(section, case, providers)]``: rows and vocab sweeps, then K, fractions, dtype."""
    out = [("rows", replace(base, rows=n), all_p) for n in rows]
    out += [("vocab", replace(base, vocab=v), vocab_p) for v in vocabs]
    out += [("k", replace(base, k=k), cheap_p) for k in ks]
    out += [("fractions", replace(base, init_frac=i, common_frac=c), cheap_p) for i, c in fracs]
    out += [("dtype", replace(base, dtype=d), vocab_p) for d in dtypes]
    return out


def palu_grid(device: str, quick: bool):
    """``[(section, Case, providers)]`` for the loss benchmarks on ``device``."""
    if device == "cuda":
        base = Case(rows=8192, vocab=128256, k=5000, dtype="bf16")
        rows = (1024, 2048, 4096, 8192, 16384) + (() if quick else (32768,))
        ks = (1, 1000, None) if quick else (1, 100, 1000, 5000, None)
        fracs = ((0.02, 0.6), (0.3, 0.6), (0.1, 0.0)) if quick else (
            (0.02, 0.6), (0.3, 0.6), (0.1, 0.0), (0.1, 0.9), (1.0, 0.0))
        grid = [("headline", base, ALL)]
        grid += _sections(base, rows, VOCABS, ks, fracs, ("fp32",), all_p=ALL,
                          vocab_p=ALL, cheap_p=FAST)
        return grid
    base = Case(rows=256, vocab=32000, k=5000, dtype="fp32")
    rows = (256, 1024) if quick else (256, 1024, 2048, 4096)
    ks = (1, 100, 1000, None)  # K = 5000 is the base shape
    fracs = ((0.02, 0.6), (0.3, 0.6)) + (() if quick else ((0.1, 0.0), (1.0, 0.0)))
    cpu_all = ("torch", "reference", "reference_compile", "released")
    cpu_mid = ("torch", "reference", "released")
    cpu_fast = ("torch", "released")
    return _sections(base, rows, VOCABS, ks, fracs, ("bf16",), all_p=cpu_all, vocab_p=cpu_mid,
                     cheap_p=cpu_fast)


def topk_grid(device: str, quick: bool):
    """``[(rows, vocab, k, dtype)]`` for the top-K section (rows = initiating rows)."""
    if device == "cuda":
        rows = (820, 8192)
        ks = (1, 100, 1000, 5000)
        dtypes = ("bf16",) if quick else ("bf16", "fp32")
    else:
        rows = (26, 102) if quick else (26, 102, 410)
        ks = (100, 5000) if quick else (1, 100, 1000, 5000)
        dtypes = ("fp32",)
    vocabs = (32000, 128256) if quick else VOCABS
    return [(n, v, k, d) for d in dtypes for n in rows for v in vocabs for k in ks]
