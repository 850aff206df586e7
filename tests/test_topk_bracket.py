"""The sampled-bracket top-K selection (``backends/triton_topk.py``, ``method="bracket"``)
against the stable-sort definition, on the rows that stress it: ties at the boundary, K = 1, K >= V,
all -inf, every kernel dtype, V not a multiple of the tile; that its fast path (not only the
radix fallback) answers; and the fused kernel with the bracket (its scratch is the row's
gradient) against the radix select, bit for bit.
"""

from __future__ import annotations

import os

import pytest
import torch

import reference
from palu_kernels._validation import check_loss_args
from palu_kernels.backends.triton_loss import palu_forward
from palu_kernels.backends.triton_topk import (
    _topk_threshold,
    default_select_method,
    topk_mask_from_threshold,
)

pytestmark = [
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET", "0") != "1",
                       reason="interpreter tests (TRITON_INTERPRET=1)"),
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
]

DTYPES = [torch.bfloat16, torch.float16, torch.float32]


def _check(r, k, block):
    """The bracket's (thr, ties) define the first k places of a stable descending sort, and
    equal the radix select's; returns the per-row path (1: the bracket answered)."""
    thr, ties, path = _topk_threshold(r, k, block=block, method="bracket")
    member = topk_mask_from_threshold(r, thr, ties)
    assert torch.equal(member, reference.topk_set_reference(r, k))
    kk = min(k, r.shape[-1])
    kth = torch.sort(r.float(), dim=-1, descending=True, stable=True).values[..., kk - 1]
    assert torch.equal(thr.float(), kth)
    thr_r, ties_r, _ = _topk_threshold(r, k, block=block, method="radix")
    assert torch.equal(thr, thr_r) and torch.equal(ties, ties_r)
    return path


def _rows(kind, n, v, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    if kind == "randn":
        r = torch.randn(n, v, generator=g) * 3
    elif kind == "ties":  # few distinct values: the K-th is shared by many entries
        r = torch.randint(-3, 4, (n, v), generator=g).float()
    elif kind == "all_inf":
        r = torch.full((n, v), float("-inf"))
    elif kind == "half_inf":
        r = torch.randn(n, v, generator=g)
        r[:, ::2] = float("-inf")
    elif kind == "signed_zero":
        r = torch.randn(n, v, generator=g)
        r[:, : v // 2] = 0.0
        r[:, v // 2:: 3] = -0.0
    else:  # "sorted": values rising along the row, so a strided sample is skewed
        r = torch.linspace(-5, 5, v).repeat(n, 1)
    return r.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["randn", "ties", "all_inf", "half_inf", "signed_zero",
                                  "sorted"])
def test_bracket_matches_stable_sort(dtype, kind):
    # V = 1000 is not a multiple of the tile (a masked tail); K from 1 to beyond V
    r = _rows(kind, 2, 1000, dtype, seed=3)
    for k in (1, 37, 999, 5000):
        _check(r, k, block=128)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bracket_fast_path_answers_with_ties_at_the_boundary(dtype):
    # random rows: the bracket brackets the K-th value and answers without the radix
    # fallback; the tie rows put a straddling tie in the candidates
    r = _rows("randn", 3, 2000, dtype, seed=5)
    path = _check(r, 100, block=128)
    assert path.tolist() == [1, 1, 1]
    # values on a grid of 1/4: runs of about 40 equal entries, one of them across the K-th
    # place, all in the bracket: the candidates resolve the tie (ties < #(r == thr))
    g = torch.Generator().manual_seed(6)
    t = (torch.round(torch.randn(2, 2000, generator=g) * 8) / 4).to(dtype)
    path = _check(t, 150, block=256)
    thr, ties, _ = _topk_threshold(t, 150, block=256, method="bracket")
    assert path.tolist() == [1, 1]
    assert torch.all(ties < (t == thr.unsqueeze(-1)).sum(-1))
    # every row equal: one candidate value, ties = K
    e = torch.full((1, 1500), 2.5, dtype=dtype)
    thr, ties, _ = _topk_threshold(e, 40, block=128, method="bracket")
    assert thr.item() == 2.5 and ties.item() == 40


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_bracket_falls_back_when_a_lane_overflows(dtype):
    # a scratch of 32 slots per lane; a row whose K-th value is shared by most of it puts
    # far more than 32 candidates in some lane: the radix select answers, still exact
    r = torch.zeros(2, 3000, dtype=dtype)
    r[:, 7] = 1.0
    path = _check(r, 10, block=64)
    assert path.tolist() == [0, 0]


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_kernel_bracket_equals_radix(dtype):
    # the fused kernel's bracket keeps its candidates in the row's gradient, which pass B
    # then overwrites: loss and gradient bit for bit those of the radix select
    g = torch.Generator().manual_seed(11)
    n, v = 6, 1003
    z = (torch.randn(1, n, v, generator=g) * 2).to(dtype)
    r = (torch.randn(1, n, v, generator=g) * 2).to(dtype)
    r[0, 1, ::4] = 1.0  # a tie at the boundary in row 1
    i = torch.tensor([[True, True, False, True, False, True]])
    c = torch.tensor([[False, False, True, False, True, False]])
    for target in ("mean", "topk_mean"):
        for k in (1, 50, 251, v):
            a = check_loss_args(z, r, i, c, k=k, target=target, kl="reverse", gamma=1.0,
                                alpha=1.0, reduction="none", weights=None)
            out = {m: palu_forward(a, True, block_v=256, block_sel=128, select=m)
                   for m in ("radix", "bracket")}
            assert torch.equal(out["radix"][0], out["bracket"][0])
            assert torch.equal(out["radix"][1], out["bracket"][1])


def test_default_select_method():
    # the interpreter runs the GPU image's path (triton 3.6: the bracket)
    assert default_select_method() == "bracket"
    with pytest.raises(ValueError, match="select"):
        a = check_loss_args(torch.zeros(1, 2, 8), torch.zeros(1, 2, 8),
                            torch.tensor([[True, False]]), torch.tensor([[False, True]]), k=2,
                            target="mean", kl="reverse", gamma=1.0, alpha=1.0,
                            reduction="none", weights=None)
        palu_forward(a, True, select="sort")
