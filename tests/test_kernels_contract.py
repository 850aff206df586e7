"""The contract of issue 11 on the CPU: per-row weights, a backward that allocates nothing of
size N x V (eager and in a PALUTrainer step), a refused double backward, strided 3-D inputs
without a hidden copy, the device-built row order, the head / body / tail split of rows that
a GPU uses for vocabularies not divisible by 16, and ``torch.compile`` with no graph break.

The Triton cases run through the interpreter (``conftest.py`` sets ``TRITON_INTERPRET=1``
when there is no GPU); ``tests/test_triton_cuda.py`` runs the GPU side.
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

import palu_kernels as pk
from helpers import TOL, loss_and_grad, make_case, reference_loss

INTERP = os.environ.get("TRITON_INTERPRET", "0") == "1"
BACKENDS = ["torch"] + (["triton"] if INTERP else [])


class BigAllocations(TorchDispatchMode):
    """Records every op that returns new memory (not a view of an input, not written in
    place) of at least ``numel`` elements."""

    def __init__(self, numel):
        super().__init__()
        self.numel, self.seen = numel, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = {a.untyped_storage().data_ptr() for a in
                  torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)}
        out = func(*args, **kwargs)
        for t in torch.utils._pytree.tree_leaves(out):
            if (isinstance(t, torch.Tensor) and t.numel() >= self.numel
                    and t.untyped_storage().data_ptr() not in inputs):
                self.seen.append(str(func))
        return out


# ----------------------------------------------------------------------------- weights


@settings(max_examples=10)
@given(backend=st.sampled_from(BACKENDS), reduction=st.sampled_from(["mean", "sum", "none"]),
       target=st.sampled_from(["mean", "topk_mean", 0.5]),
       kl=st.sampled_from(["reverse", "forward", None]), seed=st.integers(0, 2**16))
def test_weights_scale_each_rows_term(backend, reduction, target, kl, seed):
    """``weights`` multiply each row's term before the reduction: the weighted loss and its
    gradient equal the reference's per-row values times the weights, reduced."""
    z, r, i, c = make_case((3, 5, 37), seed=seed, ties=True)
    w = torch.rand(3, 5, generator=torch.Generator().manual_seed(seed)) * 2 - 0.5
    opts = dict(k=7, target=target, kl=kl, gamma=1.5, alpha=0.7)
    loss, grad = loss_and_grad(pk.palu_local_entropy_loss, z, r, i, c, backend=backend,
                               reduction=reduction, weights=w, **opts)
    n_i, n_c = max(1, int(i.sum())), max(1, int(c.sum()) if kl else 1)
    norm = (i / n_i + c / n_c).double() if reduction == "mean" else torch.ones(3, 5).double()

    def weighted(zz, rr, ii, cc, **o):
        rows = reference_loss(zz, rr, ii, cc, reduction="none", **o)
        rows = rows * w.double()
        return rows if reduction == "none" else (rows * norm).sum()

    truth, tgrad = loss_and_grad(weighted, z.double(), r.double(), i, c, **opts)
    torch.testing.assert_close(loss.double(), truth, rtol=TOL[z.dtype], atol=1e-6)
    torch.testing.assert_close(grad.double(), tgrad, rtol=TOL[z.dtype],
                               atol=1e-6 * (1 + tgrad.abs().max().item()))


def test_weights_are_checked():
    z, r, i, c = make_case((2, 3, 11), seed=0)
    with pytest.raises(ValueError, match=r"weights must have shape \[2, 3\]"):
        pk.palu_local_entropy_loss(z, r, i, c, weights=torch.ones(6))
    with pytest.raises(TypeError, match="weights must be a floating tensor"):
        pk.palu_local_entropy_loss(z, r, i, c, weights=torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="weights must be finite"):
        pk.palu_local_entropy_loss(z, r, i, c, weights=torch.full((2, 3), float("nan")))
    with pytest.raises(TypeError, match="weights must be a torch.Tensor"):
        pk.palu_local_entropy_loss(z, r, i, c, weights=[1.0])


# ----------------------------------------------------------------------------- backward


# The interpreter copies every kernel argument through host storages, so memory is counted
# on the torch backend here; tests/test_triton_cuda.py counts the compiled kernels' memory.
@pytest.mark.parametrize("backend", ["torch"])
@pytest.mark.parametrize("grad_out", [1.0, 0.25])
def test_backward_allocates_nothing_of_size_n_by_v(backend, grad_out):
    """The gradient is written in the forward; backward hands it over, scaled in place."""
    z, r, i, c = make_case((2, 6, 53), seed=3)
    w = torch.rand(2, 6)
    zg = z.clone().requires_grad_(True)
    rows = pk.palu_local_entropy_loss(zg, r, i, c, k=5, reduction="none", weights=w,
                                      backend=backend)
    loss = rows.sum() * grad_out
    with BigAllocations(z.numel()) as mode:
        loss.backward()
    assert mode.seen == [], mode.seen
    expected = loss_and_grad(pk.palu_local_entropy_loss, z, r, i, c, k=5, reduction="none",
                             weights=w * grad_out, backend="torch",
                             grad_out=torch.ones(2, 6))[1]
    torch.testing.assert_close(zg.grad, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_double_backward_raises(backend):
    z, r, i, c = make_case((4, 17), seed=4)
    zg = z.clone().requires_grad_(True)
    loss = pk.palu_local_entropy_loss(zg, r, i, c, k=3, backend=backend)
    with pytest.raises(RuntimeError, match="differentiable once"):
        torch.autograd.grad(loss, zg, create_graph=True)
    # without create_graph the gradient is a constant, as before
    (g,) = torch.autograd.grad(pk.palu_local_entropy_loss(zg, r, i, c, k=3, backend=backend), zg)
    assert g.grad_fn is None


def test_trainer_step_backward_allocates_no_n_by_v_tensor(tmp_path, monkeypatch):
    """In a PALUTrainer step the forget loss's backward is free: the trainer passes its
    window weights in the forward, so nothing of size N x V is made in the backward of the
    loss (the model's own backward of the lm_head is matrix products of other shapes)."""
    pytest.importorskip("transformers")
    from transformers import TrainingArguments

    from helpers import TOFU_ABSENT, tiny_llama, tofu_tokenizer_and_records
    from palu_kernels.train import PALUCollator, PALUConfig, PALUDataset, PALUTrainer

    if not os.path.exists(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                                       "tofu", "forget01_spans.jsonl")):
        pytest.skip(TOFU_ABSENT)
    tok, forget, _ = tofu_tokenizer_and_records(4, 0)
    ds = PALUDataset(tok, forget, None, first_n=3)
    model = tiny_llama(tok)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4,
                             report_to="none", remove_unused_columns=False, use_cpu=True,
                             save_strategy="no", disable_tqdm=True)
    trainer = PALUTrainer(model=model, args=args, train_dataset=ds,
                          data_collator=PALUCollator(tok.pad_token_id),
                          palu=PALUConfig(k=50, backend="torch"))
    batch = PALUCollator(tok.pad_token_id)([ds[j] for j in range(len(ds))])
    import palu_kernels.train.methods.palu as trainer_module

    grad_outputs = []

    def spy(*args, **kwargs):  # the rows the trainer gets, and the grad_output they receive
        rows = pk.palu_local_entropy_loss(*args, **kwargs)
        rows.register_hook(lambda g: grad_outputs.append(g.detach().clone()))
        return rows

    monkeypatch.setattr(trainer_module, "palu_local_entropy_loss", spy)
    loss = trainer.compute_loss(model, batch)
    b, t = batch["forget_input_ids"].shape
    n_by_v = b * t * model.config.vocab_size
    with BigAllocations(n_by_v) as mode:
        loss.backward()
    assert mode.seen == [], mode.seen
    assert model.lm_head.weight.grad.abs().max() > 0
    # the window weights went into the forward: grad_output is exactly 1 on every row, so
    # the fused backward has nothing to do (on a GPU its kernel returns at once)
    assert len(grad_outputs) == 1 and torch.all(grad_outputs[0] == 1)


# ----------------------------------------------------------------------------- layouts


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_3d_logits_go_in_without_a_copy(backend):
    """``logits[:, :-1]`` (a view whose rows are not evenly spaced) is read in place: the
    validated arguments are views of the caller's tensors, and (torch backend, counted) the
    forward makes exactly one tensor of that size, the gradient."""
    from palu_kernels._validation import check_loss_args

    g = torch.Generator().manual_seed(5)
    full_z = torch.randn(3, 8, 41, generator=g)
    full_r = torch.randn(3, 8, 41, generator=g)
    z, r = full_z[:, :-1], full_r[:, :-1]
    i = torch.rand(3, 7, generator=g) < 0.3
    c = (torch.rand(3, 7, generator=g) < 0.5) & ~i
    zg = z.detach().requires_grad_(True)
    a = check_loss_args(zg, r, i, c, k=4, target="mean", kl="reverse", gamma=1.0, alpha=1.0,
                        reduction="mean")
    for view, source in ((a.logits, zg), (a.ref_logits, r)):
        assert view.data_ptr() == source.data_ptr() and view.stride() == source.stride()
    with BigAllocations(z.numel()) as mode:
        loss = pk.palu_local_entropy_loss(zg, r, i, c, k=4, backend=backend)
    if backend == "torch":
        assert len(mode.seen) == 1 and "empty" in mode.seen[0], mode.seen
    loss.backward()
    truth, tgrad = loss_and_grad(reference_loss, z.double(), r.double(), i, c, k=4)
    torch.testing.assert_close(loss.double(), truth, rtol=2e-5, atol=1e-6)
    torch.testing.assert_close(zg.grad.double(), tgrad, rtol=2e-5, atol=1e-7)


@pytest.mark.skipif(not INTERP, reason="interpreter test")
def test_row_order_puts_initiating_rows_first():
    from palu_kernels.backends.triton_loss import row_order

    kind = torch.tensor([0, 2, 1, 0, 1, 2, 2], dtype=torch.int32)
    assert row_order(kind).tolist() == [2, 4, 1, 5, 6, 0, 3]


@pytest.mark.skipif(not INTERP, reason="interpreter test")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kl", ["reverse", "forward"])
def test_head_body_tail_split_of_unaligned_rows(dtype, kl):
    """Rows of V = 37 start at every offset modulo 8: the GPU's split into a masked head (up
    to the first 16-byte boundary), unmasked full tiles and a masked tail gives the
    reference's loss and gradient, for every kind of row and for ties straddling K."""
    from palu_kernels._validation import check_loss_args
    from palu_kernels.backends.triton_loss import palu_loss_triton

    z, r, i, c = make_case((16, 37), dtype, seed=7, ties=True, p_init=0.4)
    for k in (5, 36):
        a_fn = lambda zz, rr, ii, cc, **o: palu_loss_triton(  # noqa: E731
            zz, check_loss_args(zz, rr, ii, cc, gamma=1.0, alpha=1.0, weights=None, **o),
            block_v=8, block_sel=8, vec=8)
        got, ggot = loss_and_grad(a_fn, z, r, i, c, k=k, target="mean", kl=kl,
                                  reduction="none")
        ref, gref = loss_and_grad(pk.palu_local_entropy_loss, z, r, i, c, k=k, kl=kl,
                                  reduction="none", backend="triton")
        torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(ggot.float(), gref.float(), rtol=1e-2 if dtype != torch.float32
                                   else 1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- compile


def _step(lin, x, ref, i, c, w, backend, reduction):
    logits = lin(x)
    out = pk.palu_local_entropy_loss(logits, ref, i, c, k=5, backend=backend,
                                     reduction=reduction, weights=w)
    return (out.sum() if reduction == "none" else out) * 1.3


def check_compiled_step(compiler, backend, reduction, seed):
    """``torch.compile(fullgraph=True)`` of a step that calls the loss (a graph break would
    raise): the loss and the gradient of the model equal the eager step's."""
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(seed)
    lin = torch.nn.Linear(8, 50)
    x, ref = torch.randn(2, 6, 8, generator=g), torch.randn(2, 6, 50, generator=g)
    i = torch.zeros(2, 6, dtype=torch.bool)
    i[:, 1 + seed % 2] = True
    c = torch.zeros(2, 6, dtype=torch.bool)
    c[:, 3:5] = True
    w = torch.rand(2, 6, generator=g) if reduction == "none" else None
    step = torch.compile(_step, fullgraph=True, backend=compiler)
    got = step(lin, x, ref, i, c, w, backend, reduction)
    got.backward()
    gw = lin.weight.grad.clone()
    lin.zero_grad()
    want = _step(lin, x, ref, i, c, w, backend, reduction)
    want.backward()
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(gw, lin.weight.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_compiled_training_step_has_no_graph_break(backend, reduction):
    check_compiled_step("aot_eager", backend, reduction, seed=8)


def test_compiled_with_inductor():
    """The real compiler (inductor, C++ on the CPU) on the same step."""
    check_compiled_step("inductor", "torch", "mean", seed=9)
