"""The torch backend of palu_local_entropy_loss against the specification (reference/)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, strategies as st

import palu_kernels as pk
import reference
from helpers import assert_matches_reference, loss_and_grad, make_case

TARGETS = ["mean", "mean_detached", "topk_mean", 0.75]
KLS = ["reverse", "forward", None]
REDUCTIONS = ["mean", "sum", "none"]


def torch_loss(*args, **opts):
    return pk.palu_local_entropy_loss(*args, backend="torch", **opts)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("kl", KLS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_every_option_fp32(target, kl, reduction):
    z, r, i, c = make_case((3, 11, 37), seed=hash((str(target), str(kl), reduction)) % 1000)
    assert_matches_reference(torch_loss, z, r, i, c, k=5, target=target, kl=kl,
                             reduction=reduction)


@pytest.mark.parametrize("k", [1, 4, 37, 38, 10_000, None])
def test_k_edges(k):
    z, r, i, c = make_case((40, 37), seed=1)
    assert_matches_reference(torch_loss, z, r, i, c, k=k)


@pytest.mark.parametrize("v", [1, 7, 1000, 32003])
def test_unaligned_vocab(v):
    z, r, i, c = make_case((6, v), seed=v, p_init=0.5, p_common=0.5)
    assert_matches_reference(torch_loss, z, r, i, c, k=min(5, v), target="mean")


@pytest.mark.parametrize("target", TARGETS)
def test_ties_at_the_boundary_follow_the_index_rule(target):
    # Reference values from {0,1,2,3}: the K-th value is shared by many entries.
    z, r, i, c = make_case((2, 16, 50), ties=True, seed=3, p_init=0.6)
    for k in (1, 7, 13, 25):
        assert_matches_reference(torch_loss, z, r, i, c, k=k, target=target)


def test_all_equal_reference_rows():
    z, r, i, c = make_case((8, 29), seed=4, p_init=0.5)
    r = torch.zeros_like(r)
    assert_matches_reference(torch_loss, z, r, i, c, k=3)


def test_topk_membership_equals_stable_sort_on_ties():
    from palu_kernels.backends.torch_rows import topk_membership

    g = torch.Generator().manual_seed(5)
    r = torch.randint(0, 3, (64, 23), generator=g).float()
    for k in (1, 5, 11, 23):
        assert torch.equal(topk_membership(r, k), reference.topk_set_reference(r, k))


def test_minus_inf_and_huge_magnitudes():
    z, r, i, c = make_case((30, 64), seed=6, scale=1e4)
    masked = torch.zeros(64, dtype=torch.bool)
    masked[::5] = True
    # Vocabulary entries that both models mask out (common rows) must contribute 0 log 0 = 0.
    z_c = torch.where(c[:, None] & masked, float("-inf"), z)
    r_m = torch.where(masked, float("-inf"), r)
    for kl in ("reverse", "forward"):
        assert_matches_reference(torch_loss, z_c, r_m, i, c, k=50, kl=kl)
    loss = torch_loss(z_c, r_m, i, c, k=50)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("target", ["mean", "topk_mean"])
@pytest.mark.parametrize("kl", ["reverse", "forward"])
def test_low_precision_within_the_references_own_error(dtype, target, kl):
    z, r, i, c = make_case((4, 12, 300), dtype=dtype, seed=7)
    assert_matches_reference(torch_loss, z, r, i, c, k=40, target=target, kl=kl)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_grad_output_not_one(reduction):
    z, r, i, c = make_case((3, 9, 21), seed=8)
    go = torch.tensor(-2.5) if reduction != "none" else torch.randn(3, 9)
    assert_matches_reference(torch_loss, z, r, i, c, grad_out=go, k=4, reduction=reduction)


# "mean_detached" is left out on purpose: its gradient ignores the dependence of c on z,
# which finite differences do see; test_every_option_fp32 checks it against autograd
# through the reference's detached mean.
@pytest.mark.parametrize("target", ["mean", "topk_mean", 0.75])
@pytest.mark.parametrize("kl", KLS)
def test_gradcheck_fp64(target, kl):
    z, r, i, c = make_case((2, 5, 9), dtype=torch.float64, seed=9, p_init=0.4)
    z.requires_grad_(True)

    def f(x):
        return torch_loss(x, r, i, c, k=3, target=target, kl=kl)

    assert torch.autograd.gradcheck(f, (z,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_empty_masks_give_zero_loss_and_zero_grad(reduction):
    z, r, _, _ = make_case((2, 7, 13), seed=10)
    none = torch.zeros(2, 7, dtype=torch.bool)
    loss, grad = loss_and_grad(torch_loss, z, r, none, none, k=3, reduction=reduction)
    assert torch.all(loss == 0) and torch.all(grad == 0)
    loss, grad = loss_and_grad(torch_loss, z, r, none, None, k=3, reduction=reduction)
    assert torch.all(loss == 0) and torch.all(grad == 0)


def test_rows_outside_the_masks_are_ignored_even_when_not_finite():
    z, r, i, c = make_case((20, 31), seed=11)
    unused = ~(i | c)
    assert unused.any()
    z2 = torch.where(unused[:, None], float("nan"), z)
    r2 = torch.where(unused[:, None], float("nan"), r)
    a, ga = loss_and_grad(torch_loss, z, r, i, c, k=4)
    b, gb = loss_and_grad(torch_loss, z2, r2, i, c, k=4)
    assert torch.equal(a, b) and torch.equal(ga, gb)


def test_deterministic_run_to_run():
    z, r, i, c = make_case((4, 50, 333), seed=12)
    a, ga = loss_and_grad(torch_loss, z, r, i, c, k=20)
    b, gb = loss_and_grad(torch_loss, z, r, i, c, k=20)
    assert torch.equal(a, b) and torch.equal(ga, gb)


def test_chunking_does_not_change_the_result(monkeypatch):
    import palu_kernels.backends.torch_rows as tb

    z, r, i, c = make_case((64, 101), seed=13)
    a, ga = loss_and_grad(torch_loss, z, r, i, c, k=9)
    monkeypatch.setattr(tb, "CHUNK_ELEMENTS", 3 * 101)  # 3 rows per chunk, ragged
    b, gb = loss_and_grad(torch_loss, z, r, i, c, k=9)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(ga, gb)


def test_ref_logits_requiring_grad_are_detached():
    z, r, i, c = make_case((3, 4, 10), seed=14)
    r.requires_grad_(True)
    z.requires_grad_(True)
    torch_loss(z, r, i, c, k=2).backward()
    assert r.grad is None and z.grad is not None


def test_non_contiguous_inputs():
    z, r, i, c = make_case((5, 40, 9), seed=15)
    zt, rt = z.transpose(0, 1), r.transpose(0, 1)  # [40, 5, 9], not contiguous
    it, ct = i.t(), c.t()
    assert not zt.is_contiguous()
    assert_matches_reference(torch_loss, zt, rt, it, ct, k=3, reduction="none")


def test_module_matches_functional_and_auto_picks_torch_on_cpu():
    z, r, i, c = make_case((2, 6, 17), seed=16)
    m = pk.PALULoss(k=4, target="topk_mean", kl="forward", gamma=0.5, alpha=2.0)
    assert "topk_mean" in repr(m)
    expected = torch_loss(z, r, i, c, k=4, target="topk_mean", kl="forward", gamma=0.5, alpha=2.0)
    assert torch.equal(m(z, r, i, c), expected)
    assert torch.equal(pk.palu_local_entropy_loss(z, r, i, c, k=4, target="topk_mean",
                                                  kl="forward", gamma=0.5, alpha=2.0), expected)


def test_gamma_alpha_weights():
    z, r, i, c = make_case((30, 20), seed=17)
    local = torch_loss(z, r, i, c, k=3, kl=None)
    kl = torch_loss(z, r, i, c, k=3, gamma=0.0)
    both = torch_loss(z, r, i, c, k=3, gamma=2.0, alpha=3.0)
    torch.testing.assert_close(both, 2 * local + 3 * kl)


@st.composite
def cases(draw):
    b = draw(st.integers(1, 3))
    t = draw(st.integers(1, 9))
    v = draw(st.sampled_from([1, 2, 7, 16, 33, 130]))
    k = draw(st.sampled_from([1, 2, 5, 64, 1000, None]))
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
    opts = dict(
        k=k,
        target=draw(st.sampled_from(TARGETS)),
        kl=draw(st.sampled_from(KLS)),
        reduction=draw(st.sampled_from(REDUCTIONS)),
        gamma=draw(st.sampled_from([1.0, 0.3])),
        alpha=draw(st.sampled_from([1.0, 2.0])),
    )
    seed = draw(st.integers(0, 2**16))
    ties = draw(st.booleans())
    p_init = draw(st.sampled_from([0.0, 0.3, 1.0]))
    return make_case((b, t, v), dtype, seed=seed, ties=ties, p_init=p_init,
                     p_common=1.0 - p_init), opts


@given(cases())
def test_property_matches_reference(case):
    (z, r, i, c), opts = case
    assert_matches_reference(torch_loss, z, r, i, c, **opts)


def test_autocast_does_not_lower_the_arithmetic():
    z, r, i, c = make_case((3, 8, 50), seed=18)
    plain, gplain = loss_and_grad(torch_loss, z, r, i, c, k=5)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        auto, gauto = loss_and_grad(torch_loss, z, r, i, c, k=5)
    assert auto.dtype == torch.float32 and gauto.dtype == torch.float32
    torch.testing.assert_close(auto, plain)
    torch.testing.assert_close(gauto, gplain)
