"""initiating_mask: the first N rows of every run of sensitive rows."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, strategies as st

from palu_kernels import initiating_mask


def runs(row):
    """(start, length) of each run of True in a 1-D bool list (the obvious loop, for tests)."""
    out, start = [], None
    for t, v in enumerate(row + [False]):
        if v and start is None:
            start = t
        if not v and start is not None:
            out.append((start, t - start))
            start = None
    return out


@given(
    st.lists(st.lists(st.booleans(), min_size=12, max_size=12), min_size=1, max_size=4),
    st.sampled_from([0, 1, 2, 3, 5, -1, None]),
)
def test_properties(rows, first_n):
    s = torch.tensor(rows)
    got = initiating_mask(s, first_n)
    assert got.dtype == torch.bool and got.shape == s.shape
    assert not (got & ~s).any(), "subset of the input"
    if first_n in (-1, None):
        assert torch.equal(got, s)
        return
    for b, row in enumerate(rows):
        for start, length in runs(row):
            kept = got[b, start:start + length].tolist()
            assert kept == [True] * min(first_n, length) + [False] * (length - min(first_n, length))


def test_runs_touching_both_ends_and_adjacent_words():
    s = torch.tensor([[1, 1, 1, 1, 0, 1, 1, 0, 1, 1, 1, 1]], dtype=torch.bool)
    want = torch.tensor([[1, 1, 0, 0, 0, 1, 1, 0, 1, 1, 0, 0]], dtype=torch.bool)
    assert torch.equal(initiating_mask(s, 2), want)
    assert torch.equal(initiating_mask(s[0], 2), want[0])


def test_bad_arguments():
    with pytest.raises(TypeError, match="sensitive_mask"):
        initiating_mask(torch.ones(2, 3), 1)
    with pytest.raises(ValueError, match="first_n"):
        initiating_mask(torch.ones(2, 3, dtype=torch.bool), -2)
    with pytest.raises(ValueError, match="sensitive_mask"):
        initiating_mask(torch.ones(2, 3, 4, dtype=torch.bool), 1)


@pytest.mark.parametrize("gamma,alpha", [(1.0, 1.0), (2.5, 0.3)])
@pytest.mark.parametrize("empty", [None, "initiating", "common"])
def test_mean_row_weights_turn_rows_into_the_mean_loss(gamma, alpha, empty):
    """The per-row weights that the trainer and the backends share: weighting reduction
    "none" rows by them and summing gives reduction "mean" (also with an empty I or C)."""
    from palu_kernels import mean_row_weights, palu_local_entropy_loss

    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 7, 19, generator=g, dtype=torch.float64)
    r = torch.randn(3, 7, 19, generator=g, dtype=torch.float64)
    i = torch.rand(3, 7, generator=g) < 0.3
    c = ~i & (torch.rand(3, 7, generator=g) < 0.6)
    if empty == "initiating":
        i[:] = False
    elif empty == "common":
        c[:] = False
    kw = dict(k=4, gamma=gamma, alpha=alpha, backend="torch")
    mean = palu_local_entropy_loss(z, r, i, c, reduction="mean", **kw)
    rows = palu_local_entropy_loss(z, r, i, c, reduction="none", **kw)
    w = mean_row_weights(i, c, dtype=torch.float64)
    torch.testing.assert_close((rows * w).sum(), mean)
    w2 = mean_row_weights(i, c, gamma, alpha, dtype=torch.float64)
    torch.testing.assert_close(w2[i], torch.full_like(w2[i], gamma / max(1, int(i.sum()))))
    torch.testing.assert_close(w2[c], torch.full_like(w2[c], alpha / max(1, int(c.sum()))))
    assert torch.all(w2[~(i | c)] == 0)
