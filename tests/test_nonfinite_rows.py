"""Reference rows without a softmax (+inf in them, or only -inf) and rows with masked
entries: every backend gives the reference's loss (NaN, +inf or a number) and the torch and
Triton backends the same gradient, NaN where the loss is NaN (never a finite value there)."""

from __future__ import annotations

import os

import pytest
import torch

import palu_kernels as pk
import reference

INF = float("inf")
ROWS = {
    "plus_inf": [0.1, INF, 0.3, 0.0, 1.0, 2.0, -1.0],
    "all_minus_inf": [-INF] * 7,
    "some_minus_inf": [0.1, -INF, 0.3, 0.0, 1.0, 2.0, -INF],
}
BACKENDS = ["torch"] + (["triton"] if os.environ.get("TRITON_INTERPRET") == "1" else [])


def same_nonfinite(a, b):
    return (torch.equal(torch.isnan(a), torch.isnan(b))
            and torch.equal(torch.isposinf(a), torch.isposinf(b))
            and torch.equal(torch.isneginf(a), torch.isneginf(b)))


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("row", sorted(ROWS))
@pytest.mark.parametrize("kl", ["reverse", "forward"])
def test_backends_agree_on_rows_without_a_softmax(row, kl):
    g = torch.Generator().manual_seed(1)
    r = torch.tensor([ROWS[row], [0.5, -0.2, 1.0, 0.0, 0.3, -1.0, 2.0]])
    z = torch.randn(2, 7, generator=g)
    i = torch.tensor([False, True])
    c = torch.tensor([True, False])
    truth = reference.palu_loss_reference(z.double(), r.double(), i, c, k=3, kl=kl,
                                          reduction="none")
    grads = []
    for backend in BACKENDS:
        zz = z.clone().requires_grad_(True)
        loss = pk.palu_local_entropy_loss(zz, r, i, c, k=3, kl=kl, reduction="none",
                                          backend=backend)
        assert same_nonfinite(loss.double(), truth), (backend, loss, truth)
        fin = torch.isfinite(truth)
        torch.testing.assert_close(loss.double()[fin], truth[fin], rtol=2e-5, atol=1e-6)
        loss.sum().backward()
        if torch.isnan(truth[0]):  # no softmax for the common row: its gradient is NaN
            assert torch.isnan(zz.grad[0]).all(), (backend, zz.grad)
        assert torch.isfinite(zz.grad[1]).all()  # the initiating row is untouched by it
        grads.append(zz.grad)
    for other in grads[1:]:
        assert same_nonfinite(other, grads[0])
        fin = torch.isfinite(grads[0])
        torch.testing.assert_close(other[fin], grads[0][fin], rtol=2e-5, atol=1e-6)
