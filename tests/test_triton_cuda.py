"""The Triton kernels compiled for a GPU: the checks of tests/test_triton.py on CUDA tensors,
plus what only a GPU can show (more than 2^31 elements, peak memory, backend="auto").

Skipped without CUDA. Kept to a few dozen kernel variants: each one is compiled on first use.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

import palu_kernels as pk  # noqa: E402
import reference  # noqa: E402
import test_triton as T  # noqa: E402  (the shared check_* functions)
from helpers import loss_and_grad, make_case  # noqa: E402
from palu_kernels.backends.triton_topk import topk_mask_from_threshold, topk_threshold  # noqa: E402

DEV = "cuda"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_topk_threshold_matches_stable_sort(dtype):
    for kind in ("ties", "all_equal", "signed_zero", "inf", "tiny", "randn"):
        for v in (1, 7, 1000, 32003) if dtype == torch.float32 else (7, 1000, 32003):
            r = T.adversarial_rows(kind, 4, v, dtype, seed=v, device=DEV)
            for k in (1, 3, v // 2 + 1, v, v + 1, None):
                T.check_topk_threshold(r, k)


def test_topk_threshold_large_vocabularies_and_digit_widths():
    for v in (128256, 262144):
        r = T.adversarial_rows("ties", 8, v, torch.bfloat16, seed=1, device=DEV)
        for k in (1, 5000, v - 1):
            T.check_topk_threshold(r, k)
    r = T.adversarial_rows("inf", 4, 4099, seed=2, device=DEV)
    for block in (64, 1024, 2048):
        T.check_topk_threshold(r, 100, block=block)


# Every target and every KL variant at least once, each with a selection (k=5) and without
# (k=V, None); all reductions. Each (target, kl) pair is a kernel variant to compile, so the
# full product is left to the interpreter tests.
@pytest.mark.parametrize("target,kl", [("mean", "reverse"), ("mean_detached", "forward"),
                                       ("topk_mean", None), (0.75, "reverse"),
                                       ("topk_mean", "forward")])
def test_every_option_fp32(target, kl):
    for reduction in T.REDUCTIONS:
        for k in (1, 5, 37, None):
            T.check_every_option(DEV, torch.float32, target, kl, reduction, k, (3, 9, 37),
                                 seed=k or 0, grad_out=True, ties=True)


@pytest.mark.parametrize("dtype", T.LOW)
def test_low_precision_within_the_references_own_error(dtype):
    for target, kl in (("mean", "reverse"), ("topk_mean", "forward")):
        T.check_every_option(DEV, dtype, target, kl, "mean", 40, (4, 12, 3000), seed=7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_large_vocab(dtype):
    T.check_large_vocab(DEV, dtype)


def test_adversarial_rows():
    for dtype in (torch.float32, torch.bfloat16):
        T.check_adversarial(DEV, dtype)
    T.check_huge_magnitudes(DEV)


def test_masks_contiguity_determinism_autograd():
    T.check_empty_masks(DEV)
    T.check_rows_without_loss_are_never_read(DEV)
    T.check_non_contiguous(DEV)
    T.check_deterministic_and_equal_to_torch_backend(DEV)
    T.check_autograd_contract(DEV)


def test_auto_backend_picks_triton_on_cuda():
    z, r, i, c = make_case((4, 50), seed=3, device=DEV)
    auto = pk.palu_local_entropy_loss(z, r, i, c, k=5)
    assert torch.equal(auto, pk.palu_local_entropy_loss(z, r, i, c, k=5, backend="triton"))


def test_nothing_of_size_rows_x_vocab_but_the_gradient():
    n, v = 512, 32000
    z, r, i, c = make_case((n, v), torch.bfloat16, seed=4, device=DEV)
    grad_bytes = n * v * z.element_size()
    slack = 1 << 20  # per-row statistics, masks, weights: O(rows)
    for requires_grad, budget in ((False, slack), (True, grad_bytes + slack)):
        x = z.clone().requires_grad_(requires_grad)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        loss = pk.palu_local_entropy_loss(x, r, i, c, k=5000, backend="triton")
        torch.cuda.synchronize()
        assert torch.cuda.max_memory_allocated() - base <= budget
        del loss, x


def test_more_than_2_31_elements():
    n, v = 16800, 128256  # 2.15e9 elements: offsets past 2^31 need 64-bit arithmetic
    need = 3 * n * v * 2 + (4 << 30)
    free, _ = torch.cuda.mem_get_info()
    if free < max(need, 40 << 30):
        pytest.skip(f"needs ~{need / 2**30:.0f} GiB free on the GPU, {free / 2**30:.0f} GiB free")
    g = torch.Generator(device=DEV).manual_seed(0)
    z = torch.empty(n, v, dtype=torch.bfloat16, device=DEV).normal_(0, 2, generator=g)
    r = torch.empty(n, v, dtype=torch.bfloat16, device=DEV).normal_(0, 2, generator=g)
    i = torch.zeros(n, dtype=torch.bool, device=DEV)
    c = torch.zeros(n, dtype=torch.bool, device=DEV)
    last = torch.arange(n - 4, n, device=DEV)  # rows that start beyond element 2^31
    assert int(last[0]) * v > 2**31
    i[last[:2]] = True
    c[last[2:]] = True
    i[0] = True
    z.requires_grad_(True)
    loss = pk.palu_local_entropy_loss(z, r, i, c, k=5000, reduction="none", backend="triton")
    loss.sum().backward()
    rows = torch.cat([torch.tensor([0], device=DEV), last])
    zs = z.detach()[rows].double().requires_grad_(True)
    truth = reference.palu_loss_reference(zs, r[rows].double(), i[rows], c[rows], k=5000,
                                          reduction="none")
    truth.sum().backward()
    torch.testing.assert_close(loss[rows].double(), truth, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(z.grad[rows].double(), zs.grad, rtol=1e-2, atol=1e-6)
    assert not z.grad[1:n - 4].any()


def test_torch_backend_agrees_at_a_realistic_row():
    z, r, i, c = make_case((2, 16, 128256), torch.bfloat16, seed=5, device=DEV)
    a, ga = loss_and_grad(T.triton_loss, z, r, i, c, k=5000)
    t, gt = loss_and_grad(T.torch_loss, z, r, i, c, k=5000)
    torch.testing.assert_close(a, t, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ga.float(), gt.float(), rtol=1e-2, atol=1e-6)


# ----------------------------------------------------------------------------- issue 11


@pytest.mark.parametrize("v", [50257, 32003])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_unaligned_vocab_and_strided_3d_match_the_reference(v, dtype):
    """V not divisible by 16 (masked head, unmasked 16-byte body, masked tail) and the
    trainer's ``logits[:, :-1]`` views, which rows start at every offset modulo 16 bytes."""
    g = torch.Generator(device=DEV).manual_seed(v)
    z = torch.randn(2, 9, v, device=DEV, generator=g).mul_(3).to(dtype)[:, :-1]
    r = torch.randn(2, 9, v, device=DEV, generator=g).mul_(3).to(dtype)[:, :-1]
    i = torch.zeros(2, 8, dtype=torch.bool, device=DEV)
    i[:, 1:3] = True
    c = torch.zeros(2, 8, dtype=torch.bool, device=DEV)
    c[:, 4:7] = True
    for kl in ("reverse", "forward"):
        from helpers import assert_matches_reference
        assert_matches_reference(T.triton_loss, z, r, i, c, k=500, kl=kl, reduction="none")


def test_backward_and_strided_inputs_allocate_nothing_but_the_gradient():
    """Forward: the gradient is the one [N, V] allocation, also for logits[:, :-1]; backward:
    nothing, whether grad_output is 1 (a no-op) or not (in place)."""
    b, t, v = 4, 129, 32000
    full = torch.randn(b, t + 1, v, device=DEV, dtype=torch.bfloat16)
    ref = torch.randn(b, t + 1, v, device=DEV, dtype=torch.bfloat16)[:, :-1]
    i = torch.rand(b, t, device=DEV) < 0.1
    c = (torch.rand(b, t, device=DEV) < 0.6) & ~i
    w = torch.rand(b, t, device=DEV)
    grad_bytes = b * t * v * 2
    slack = 1 << 20
    for scale in (1.0, 0.5):
        x = full.detach().requires_grad_(True)
        z = x[:, :-1]
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        rows = pk.palu_local_entropy_loss(z, ref, i, c, k=5000, reduction="none", weights=w,
                                          backend="triton")
        torch.cuda.synchronize()
        assert torch.cuda.max_memory_allocated() - base <= grad_bytes + slack
        loss = rows.sum() * scale
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        torch.autograd.grad(loss, z)  # the gradient of the view itself: no slice backward
        torch.cuda.synchronize()
        assert torch.cuda.max_memory_allocated() - base <= slack


def test_double_backward_raises_on_cuda():
    z, r, i, c = make_case((4, 300), seed=6, device=DEV)
    zg = z.clone().requires_grad_(True)
    loss = pk.palu_local_entropy_loss(zg, r, i, c, k=30, backend="triton")
    with pytest.raises(RuntimeError, match="differentiable once"):
        torch.autograd.grad(loss, zg, create_graph=True)


def test_compiled_step_with_the_triton_backend():
    torch._dynamo.reset()
    lin = torch.nn.Linear(64, 1000, device=DEV)
    x = torch.randn(2, 16, 64, device=DEV)
    ref = torch.randn(2, 16, 1000, device=DEV)
    i = torch.zeros(2, 16, dtype=torch.bool, device=DEV)
    i[:, 3] = True
    c = torch.zeros(2, 16, dtype=torch.bool, device=DEV)
    c[:, 5:12] = True

    def step(x):
        return pk.palu_local_entropy_loss(lin(x), ref, i, c, k=50, backend="triton")

    got = torch.compile(step, fullgraph=True)(x)
    got.backward()
    gw = lin.weight.grad.clone()
    lin.zero_grad()
    want = step(x)
    want.backward()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gw, lin.weight.grad, rtol=1e-4, atol=1e-6)


def test_device_guard_on_a_second_gpu():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    z, r, i, c = make_case((4, 300), seed=7, device="cuda:1")
    with torch.cuda.device(0):
        a = pk.palu_local_entropy_loss(z, r, i, c, k=30, backend="triton")
    b = pk.palu_local_entropy_loss(z.cpu(), r.cpu(), i.cpu(), c.cpu(), k=30, backend="torch")
    torch.testing.assert_close(a.cpu(), b, rtol=2e-5, atol=1e-6)


# ----------------------------------------------------------------------------- issue 23

# bf16 bit patterns around zero: subnormals are m * 2^-133 (bits 0x0001..0x007F), the smallest
# normal 2^-126 is 0x0080; 0x8000 is -0.0 (equal to +0.0: one tie group).
_SUB_POOL = [0x0080, 0x007F, 0x0004, 0x0003, 0x0002, 0x0001, 0x0000, 0x8000, 0x8001, 0x8002,
             0x807F, 0xBF80]  # descending by value, +0 and -0 equal; 0xBF80 is -1.0


def _subnormal_rows(n, v, seed):
    """[n, v] bf16 rows drawn from ``_SUB_POOL`` (built from bits: no conversion can flush),
    -1.0 the most frequent, and the same rows mapped in order onto normal values."""
    g = torch.Generator().manual_seed(seed)
    weights = torch.tensor([1, 1, 2, 3, 3, 4, 4, 4, 3, 2, 1, 40], dtype=torch.float)
    idx = torch.multinomial(weights, n * v, replacement=True, generator=g).view(n, v)
    bits = torch.tensor(_SUB_POOL, dtype=torch.int32)
    r = (bits[idx] - (bits[idx] >= 0x8000).int() * 0x10000).to(torch.int16)
    r = r.view(torch.bfloat16)
    # an order-preserving map onto normal values: equal values (+0, -0) map to one value
    rank = torch.tensor([11, 10, 9, 8, 7, 6, 5, 5, 4, 3, 2, 1], dtype=torch.float)
    mapped = (rank[idx] * 0.5).to(torch.bfloat16)
    return r.to(DEV), mapped.to(DEV)


def _boundary_ks(row):
    """Every K whose K-th value of a stable descending sort differs from the next one's, the
    K just after, and K = 1: the top-K boundary at every step between two pool values."""
    vals = torch.sort(row.float(), descending=True, stable=True).values.cpu()
    steps = [j + 1 for j in range(vals.numel() - 1) if vals[j] != vals[j + 1]]
    return sorted({1, *steps, *(s + 1 for s in steps if s + 1 <= vals.numel())})


@pytest.mark.parametrize("v", [257, 4099, 32003, 128256])
def test_bf16_subnormals_at_the_top_k_boundary(v):
    """Compiled compares do not flush bf16 subnormals (the triton interpreter does, so only a
    GPU can check this): the kernel's threshold and set equal a stable sort's on the GPU at
    every boundary between two subnormals, a subnormal and +-0, and a subnormal and the
    smallest normal; and the fused loss picks the same set as for the same order on normal
    values (its result and gradient are then bit for bit the same)."""
    r, mapped = _subnormal_rows(3, v, seed=v)
    assert ((r.view(torch.int16) & 0x7F80) == 0).float().mean() > 0.2  # subnormals and zeros
    for row in range(r.shape[0]):
        ks = _boundary_ks(r[row])
        rows = r[row:row + 1]
        for k in ks:
            thr, ties = topk_threshold(rows, k)
            member = topk_mask_from_threshold(rows, thr, ties)
            sort = torch.sort(rows, dim=-1, descending=True, stable=True)  # on the GPU
            want = torch.zeros_like(member).scatter(-1, sort.indices[..., :k], True)
            assert torch.equal(member, want), (v, row, k)
            kth = sort.values[..., k - 1]
            assert torch.equal(thr.float(), kth.float()), (v, row, k, thr, kth)
            if kth.item() != 0:  # not flushed: the very bits of the K-th value
                assert torch.equal(thr.view(torch.int16), kth.view(torch.int16)), (v, row, k)
            assert torch.equal(member.cpu(), reference.topk_set_reference(rows.cpu(), k))
    g = torch.Generator(device=DEV).manual_seed(v)
    z = torch.randn(r.shape, device=DEV, generator=g).mul_(3).to(torch.bfloat16)
    i = torch.ones(r.shape[0], dtype=torch.bool, device=DEV)
    c = torch.zeros_like(i)
    k = _boundary_ks(r[0])[len(_boundary_ks(r[0])) // 2]
    for target in ("mean", "topk_mean"):
        opts = dict(k=k, target=target, kl=None, reduction="none")
        got, g_got = loss_and_grad(T.triton_loss, z, r, i, c, **opts)
        same, g_same = loss_and_grad(T.triton_loss, z, mapped, i, c, **opts)
        assert torch.equal(got, same) and torch.equal(g_got, g_same), (v, target, k)


# ------------------------------------------------------------- issue 23: the split-row path


def _split_case(v, dtype, n=40, seed=0, strided=False):
    """``n`` rows of every kind (initiating, KL, none) in a mixed order, and -inf entries."""
    g = torch.Generator(device=DEV).manual_seed(seed)
    shape = (2, n // 2 + (1 if strided else 0), v)
    z = torch.randn(shape, device=DEV, generator=g).mul_(3).to(dtype)
    r = torch.randn(shape, device=DEV, generator=g).mul_(3).to(dtype)
    if strided:  # the trainer's logits[:, :-1]: rows start at any offset
        z, r = z[:, :-1], r[:, :-1]
    z[0, 1, ::7] = float("-inf")
    r[0, 1, ::7] = float("-inf")
    u = torch.rand(z.shape[:2], device=DEV, generator=g)
    return z, r, u < 0.15, (u >= 0.15) & (u < 0.75)


def _split_loss(split):
    def fn(z, r, i, c, **opts):
        from palu_kernels._validation import check_loss_args
        from palu_kernels.backends.triton_loss import palu_loss_triton

        a = check_loss_args(z, r, i, c, k=opts.get("k", 500), target="mean",
                            kl=opts.get("kl", "reverse"), gamma=1.0, alpha=1.0,
                            reduction=opts.get("reduction", "none"), weights=None)
        return palu_loss_triton(z, a, split=split)
    return fn


@pytest.mark.parametrize("v,dtype,strided", [(128256, torch.bfloat16, False),
                                             (50257, torch.bfloat16, True),
                                             (40000, torch.float32, False)])
def test_split_path_matches_the_reference_and_the_rowwise_path(v, dtype, strided):
    """The split-row kernel (persistent grid, per-row exchange) against the fp64 reference and
    the per-row kernel, several rounds (the grid holds fewer rows than the batch), and bit
    for bit the same on a second run (the records are combined in one fixed order)."""
    from helpers import assert_matches_reference
    from palu_kernels.backends.triton_split import default_split

    z, r, i, c = _split_case(v, dtype, n=600 if v == 128256 else 80, seed=v, strided=strided)
    assert default_split(z) is False  # opt-in (PALU_TRITON_SPLIT) until run on a GPU
    for kl in ("reverse", "forward"):
        opts = dict(k=500, kl=kl, reduction="none")
        assert_matches_reference(_split_loss(True), z, r, i, c, **opts)
        got, g_got = loss_and_grad(_split_loss(True), z, r, i, c, **opts)
        again, g_again = loss_and_grad(_split_loss(True), z, r, i, c, **opts)
        assert torch.equal(got, again) and torch.equal(g_got, g_again)
        row, g_row = loss_and_grad(_split_loss(False), z, r, i, c, **opts)
        torch.testing.assert_close(got, row, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(g_got.float(), g_row.float(), rtol=1e-2, atol=1e-6)
        # the initiating rows are the per-row kernel's in both paths: bit for bit
        assert torch.equal(g_got[i], g_row[i]) and torch.equal(got[i], row[i])
        assert not g_got[~i & ~c].any() and not got[~i & ~c].any()


def test_split_path_is_the_default_at_large_vocabularies(monkeypatch):
    """With ``PALU_TRITON_SPLIT=1``, at V = 128256 bf16 the launcher takes the split path by
    itself (same answer as forcing it, bit for bit); at V = 32000 the per-row path."""
    monkeypatch.setenv("PALU_TRITON_SPLIT", "1")
    z, r, i, c = _split_case(128256, torch.bfloat16, n=64, seed=3)
    auto = pk.palu_local_entropy_loss(z, r, i, c, k=500, reduction="none", backend="triton")
    assert torch.equal(auto, _split_loss(True)(z, r, i, c))
    z, r, i, c = _split_case(32000, torch.bfloat16, n=16, seed=4)
    auto = pk.palu_local_entropy_loss(z, r, i, c, k=500, reduction="none", backend="triton")
    assert torch.equal(auto, _split_loss(False)(z, r, i, c))
