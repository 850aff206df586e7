"""palu_fused_linear_loss: same loss and gradients as the unfused path, without the logits."""

import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

import palu_kernels.fused_linear as fl
from palu_kernels.fused_linear import default_chunk_rows, palu_fused_linear_loss
from palu_kernels.loss import palu_local_entropy_loss

TARGETS = ["mean", "mean_detached", "topk_mean", 0.5]
KLS = ["reverse", "forward", None]
REDUCTIONS = ["mean", "sum", "none"]


def make_case(lead=(3, 7), h=6, v=23, dtype=torch.float64, seed=0, bias=True, p_i=0.3,
              p_c=0.5, separated_ref=False):
    """Inputs of both models. ``separated_ref`` gives reference logits whose values are far
    apart (no top-K boundary flip under bf16 rounding)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    hid, w = rnd(*lead, h), rnd(v, h, scale=0.5)
    b = rnd(v) if bias else None
    if separated_ref:
        rh, rw = rnd(*lead, h, scale=0.01), rnd(v, h, scale=0.01)
        rb = (torch.randperm(v, generator=g).to(torch.float64) * (8.0 / v)).to(dtype)
    else:
        rh, rw = rnd(*lead, h), rnd(v, h, scale=0.5)
        rb = rnd(v) if bias else None
    u = torch.rand(*lead, generator=g)
    i_mask = u < p_i
    c_mask = (u >= p_i) & (u < p_i + p_c)
    return hid, w, b, rh, rw, rb, i_mask, c_mask


def run(fused, case, dtype=None, grad_out=None, need=(True, True, True), chunk_rows=None,
        **kw):
    """Loss and the gradients of (hidden, weight, bias) of one path, inputs cast to dtype."""
    hid, w, b, rh, rw, rb, i_mask, c_mask = case
    cast = (lambda t: t) if dtype is None else (lambda t: None if t is None else t.to(dtype))
    hid, w, b, rh, rw, rb = map(cast, (hid, w, b, rh, rw, rb))
    params = [t.detach().requires_grad_(n) if t is not None else None
              for t, n in zip((hid, w, b), need)]
    hid, w, b = params
    if fused:
        loss = palu_fused_linear_loss(hid, w, rh, rw, i_mask, c_mask, bias=b, ref_bias=rb,
                                      chunk_rows=chunk_rows, **kw)
    else:
        z = hid @ w.T + (0 if b is None else b)
        r = rh @ rw.T + (0 if rb is None else rb)
        loss = palu_local_entropy_loss(z, r, i_mask, c_mask, **kw)
    wrt = [t for t in params if t is not None and t.requires_grad]
    go = None if grad_out is None else grad_out.to(loss.dtype)
    grads = list(torch.autograd.grad(loss, wrt, go)) if wrt and loss.requires_grad else []
    out = []
    for t in params:
        out.append(grads.pop(0) if t is not None and t.requires_grad else None)
    return loss, out


def assert_same(fused, unfused, **tol):
    (l1, g1), (l2, g2) = fused, unfused
    torch.testing.assert_close(l1, l2, **tol)
    for a, b in zip(g1, g2):
        if b is None:
            assert a is None
        else:
            torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kl", KLS)
@pytest.mark.parametrize("target", TARGETS)
def test_matches_unfused_every_option_fp64(target, kl, reduction):
    case = make_case(seed=hash((str(target), str(kl), reduction)) % 1000)
    go = torch.randn(3, 7, dtype=torch.float64) if reduction == "none" else None
    kw = dict(k=5, target=target, kl=kl, reduction=reduction, gamma=0.7, alpha=1.3)
    # 21 rows, ~17 carry loss: chunks of 4 leave a ragged last chunk
    assert_same(run(True, case, grad_out=go, chunk_rows=4, **kw),
                run(False, case, grad_out=go, **kw))


@pytest.mark.parametrize("k", [1, 7, 23, 100, None])
def test_k_values_including_none_and_above_vocab(k):
    case = make_case(seed=3)
    for target in ("mean", "topk_mean"):
        kw = dict(k=k, target=target)
        assert_same(run(True, case, chunk_rows=5, **kw), run(False, case, **kw))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_matches_unfused_fp32_flat_rows_no_bias(reduction):
    case = make_case(lead=(40,), h=16, v=61, dtype=torch.float32, seed=5, bias=False)
    go = torch.rand(40) if reduction == "none" else None
    kw = dict(k=9, reduction=reduction)
    got = run(True, case, grad_out=go, chunk_rows=7, **kw)
    assert got[1][2] is None
    assert_same(got, run(False, case, grad_out=go, **kw), rtol=1e-4, atol=1e-5)
    assert all(g.dtype == torch.float32 for g in got[1][:2])


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kl", ["reverse", "forward"])
def test_bf16_as_close_to_truth_as_unfused(kl, reduction):
    """bf16: both paths are compared with the fp64 result of the same (bf16-exact) inputs."""
    case = make_case(lead=(4, 16), h=32, v=97, seed=11, separated_ref=True)
    case = tuple(t.to(torch.bfloat16).to(torch.float64) if t.is_floating_point() else t
                 for t in case)
    go = torch.rand(4, 16, dtype=torch.float64) if reduction == "none" else None
    kw = dict(k=10, kl=kl, reduction=reduction)
    truth = run(False, case, grad_out=go, **kw)
    fused = run(True, case, dtype=torch.bfloat16, grad_out=go, chunk_rows=9, **kw)
    unfused = run(False, case, dtype=torch.bfloat16, grad_out=go, **kw)
    assert fused[0].dtype == torch.float32
    assert [g.dtype for g in fused[1]] == [torch.bfloat16] * 3
    for got, ref in zip([fused[0]] + fused[1], [truth[0]] + truth[1]):
        err = (got.double() - ref).abs().max() / ref.abs().max().clamp(min=1e-6)
        assert err < 2e-2, err
    for f, u, t in zip(fused[1], unfused[1], truth[1]):
        # no worse than the unfused bf16 path, up to one bf16 rounding of the largest entry
        e_f = (f.double() - t).abs().max()
        e_u = (u.double() - t).abs().max()
        assert e_f <= 2 * e_u + t.abs().max() * 2 ** -8


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_empty_masks_give_zero_loss_and_gradients(reduction):
    case = list(make_case(seed=2))
    case[6] = torch.zeros_like(case[6])
    case[7] = torch.zeros_like(case[7])
    go = torch.ones(3, 7, dtype=torch.float64) if reduction == "none" else None
    loss, grads = run(True, case, grad_out=go, reduction=reduction)
    assert not loss.any()
    assert all(g is not None and not g.any() for g in grads)


def test_common_mask_none_and_kl_none_ignore_common_rows():
    case = list(make_case(seed=4))
    a = run(True, case, chunk_rows=3, kl=None)
    case[7] = None
    b = run(True, case, chunk_rows=3)
    assert_same(a, b)
    assert_same(b, run(False, case))


def test_only_loss_rows_are_projected():
    """NaN in hidden rows outside I and C cannot reach the loss or the gradients."""
    case = list(make_case(seed=6))
    hid, rh = case[0].clone(), case[3].clone()
    out = ~(case[6] | case[7])
    assert out.any()
    hid[out] = float("nan")
    rh[out] = float("nan")
    case[0], case[3] = hid, rh
    loss, grads = run(True, case, chunk_rows=4)
    assert torch.isfinite(loss)
    assert all(torch.isfinite(g).all() for g in grads)
    assert not grads[0][out].any()


class _MaxOutput(TorchDispatchMode):
    """Records the largest op output that is not shaped like the projection weight."""

    def __init__(self, skip):
        super().__init__()
        self.skip, self.largest = skip, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and tuple(t.shape) not in self.skip:
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_no_tensor_larger_than_a_chunk_of_logits(reduction):
    """The [rows, V] logits are never materialised: every temporary is at most chunk x V."""
    rows, v, h, chunk = 96, 50, 4, 8
    case = make_case(lead=(rows,), h=h, v=v, seed=8, p_i=0.4, p_c=0.6)
    hid, w, b = (t.detach().requires_grad_() for t in case[:3])
    mode = _MaxOutput(skip={(v, h), (h, v)})
    with mode:
        loss = palu_fused_linear_loss(hid, w, case[3], case[4], case[6], case[7], bias=b,
                                      ref_bias=case[5], chunk_rows=chunk, reduction=reduction)
        (loss if reduction != "none" else loss.sum()).backward()
    assert mode.largest <= chunk * v
    assert hid.grad is not None and w.grad is not None and b.grad is not None


@settings(max_examples=15)
@given(rows=st.integers(1, 30), chunk=st.integers(1, 35), seed=st.integers(0, 99))
def test_result_does_not_depend_on_chunk_rows(rows, chunk, seed):
    case = make_case(lead=(rows,), h=5, v=17, seed=seed)
    kw = dict(k=4, target="topk_mean", kl="forward")
    assert_same(run(True, case, chunk_rows=chunk, **kw), run(True, case, chunk_rows=1000, **kw))


def test_partial_requires_grad_and_reference_gets_none():
    case = make_case(seed=9)
    rw = case[4].detach().requires_grad_()
    case = case[:4] + (rw,) + case[5:]
    for need in [(True, False, False), (False, True, False), (False, False, True)]:
        got = run(True, case, need=need, chunk_rows=4)
        assert_same(got, run(False, case, need=need))
    assert rw.grad is None


def test_gradcheck_fp64_tiny():
    hid, w, b, rh, rw, rb, i_mask, c_mask = make_case(lead=(2, 3), h=3, v=7, seed=1, p_i=0.4)
    for reduction, target in [("mean", "mean"), ("sum", "topk_mean"), ("none", "mean")]:
        kw = dict(k=3, target=target, chunk_rows=2, reduction=reduction)

        def f(hh, ww, bb, kw=kw):
            return palu_fused_linear_loss(hh, ww, rh, rw, i_mask, c_mask, bias=bb, ref_bias=rb,
                                          **kw)

        inputs = tuple(t.detach().requires_grad_() for t in (hid, w, b))
        assert torch.autograd.gradcheck(f, inputs)


def test_loss_without_grad_matches():
    case = make_case(seed=10)
    for reduction in REDUCTIONS:
        hid, w, b, rh, rw, rb, i_mask, c_mask = case
        got = palu_fused_linear_loss(hid, w, rh, rw, i_mask, c_mask, bias=b, ref_bias=rb,
                                     chunk_rows=3, reduction=reduction)
        assert not got.requires_grad
        z = hid @ w.T + b
        r = rh @ rw.T + rb
        torch.testing.assert_close(
            got, palu_local_entropy_loss(z, r, i_mask, c_mask, reduction=reduction))


def test_default_chunk_rows(monkeypatch):
    assert default_chunk_rows(32000, 512) == 64
    assert default_chunk_rows(128256, 4096, device_type="cuda") == 256
    assert default_chunk_rows(10 ** 9, 8) == 1
    # chunk_rows=None takes default_chunk_rows of the call's V and hidden sizes: with a budget
    # of 3 rows (V 23, H 6), no temporary exceeds 3 rows of logits, and a 4th row would
    monkeypatch.setitem(fl.CHUNK_BYTES, "cpu", 3 * 4 * (fl.CHUNK_TENSORS * 23 + 2 * (6 + 6)))
    assert default_chunk_rows(23, 6) == 3
    rows, v, h = 40, 23, 6
    case = make_case(lead=(rows,), h=h, v=v, seed=12, p_i=0.4, p_c=0.6)
    hid, w, b = (t.detach().requires_grad_() for t in case[:3])
    largest = {}
    for chunk in (None, 4):
        mode = _MaxOutput(skip={(v, h), (h, v), (rows, h)})
        with mode:
            loss = palu_fused_linear_loss(hid, w, case[3], case[4], case[6], case[7], bias=b,
                                          ref_bias=case[5], chunk_rows=chunk)
            loss.backward()
        largest[chunk] = mode.largest
    assert largest[None] == 3 * v and largest[4] == 4 * v


def _call(**over):
    hid, w, b, rh, rw, rb, i_mask, c_mask = make_case(seed=13)
    args = dict(hidden=hid, weight=w, ref_hidden=rh, ref_weight=rw, initiating_mask=i_mask,
                common_mask=c_mask, bias=b, ref_bias=rb)
    args.update(over)
    return palu_fused_linear_loss(**args)


@pytest.mark.parametrize("over, exc, words", [
    (dict(hidden=[1.0]), TypeError, "hidden must be a torch.Tensor"),
    (dict(hidden=torch.zeros(3, 7, 6, dtype=torch.int64)), TypeError, "hidden must be a floating"),
    (dict(hidden=torch.zeros(6)), ValueError, "hidden must have shape"),
    (dict(weight=torch.zeros(23, 6, 1, dtype=torch.float64)), ValueError, "weight must have shape [V, H]"),
    (dict(weight=torch.zeros(23, 5, dtype=torch.float64)), ValueError, "weight must have shape [V, 6]"),
    (dict(weight=torch.zeros(23, 6)), TypeError, "weight must have the dtype of hidden"),
    (dict(ref_weight=torch.zeros(24, 6, dtype=torch.float64)), ValueError, "vocabulary size of weight"),
    (dict(ref_hidden=torch.zeros(3, 6, 6, dtype=torch.float64)), ValueError, "leading shape of hidden"),
    (dict(bias=torch.zeros(22, dtype=torch.float64)), ValueError, "bias must have shape [23]"),
    (dict(ref_bias=torch.zeros(23, 1, dtype=torch.float64)), ValueError, "ref_bias must have shape [V]"),
    (dict(chunk_rows=0), ValueError, "chunk_rows must be >= 1"),
    (dict(chunk_rows=2.0), TypeError, "chunk_rows must be a positive int"),
    (dict(chunk_rows=True), TypeError, "chunk_rows must be a positive int"),
    (dict(initiating_mask=torch.zeros(3, 6, dtype=torch.bool)), ValueError, "initiating_mask must have shape [3, 7]"),
    (dict(common_mask=torch.zeros(3, 7)), TypeError, "common_mask must have dtype torch.bool"),
    (dict(k=0), ValueError, "k must be >= 1"),
    (dict(reduction="avg"), ValueError, "reduction must be one of"),
    (dict(target="median"), ValueError, "target must be one of"),
    (dict(gamma=float("nan")), ValueError, "gamma must be finite"),
    (dict(backend="cuda"), ValueError, "backend must be one of"),
])
def test_bad_input_errors(over, exc, words):
    with pytest.raises(exc) as info:
        _call(**over)
    assert words in str(info.value)


def test_bad_options_rejected_even_without_loss_rows():
    empty = torch.zeros(3, 7, dtype=torch.bool)
    with pytest.raises(ValueError, match="kl must be"):
        _call(initiating_mask=empty, common_mask=empty, kl="both")


def test_overlapping_masks_and_nan_reference_rows_rejected():
    hid, w, b, rh, rw, rb, i_mask, c_mask = make_case(seed=14)
    with pytest.raises(ValueError, match="must not overlap"):
        _call(common_mask=i_mask | c_mask)
    rh = rh.clone()
    rh[i_mask.nonzero()[0].tolist()] = float("nan")
    with pytest.raises(ValueError, match="must not hold NaN"):
        _call(ref_hidden=rh)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_triton_backend_matches_torch_backend(reduction):
    if not torch.cuda.is_available():
        if os.environ.get("TRITON_INTERPRET") != "1":
            pytest.skip("no CUDA and TRITON_INTERPRET is not 1")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    case = tuple(None if t is None else t.to(dev) for t in
                 make_case(lead=(2, 9), h=8, v=40, dtype=torch.float32, seed=15))
    go = torch.rand(2, 9, device=dev) if reduction == "none" else None
    kw = dict(k=6, reduction=reduction, chunk_rows=5)
    assert_same(run(True, case, grad_out=go, backend="triton", **kw),
                run(True, case, grad_out=go, backend="torch", **kw), rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- weights=

def _weights(lead, seed, device="cpu"):
    """Per-row weights in [-1, 2): signs, zeros-ish and values above 1 all occur."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(*lead, generator=g) * 3 - 1).to(device)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_weights_equal_the_unfused_loss_with_the_same_weights_fp32(backend, reduction):
    """fused_linear(weights=w) is palu_local_entropy_loss(weights=w) on the projected logits:
    value and the gradients of hidden, weight and bias, fp32, with a per-row grad_output for
    "none"; and different from the unweighted loss (the weights are used)."""
    if backend == "triton" and not torch.cuda.is_available() \
            and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no CUDA and TRITON_INTERPRET is not 1")
    dev = "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"
    case = tuple(None if t is None else t.to(dev) for t in
                 make_case(lead=(2, 9), h=8, v=40, dtype=torch.float32, seed=21))
    w = _weights((2, 9), seed=22, device=dev)
    go = torch.rand(2, 9, device=dev) + 0.5 if reduction == "none" else None
    kw = dict(k=6, reduction=reduction, backend=backend, gamma=1.3, alpha=0.6)
    fused = run(True, case, grad_out=go, chunk_rows=4, weights=w, **kw)
    unfused = run(False, case, grad_out=go, weights=w, **kw)
    assert_same(fused, unfused, rtol=1e-4, atol=1e-5)
    plain = run(True, case, grad_out=go, chunk_rows=4, **kw)
    assert not torch.allclose(fused[0], plain[0])


def test_weights_fp64_every_option_and_without_grad():
    case = make_case(seed=23)
    w = _weights((3, 7), seed=24).double()
    for reduction in REDUCTIONS:
        for target, kl in (("mean", "reverse"), ("topk_mean", "forward"), (0.5, None)):
            kw = dict(k=5, target=target, kl=kl, reduction=reduction, weights=w)
            go = _weights((3, 7), seed=25).double() if reduction == "none" else None
            assert_same(run(True, case, grad_out=go, chunk_rows=2, **kw),
                        run(False, case, grad_out=go, **kw))
            hid, wt, b, rh, rw, rb, i_mask, c_mask = case
            got = palu_fused_linear_loss(hid, wt, rh, rw, i_mask, c_mask, bias=b, ref_bias=rb,
                                         chunk_rows=3, **kw)
            torch.testing.assert_close(got, palu_local_entropy_loss(
                hid @ wt.T + b, rh @ rw.T + rb, i_mask, c_mask, **kw))


@pytest.mark.parametrize("bad, exc, words", [
    ([1.0] * 21, TypeError, "weights must be a torch.Tensor or None"),
    (torch.ones(3, 7, dtype=torch.int64), TypeError, "weights must be a floating tensor"),
    (torch.ones(3, 6, dtype=torch.float64), ValueError, "weights must have shape [3, 7]"),
    (torch.full((3, 7), float("nan"), dtype=torch.float64), ValueError,
     "weights must be finite"),
    (torch.ones(3, 7, device="meta"), ValueError, "weights must be on cpu"),
])
def test_bad_weights_are_refused_naming_weights(bad, exc, words):
    with pytest.raises(exc) as info:
        _call(weights=bad)
    assert words in str(info.value) and str(info.value).startswith("weights")
