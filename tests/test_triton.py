"""The Triton kernels (``palu_kernels/backends``) against the specification (``reference/``).

Without a GPU they run through the Triton interpreter (``TRITON_INTERPRET=1``, set by
``conftest.py``); the interpreter is slow, so shapes stay small except for a few rows at
V = 32003. ``tests/test_triton_cuda.py`` runs the same checks (the ``check_*`` functions
below) with compiled kernels on CUDA tensors.
"""

from __future__ import annotations

import functools
import os

import pytest
import torch
from hypothesis import given, settings, strategies as st

import palu_kernels as pk
import reference
from helpers import assert_matches_reference, loss_and_grad, make_case
from palu_kernels._validation import check_loss_args
from palu_kernels.backends.triton_loss import palu_loss_triton
from palu_kernels.backends.triton_topk import topk_mask_from_threshold, topk_threshold

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("TRITON_INTERPRET", "0") != "1",
        reason="interpreter tests (TRITON_INTERPRET=1); on CUDA see tests/test_triton_cuda.py",
    ),
    # numpy's note on -inf - (-inf) in masked lanes (the kernels discard those values)
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
]

DEVICE = "cpu"
TARGETS = ["mean", "mean_detached", "topk_mean", 0.75]
KLS = ["reverse", "forward", None]
REDUCTIONS = ["mean", "sum", "none"]
LOW = [torch.bfloat16, torch.float16]


def triton_loss(z, r, i, c, *, block_v=None, block_sel=None, **opts):
    """The loss through the Triton backend, with optional tile sizes (small tiles make the
    interpreter walk several tiles per row even for a small vocabulary)."""
    if block_v is None and block_sel is None:
        return pk.palu_local_entropy_loss(z, r, i, c, backend="triton", **opts)
    a = check_loss_args(z, r, i, c, k=opts.get("k", 5000), target=opts.get("target", "mean"),
                        kl=opts.get("kl", "reverse"), gamma=opts.get("gamma", 1.0),
                        alpha=opts.get("alpha", 1.0), reduction=opts.get("reduction", "mean"),
                        weights=opts.get("weights"))
    return palu_loss_triton(z, a, block_v=block_v, block_sel=block_sel)


def torch_loss(*args, **opts):
    return pk.palu_local_entropy_loss(*args, backend="torch", **opts)


def adversarial_rows(kind, n, v, dtype=torch.float32, seed=0, device=DEVICE):
    """``[n, v]`` reference rows that stress the top-K selection."""
    g = torch.Generator().manual_seed(seed)
    if kind == "ties":  # a handful of values: the K-th is shared by many entries
        r = torch.randint(-2, 2, (n, v), generator=g).float()
    elif kind == "all_equal":
        r = torch.full((n, v), 1.5)
    elif kind == "signed_zero":  # -0.0 and +0.0 are equal: one tie group
        r = torch.randint(-1, 2, (n, v), generator=g).float() * 0.0
        r[:, ::3] = -0.0
    elif kind == "inf":  # -inf / +inf entries and extreme finite values
        r = torch.randn(n, v, generator=g) * 3
        r[:, ::4] = float("-inf")
        r[:, 1::7] = -1e4
        r[:, 2::9] = 1e4
        r[0, -1] = float("inf")
    elif kind == "tiny":  # values one ulp apart, and subnormals (fp32 on the CPU only: the
        # interpreter flushes bf16 subnormals to zero when it converts them, and compiled code
        # may flush them too; logits are never subnormal in practice)
        sub = dtype == torch.float32 and torch.device(device).type == "cpu"
        r = torch.randint(0, 3, (n, v), generator=g).float() * (1e-40 if sub else 1e-3)
        r[:, 1::2] = torch.nextafter(torch.tensor(1.0, dtype=dtype),
                                     torch.tensor(2.0, dtype=dtype)).float()
        r[:, ::5] = 1.0
    else:
        r = torch.randn(n, v, generator=g) * 3
    return r.to(dtype).to(device)


# ----------------------------------------------------------------------------- top-K


def check_topk_threshold(r, k, **opts):
    """``topk_threshold`` defines the first ``k`` places of a stable descending sort."""
    thr, ties = topk_threshold(r, k, **opts)
    assert thr.dtype == r.dtype and ties.dtype == torch.int64
    assert thr.shape == r.shape[:-1] and ties.shape == r.shape[:-1]
    member = topk_mask_from_threshold(r, thr, ties)
    expected = reference.topk_set_reference(r.cpu(), k)
    assert torch.equal(member.cpu(), expected)
    kk = r.shape[-1] if k is None else min(k, r.shape[-1])
    kth = torch.sort(r.float(), dim=-1, descending=True, stable=True).values[..., kk - 1]
    assert torch.equal(thr.float(), kth)
    assert torch.all(ties >= 1)


@settings(max_examples=12)
@given(
    v=st.sampled_from([1, 2, 7, 33, 100]),
    kind=st.sampled_from(["ties", "all_equal", "signed_zero", "inf", "tiny", "randn"]),
    k=st.one_of(st.none(), st.integers(1, 110)),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
    block=st.sampled_from([None, 4]),
    seed=st.integers(0, 2**16),
)
def test_topk_threshold_matches_stable_sort(v, kind, k, dtype, block, seed):
    r = adversarial_rows(kind, 3, v, dtype, seed)
    check_topk_threshold(r, k, block=block)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("block", [4, 8])
def test_topk_threshold_several_tiles_and_key_widths(dtype, block):
    # 16-bit keys (2 histogram passes) and 32-bit keys (4), several tiles per row, a tie
    # straddling the boundary (the j_last pass) and +-inf
    r = adversarial_rows("ties", 2, 19, dtype, seed=1)
    r[1] = adversarial_rows("inf", 1, 19, dtype, seed=2)
    for k in (1, 5, 10, 18):
        check_topk_threshold(r, k, block=block)


def test_topk_threshold_one_digit_apart():
    # keys that differ only in the lowest digit (fp32: the last of 4 passes decides) and
    # values whose high key bytes collide across the sign (-x and x, tiny magnitudes)
    one = torch.tensor(1.0)
    ulps = [one]
    for _ in range(6):
        ulps.append(torch.nextafter(ulps[-1], torch.tensor(2.0)))
    base = torch.stack(ulps + [-u for u in ulps] + [torch.tensor(1e-30), torch.tensor(-1e-30)])
    r = torch.stack([base, base.flip(0)])
    for k in range(1, base.numel() + 1):
        check_topk_threshold(r, k)


def test_topk_threshold_large_vocab_and_batched_shape():
    r = adversarial_rows("ties", 2, 32003, seed=3).reshape(1, 2, 32003)
    r[0, 1] = adversarial_rows("randn", 1, 32003, seed=4)
    check_topk_threshold(r, 5000)


def test_topk_threshold_non_contiguous():
    r = adversarial_rows("ties", 40, 6, seed=5).t()  # [6, 40], column stride 6
    assert not r.is_contiguous()
    check_topk_threshold(r, 9)


def test_topk_threshold_bad_arguments():
    r = torch.randn(2, 5)
    with pytest.raises(TypeError, match="float64"):
        topk_threshold(r.double(), 2)
    with pytest.raises(TypeError, match="k must be an int"):
        topk_threshold(r, 2.0)
    with pytest.raises(TypeError, match="k must be an int"):
        topk_threshold(r, True)
    with pytest.raises(ValueError, match="k must be >= 1"):
        topk_threshold(r, 0)
    with pytest.raises(ValueError, match="V >= 1"):
        topk_threshold(torch.randn(3, 0), 1)
    with pytest.raises(TypeError, match="torch.Tensor"):
        topk_threshold([[1.0, 2.0]], 1)
    with pytest.raises(ValueError, match="block must be a power of two"):
        topk_threshold(r, 2, block=3)


def test_topk_threshold_public_and_clips_k():
    r = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0]])
    thr, ties = pk.topk_threshold(r, 2)
    assert thr.tolist() == [3.0] and ties.tolist() == [2]
    thr, ties = pk.topk_threshold(r, 99)  # k > V: the whole row
    assert thr.tolist() == [1.0] and ties.tolist() == [1]
    assert pk.topk_threshold(torch.empty(0, 4), 2)[0].shape == (0,)


# ----------------------------------------------------------------------------- the loss


def check_every_option(device, dtype, target, kl, reduction, k, shape, seed, *, ties=False,
                       grad_out=False, tiles=None, p_init=0.4):
    z, r, i, c = make_case(shape, dtype, seed=seed, ties=ties, p_init=p_init,
                           p_common=1.0 - p_init, device=device)
    go = None
    if grad_out:
        g = torch.Generator().manual_seed(seed)
        go = (torch.randn(shape[:-1], generator=g) if reduction == "none"
              else torch.tensor(-1.75)).to(device)
    fn = functools.partial(triton_loss, **(tiles or {}))
    assert_matches_reference(fn, z, r, i, c, grad_out=go, k=k, target=target, kl=kl,
                             reduction=reduction, gamma=1.3, alpha=0.6)


@settings(max_examples=15)
@given(
    target=st.sampled_from(TARGETS),
    kl=st.sampled_from(KLS),
    reduction=st.sampled_from(REDUCTIONS),
    k=st.sampled_from([1, 3, 7, 40, 1000, None]),
    shape=st.sampled_from([(5, 1), (6, 7), (2, 3, 7), (4, 40), (2, 3, 64)]),
    ties=st.booleans(),
    grad_out=st.booleans(),
    tiles=st.sampled_from([None, dict(block_v=16, block_sel=16)]),
    seed=st.integers(0, 2**16),
)
def test_property_fp32_matches_reference(target, kl, reduction, k, shape, ties, grad_out,
                                         tiles, seed):
    check_every_option(DEVICE, torch.float32, target, kl, reduction, k, shape, seed, ties=ties,
                       grad_out=grad_out, tiles=tiles)


@settings(max_examples=8)
@given(
    dtype=st.sampled_from(LOW),
    target=st.sampled_from(TARGETS),
    kl=st.sampled_from(["reverse", "forward"]),
    reduction=st.sampled_from(REDUCTIONS),
    k=st.sampled_from([1, 5, None]),
    seed=st.integers(0, 2**16),
)
def test_property_low_precision_within_the_references_own_error(dtype, target, kl, reduction,
                                                                k, seed):
    check_every_option(DEVICE, dtype, target, kl, reduction, k, (6, 300), seed, grad_out=True)


@pytest.mark.parametrize("k", [1, 4, 37, 38, None])
def test_k_edges(k):
    check_every_option(DEVICE, torch.float32, "mean", "reverse", "mean", k, (8, 37), seed=k or 0)


def check_large_vocab(device, dtype, tiles=None):
    # 3 rows: one initiating, one common, one without loss (V = 32003, not a power of two)
    z, r, _, _ = make_case((3, 32003), dtype, seed=21, ties=True, device=device)
    i = torch.tensor([True, False, False], device=device)
    c = torch.tensor([False, True, False], device=device)
    fn = functools.partial(triton_loss, **(tiles or {}))
    assert_matches_reference(fn, z, r, i, c, k=5000, target="mean", kl="reverse",
                             reduction="none")


def test_large_vocab_fp32():
    check_large_vocab(DEVICE, torch.float32)


def test_large_vocab_compiled_tile_sizes():
    # the tiles a GPU uses: 4096-wide streaming passes (7 full tiles, a masked tail) and
    # 2048-wide selection tiles
    check_large_vocab(DEVICE, torch.float32, dict(block_v=4096, block_sel=2048))


def test_large_vocab_bf16():
    check_large_vocab(DEVICE, torch.bfloat16)


def check_adversarial(device, dtype):
    """Ties at the K-th value, -inf at the same places in both models, +-1e4, constant rows."""
    z, r, i, c = make_case((12, 48), dtype, seed=31, ties=True, p_init=0.5, device=device)
    z[0:2] = 2.0  # constant logits rows
    r[2] = 0.5  # an all-equal reference row
    z[3] = z[3] * 3000.0  # huge magnitudes
    r[3] = r[3] * 3000.0
    masked = torch.zeros(48, dtype=torch.bool, device=device)
    masked[::5] = True
    z = torch.where(c[:, None] & masked, float("-inf"), z)  # masked in both models ...
    r = torch.where(masked, float("-inf"), r)  # ... (and in the reference of I rows)
    for k, kl in ((1, "reverse"), (10, "forward"), (30, "reverse")):
        assert_matches_reference(triton_loss, z, r, i, c, k=k, kl=kl, reduction="none")
    assert torch.isfinite(triton_loss(z, r, i, c, k=10, kl="forward"))


def test_adversarial_rows_fp32():
    check_adversarial(DEVICE, torch.float32)


def test_adversarial_rows_bf16():
    check_adversarial(DEVICE, torch.bfloat16)


def check_huge_magnitudes(device):
    z, r, i, c = make_case((10, 64), seed=6, scale=1e4, p_init=0.5, device=device)
    for kl in ("reverse", "forward"):
        assert_matches_reference(triton_loss, z, r, i, c, k=50, kl=kl, reduction="sum")


def test_huge_magnitudes():
    check_huge_magnitudes(DEVICE)


def check_empty_masks(device):
    z, r, _, _ = make_case((2, 3, 13), seed=10, device=device)
    none = torch.zeros(2, 3, dtype=torch.bool, device=device)
    for reduction in REDUCTIONS:
        for common in (none, None):
            loss, grad = loss_and_grad(triton_loss, z, r, none, common, k=3,
                                       reduction=reduction)
            assert torch.all(loss == 0) and torch.all(grad == 0)
            assert loss.dtype == torch.float32


def test_empty_masks_give_zero_loss_and_zero_grad():
    check_empty_masks(DEVICE)


def check_rows_without_loss_are_never_read(device):
    z, r, i, c = make_case((12, 31), seed=11, p_init=0.3, p_common=0.3, device=device)
    unused = ~(i | c)
    assert unused.any()
    z2 = torch.where(unused[:, None], float("nan"), z)
    r2 = torch.where(unused[:, None], float("nan"), r)
    a, ga = loss_and_grad(triton_loss, z, r, i, c, k=4)
    b, gb = loss_and_grad(triton_loss, z2, r2, i, c, k=4)
    assert torch.equal(a, b) and torch.equal(ga, gb)
    assert torch.all(ga[unused] == 0)


def test_rows_without_loss_are_never_read():
    check_rows_without_loss_are_never_read(DEVICE)


def check_non_contiguous(device):
    z, r, i, c = make_case((5, 12, 9), seed=15, device=device)
    zt, rt, it, ct = z.transpose(0, 1), r.transpose(0, 1), i.t(), c.t()  # [12, 5, 9] views
    assert not zt.is_contiguous()
    assert_matches_reference(triton_loss, zt, rt, it, ct, k=3, reduction="none")
    # column stride != 1: every other vocabulary entry of a wider tensor
    zw, rw, iw, cw = make_case((8, 34), seed=16, device=device)
    zs, rs = zw[:, ::2], rw[:, ::2]
    a, ga = loss_and_grad(triton_loss, zs, rs, iw, cw, k=5)
    b, gb = loss_and_grad(triton_loss, zs.contiguous(), rs.contiguous(), iw, cw, k=5)
    assert torch.equal(a, b) and torch.equal(ga, gb)


def test_non_contiguous_inputs():
    check_non_contiguous(DEVICE)


def check_deterministic_and_equal_to_torch_backend(device):
    z, r, i, c = make_case((3, 8, 200), seed=12, ties=True, device=device)
    a, ga = loss_and_grad(triton_loss, z, r, i, c, k=20)
    b, gb = loss_and_grad(triton_loss, z, r, i, c, k=20)
    assert torch.equal(a, b) and torch.equal(ga, gb)
    t, gt = loss_and_grad(torch_loss, z.cpu(), r.cpu(), i.cpu(), c.cpu(), k=20)
    torch.testing.assert_close(a.cpu(), t, rtol=2e-5, atol=1e-6)
    torch.testing.assert_close(ga.cpu(), gt, rtol=2e-5, atol=2e-5 * gt.abs().max().item())


def test_deterministic_and_equal_to_torch_backend():
    check_deterministic_and_equal_to_torch_backend(DEVICE)


def check_autograd_contract(device):
    """Loss without grad equals loss with grad; the saved gradient survives repeated
    backward (retain_graph), whatever grad_output is; ref_logits get no gradient."""
    z, r, i, c = make_case((2, 4, 11), seed=14, device=device)
    plain = triton_loss(z, r, i, c, k=3)
    zg = z.clone().requires_grad_(True)
    r.requires_grad_(True)
    loss = triton_loss(zg, r, i, c, k=3)
    assert torch.equal(plain, loss.detach())
    loss.backward(retain_graph=True)
    first = zg.grad.clone()
    loss.backward(retain_graph=True)
    torch.testing.assert_close(zg.grad, 2 * first)
    zg.grad = None
    (3.0 * loss).backward(retain_graph=True)
    torch.testing.assert_close(zg.grad, 3 * first)
    zg.grad = None
    loss.backward()
    assert torch.equal(zg.grad, first)
    assert r.grad is None


def test_autograd_contract():
    check_autograd_contract(DEVICE)


def test_recompute_refuses_logits_modified_in_place():
    z, r, i, c = make_case((6, 11), seed=18)
    zg = z.clone().requires_grad_(True)
    x = zg * 1.0  # a non-leaf, as a model's logits are
    loss = triton_loss(x, r, i, c, k=3)
    loss.backward(retain_graph=True)  # hands the fused gradient over
    with torch.no_grad():
        x.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()  # would recompute from changed logits


def test_float64_is_refused_with_a_pointer_to_the_torch_backend():
    z, r, i, c = make_case((2, 5), torch.float64, seed=0)
    with pytest.raises(TypeError, match="backend='torch'"):
        triton_loss(z, r, i, c, k=2)


def test_cpu_without_interpreter_is_refused(monkeypatch):
    z, r, i, c = make_case((2, 5), seed=0)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        triton_loss(z, r, i, c, k=2)
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        topk_threshold(r, 2)


def test_gamma_alpha_weights():
    z, r, i, c = make_case((10, 20), seed=17)
    local = triton_loss(z, r, i, c, k=3, kl=None)
    kl = triton_loss(z, r, i, c, k=3, gamma=0.0)
    both = triton_loss(z, r, i, c, k=3, gamma=2.0, alpha=3.0)
    torch.testing.assert_close(both, 2 * local + 3 * kl)


_AOT_SCRIPT = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from palu_kernels.backends.triton_loss import _palu_fwd_kernel, _scale_rows_kernel
from palu_kernels.backends.triton_split import _split_kernel
from palu_kernels.backends.triton_topk import _topk_threshold_kernel

def fused(dt):
    return {"z_ptr": "*" + dt, "r_ptr": "*" + dt, "order_ptr": "*i32", "kind_ptr": "*i32",
            "w_ptr": "*fp32", "loss_ptr": "*fp32", "g_ptr": "*" + dt, "T": "i32", "V": "i32",
            "K": "i32", "target_value": "fp32", "stride_zb": "i64", "stride_zt": "i64",
            "stride_rb": "i64", "stride_rt": "i64"}
def full(bits, vec, kl, bracket):
    return {"TARGET": 0, "KL": kl, "TOPK_ALL": False, "WRITE_GRAD": True, "KEY_BITS": bits,
            "BLOCK_V": 8192, "BLOCK_SEL": 4096, "VEC": vec, "G_HINT": vec > 1, "NUM_STAGES": 3,
            "BRACKET": bracket, "RC": 32, "LOCAL_ONLY": False}
def split(dt):
    return {"z_ptr": "*" + dt, "r_ptr": "*" + dt, "order_ptr": "*i32", "counts_ptr": "*i32",
            "w_ptr": "*fp32", "loss_ptr": "*fp32", "g_ptr": "*" + dt, "rec_ptr": "*fp32",
            "cnt_ptr": "*i32", "N": "i32", "T": "i32", "V": "i32", "stride_zb": "i64",
            "stride_zt": "i64", "stride_rb": "i64", "stride_rt": "i64", "pid_base": "i32",
            "P": "i32", "R": "i32"}
def split_c(kl, grad):
    return {"KL": kl, "WRITE_GRAD": grad, "CHUNK": 8192, "G": 16, "GP": 16, "CG": True}
sel = {"r_ptr": "*fp16", "thr_ptr": "*fp16", "ties_ptr": "*i64", "s_ptr": "*i32",
       "path_ptr": "*i32", "V": "i32", "K": "i32", "stride_rn": "i64", "stride_rv": "i32", "R": "i32"}
scale = {"g_ptr": "*bf16", "s_ptr": "*fp32", "kind_ptr": "*i32", "V": "i32", "stride_s": "i32"}
for fn, sig, const in ((_palu_fwd_kernel, fused("bf16"), full(16, 8, 1, True)),
                       (_palu_fwd_kernel, fused("bf16"), full(16, 8, 1, False)),
                       (_palu_fwd_kernel, fused("fp32"), full(32, 1, 2, True)),
                       (_palu_fwd_kernel, fused("bf16"), {**full(16, 8, 1, True),
                                                          "LOCAL_ONLY": True}),
                       (_split_kernel, split("bf16"), split_c(1, True)),
                       (_split_kernel, split("fp32"), split_c(2, False)),
                       (_split_kernel, split("fp16"), split_c(0, True)),
                       (_topk_threshold_kernel, sel, {"BLOCK": 4096, "KEY_BITS": 16,
                                                      "NUM_STAGES": 3, "BRACKET": True, "RC": 32}),
                       (_topk_threshold_kernel, {**sel, "r_ptr": "*fp32", "thr_ptr": "*fp32"},
                        {"BLOCK": 4096, "KEY_BITS": 32,
                                                      "NUM_STAGES": 3, "BRACKET": False, "RC": 32}),
                       (_scale_rows_kernel, scale, {"BLOCK_V": 8192})):
    sig = {**sig, **{name: "constexpr" for name in const}}
    k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=const),
                       target=GPUTarget("cuda", 90, 32), options={"num_warps": 8})
    assert ".target sm_90" in k.asm["ptx"], fn
print("compiled")
"""


def test_kernels_compile_for_a_gpu_without_one():
    """The interpreter forgives what the compiler does not (types of loop-carried values,
    constexpr misuse): compile the fullest variants for sm_90 ahead of time, no GPU needed.
    In a subprocess, since this process runs triton as the interpreter."""
    import subprocess
    import sys

    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the triton build
        pytest.skip(f"triton has no ahead-of-time compiler here: {e}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    res = subprocess.run([sys.executable, "-c", _AOT_SCRIPT], env=env, capture_output=True,
                         text=True, timeout=600)
    if res.returncode and "ptxas" in res.stderr and "version" in res.stderr.lower():
        pytest.skip(f"the bundled ptxas cannot assemble this PTX: {res.stderr[-300:]}")
    assert res.returncode == 0 and "compiled" in res.stdout, res.stderr[-3000:]
