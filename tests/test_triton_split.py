"""The split-row kernel (``palu_kernels/backends/triton_split.py``) through the interpreter.

Its programs wait for each other (the per-row exchange), and the interpreter runs the
programs of a launch one after another, so a launch of the grid would spin for ever. The
hack, in ``threaded_grid`` below: each of the ``P`` programs is its own grid-(1,) launch
(``pid_base`` = its program id), all from ``P`` Python threads at once, on CPU tensors. It
holds because of three properties of the installed interpreter (``triton/runtime/
interpreter.py``), checked by these tests running at all:

* the host copies of CPU tensors are the tensors' own storage (``storage.cpu()`` is the
  storage itself), so every thread sees the others' stores and atomics;
* ``GridExecutor`` copies the host copies back after its grid (``_restore_args_dev``); for
  CPU tensors that is a copy of a storage onto itself, which could write a stale value over
  a concurrent thread's store, so it is made a no-op for the threaded run;
* each launch patches ``triton.language`` (``_patch_lang``) and restores it afterwards; the
  restores of concurrent launches would leave another thread with the unpatched language, so
  one outer patch is held for the whole run: every inner restore then returns to a patched
  state (the inner patches skip members that are already patched).

The program id itself is safe: every grid-(1,) launch sets the interpreter's one grid index
to (0, 0, 0), and ``pid_base`` carries the program's real id.
"""

from __future__ import annotations

import os
import threading
from unittest import mock

import pytest
import torch

import reference
from helpers import TOL, assert_matches_reference, loss_and_grad, make_case
from palu_kernels._validation import check_loss_args
from palu_kernels.backends import triton_split
from palu_kernels.backends.triton_loss import launch, palu_loss_triton

pytestmark = [
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET", "0") != "1",
                       reason="interpreter tests; on CUDA see tests/test_triton_cuda.py"),
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
]


def threaded_grid(programs_seen: list, size: int | None = None):
    """A stand-in for ``triton_split.launch_grid``: every program its own launch, from its
    own thread (module docstring), ``size`` programs (rounded down to whole rows; None: 2
    rows per round). ``programs_seen`` collects ``(P, R)`` of each launch."""
    from triton.runtime import interpreter

    def run(kernel, programs, args, consts, device):
        g = consts["G"]
        rows = max(1, (size or programs or 2 * g) // g)
        p = rows * g
        programs_seen.append((p, rows))
        errors = []

        def one(pid):
            try:
                kernel[(1,)](*args, pid, p, rows, **consts)
            except BaseException as e:  # noqa: BLE001  (reported below)
                errors.append(e)

        outer = interpreter._patch_lang(kernel.fn)
        try:
            with mock.patch.object(interpreter.GridExecutor, "_restore_args_dev",
                                   lambda *a, **k: None):
                threads = [threading.Thread(target=one, args=(pid,), daemon=True)
                           for pid in range(p)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(timeout=600)
                assert not any(t.is_alive() for t in threads), "a program never finished"
        finally:
            outer.restore()
        if errors:
            raise errors[0]

    return run


@pytest.fixture
def split_grid(monkeypatch):
    seen: list = []
    monkeypatch.setattr(triton_split, "launch_grid", threaded_grid(seen))
    return seen


def _args(z, r, i, c, **opts):
    return check_loss_args(z, r, i, c, k=opts.get("k", 5), target=opts.get("target", "mean"),
                           kl=opts.get("kl", "reverse"), gamma=opts.get("gamma", 1.0),
                           alpha=opts.get("alpha", 1.0),
                           reduction=opts.get("reduction", "none"),
                           weights=opts.get("weights"))


def split_loss(z, r, i, c, *, chunk=16, **opts):
    return palu_loss_triton(z, _args(z, r, i, c, **opts), split=True, split_chunk=chunk,
                            block_v=16, block_sel=16)


def rowwise_loss(z, r, i, c, **opts):
    return palu_loss_triton(z, _args(z, r, i, c, **opts), split=False, block_v=16,
                            block_sel=16)


def _mixed_masks(n, seed):
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, generator=g)
    i, c = u < 0.25, (u >= 0.25) & (u < 0.75)
    i[0], c[1], c[2] = True, True, False  # every kind present
    i[2], c[0], i[1] = False, False, False
    return i, c


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kl", ["reverse", "forward"])
def test_split_matches_reference_and_the_rowwise_kernel(split_grid, dtype, kl):
    # V = 37 in chunks of 16: 3 chunks (GP 4), the last one masked (5 of 16 columns);
    # 12 rows of every kind, 2 rows per round: several rounds
    z, r, _, _ = make_case((12, 37), dtype, seed=3)
    i, c = _mixed_masks(12, 3)
    opts = dict(kl=kl, k=5, reduction="none", gamma=1.3, alpha=0.6)
    assert_matches_reference(split_loss, z, r, i, c, **opts)
    loss_s, grad_s = loss_and_grad(split_loss, z, r, i, c, **opts)
    loss_r, grad_r = loss_and_grad(rowwise_loss, z, r, i, c, **opts)
    tol = TOL[dtype]
    assert torch.allclose(loss_s, loss_r, rtol=tol, atol=tol)
    assert torch.allclose(grad_s.float(), grad_r.float(), rtol=4 * tol, atol=tol * 1e-2)
    # the rows without a KL term are untouched by the split path: bit for bit
    assert torch.equal(grad_s[i], grad_r[i]) and torch.equal(loss_s[i], loss_r[i])
    assert torch.all(grad_s[~i & ~c] == 0) and torch.all(loss_s[~i & ~c] == 0)
    assert split_grid and all(p == 3 * rows for p, rows in split_grid)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_split_with_row_weights_reductions_and_a_grad_output(split_grid, reduction):
    # the "mean" row weights and the caller's per-row weights reach the split rows through
    # the same [N] weights as the per-row kernel's; grad_output != 1 scales the gradient
    # (the reference takes no weights: with them, the per-row path is the comparison, which
    # tests/test_triton.py checks against the torch backend)
    z, r, _, _ = make_case((2, 5, 40), torch.float32, seed=6)
    i, c = _mixed_masks(10, 6)
    i, c = i.view(2, 5), c.view(2, 5)
    go = torch.tensor(-1.75)
    opts = dict(k=5, reduction=reduction, gamma=1.3, alpha=0.6)
    assert_matches_reference(split_loss, z, r, i, c, grad_out=go, **opts)
    w = torch.rand(2, 5, generator=torch.Generator().manual_seed(6)) + 0.5
    loss_s, grad_s = loss_and_grad(split_loss, z, r, i, c, go, weights=w, **opts)
    loss_r, grad_r = loss_and_grad(rowwise_loss, z, r, i, c, go, weights=w, **opts)
    assert torch.allclose(loss_s, loss_r, rtol=1e-5, atol=1e-6)
    assert torch.allclose(grad_s, grad_r, rtol=1e-5, atol=1e-7)
    _, grad_u = loss_and_grad(split_loss, z, r, i, c, go, **opts)
    assert not torch.allclose(grad_s[c], grad_u[c])  # the weights reached the KL rows


def test_split_is_bitwise_deterministic_across_runs(split_grid):
    z, r, _, _ = make_case((10, 50), torch.bfloat16, seed=5)
    i, c = _mixed_masks(10, 5)
    runs = [loss_and_grad(split_loss, z, r, i, c, chunk=16) for _ in range(3)]
    for loss, grad in runs[1:]:
        assert torch.equal(loss, runs[0][0]) and torch.equal(grad, runs[0][1])


def test_split_rounds_and_grid_shapes(split_grid, monkeypatch):
    # one row per round (P = G) and more rows per round than rows: same answer
    z, r, _, _ = make_case((7, 40), torch.float32, seed=8)
    i, c = _mixed_masks(7, 8)
    out = []
    for programs in (3, 24):
        monkeypatch.setattr(triton_split, "launch_grid", threaded_grid(split_grid, programs))
        a = _args(z, r, i, c)
        loss, grad, _ = launch(a, True, split=True, split_chunk=16, block_v=16, block_sel=16)
        out.append((loss, grad))
        assert_matches_reference(split_loss, z, r, i, c, k=5, reduction="none")
    assert split_grid[0] == (3, 1) and split_grid[2] == (24, 8)
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])


def test_split_neg_inf_entries_and_chunks(split_grid):
    # -inf at the same places in z and r, a whole chunk of -inf (its record's sums are 0),
    # a row of z entirely -inf except one entry
    z, r, _, _ = make_case((6, 48), torch.float32, seed=9)
    z[:, 3::5] = float("-inf")
    r[:, 3::5] = float("-inf")
    z[1, 16:32] = float("-inf")
    r[1, 16:32] = float("-inf")
    z[2, :] = float("-inf")  # two finite entries, in the last chunk (and the same in r)
    r[2, :] = float("-inf")
    z[2, 40], z[2, 41], r[2, 40], r[2, 41] = 1.0, -2.0, 0.5, 0.25
    i = torch.zeros(6, dtype=torch.bool)  # (a local row with -inf in z has a NaN loss)
    c = torch.tensor([True, True, True, True, False, True])
    for kl in ("reverse", "forward"):
        assert_matches_reference(split_loss, z, r, i, c, kl=kl, reduction="none")
        loss_s, grad_s = loss_and_grad(split_loss, z, r, i, c, kl=kl)
        loss_r, grad_r = loss_and_grad(rowwise_loss, z, r, i, c, kl=kl)
        assert torch.allclose(loss_s, loss_r, rtol=1e-5, atol=1e-6)
        assert torch.allclose(grad_s, grad_r, rtol=1e-5, atol=1e-7)


def test_split_nan_reference_row_and_empty_masks(split_grid):
    z, r, _, _ = make_case((4, 33), torch.float32, seed=10)
    r[1, 20] = float("inf")  # a reference without a softmax: NaN loss, NaN gradient row
    i = torch.zeros(4, dtype=torch.bool)
    c = torch.tensor([True, True, False, True])
    loss, grad = loss_and_grad(split_loss, z, r, i, c)
    truth, _ = loss_and_grad(reference.palu_loss_reference, z.double(), r.double(), i, c,
                             k=5, target="mean", kl="reverse", reduction="none")
    assert torch.isnan(loss[1]) and torch.isnan(truth[1])
    assert torch.isnan(grad[1]).all()
    assert torch.isfinite(grad[[0, 2, 3]]).all()
    # no KL row at all, and no row with a loss at all: zero rows only (no exchange)
    for cc in (torch.zeros(4, dtype=torch.bool), c):
        loss, grad = loss_and_grad(split_loss, z, r, i, cc, kl=None)
        assert torch.all(loss == 0) and torch.all(grad == 0)


def test_split_without_gradient(split_grid):
    z, r, _, _ = make_case((6, 37), torch.float16, seed=11)
    i, c = _mixed_masks(6, 11)
    a = _args(z, r, i, c)
    loss_s, grad_s, _ = launch(a, False, split=True, split_chunk=16, block_v=16, block_sel=16)
    loss_r, _, _ = launch(a, False, split=False, block_v=16, block_sel=16)
    assert grad_s is None
    assert torch.allclose(loss_s, loss_r, rtol=2e-5, atol=1e-6)


def test_split_options_are_checked_and_the_interpreter_refuses_the_real_grid():
    z, r, _, _ = make_case((3, 20), torch.float32, seed=12)
    i, c = _mixed_masks(3, 12)
    a = _args(z, r, i, c)
    with pytest.raises(ValueError, match="split must be None, True or False, got 1"):
        launch(a, True, split=1)
    with pytest.raises(ValueError, match="split_chunk must be a power of two >= 16, got 24"):
        launch(a, True, split=True, split_chunk=24)
    with pytest.raises(RuntimeError, match="interpreter runs them one after another"):
        launch(a, True, split=True, split_chunk=16)
    assert triton_split.default_split(z) is False  # CPU / interpreter: the per-row path
