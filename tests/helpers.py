"""Shared builders and comparisons for the loss tests (torch and Triton backends)."""

from __future__ import annotations

import torch

import reference

TOL = {torch.float32: 2e-5, torch.float64: 1e-10, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def make_case(shape, dtype=torch.float32, *, seed=0, p_init=0.3, p_common=0.5, ties=False,
              scale=3.0, device="cpu"):
    """Random logits, reference logits and disjoint I / C masks of leading shape ``shape[:-1]``.

    ``ties=True`` draws the reference from a handful of values, so the K-th value is
    shared by many entries of a row.
    """
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    if ties:
        r = torch.randint(0, 4, shape, generator=g).to(torch.float64)
    else:
        r = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    u = torch.rand(shape[:-1], generator=g)
    i_mask = u < p_init
    c_mask = (u >= p_init) & (u < p_init + p_common)
    return (z.to(dtype).to(device), r.to(dtype).to(device), i_mask.to(device),
            c_mask.to(device))


def loss_and_grad(fn, z, r, i_mask, c_mask, grad_out=None, **opts):
    """Loss and d(loss)/d(z) of ``fn`` (a loss with the public signature)."""
    z = z.detach().clone().requires_grad_(True)
    loss = fn(z, r, i_mask, c_mask, **opts)
    if grad_out is None:
        grad_out = torch.ones_like(loss)
    (grad,) = torch.autograd.grad(loss, z, grad_out.to(loss.dtype))
    return loss.detach(), grad


def reference_loss(z, r, i_mask, c_mask, **opts):
    opts = {k: v for k, v in opts.items() if k != "backend"}
    return reference.palu_loss_reference(z, r, i_mask, c_mask, **opts)


def assert_matches_reference(fn, z, r, i_mask, c_mask, grad_out=None, **opts):
    """Compare ``fn`` with the specification.

    fp32/fp64: loss and gradient within the dtype's relative tolerance of the reference run
    in fp64. bf16/fp16: the error against the fp64 ground truth must not exceed the plain
    reference's own error in that dtype, plus a small tolerance (the Cut Cross-Entropy
    oracle): a kernel that computes in fp32 must be at least as accurate.
    """
    loss, grad = loss_and_grad(fn, z, r, i_mask, c_mask, grad_out, **opts)
    assert grad.dtype == z.dtype
    truth_loss, truth_grad = loss_and_grad(reference_loss, z.double(), r.double(), i_mask,
                                           c_mask, grad_out, **opts)
    tol = TOL[z.dtype]
    if z.dtype in (torch.float32, torch.float64):
        budget_loss = torch.zeros_like(truth_loss)
        budget_grad = 0.0
    else:
        ref_loss, ref_grad = loss_and_grad(reference_loss, z, r, i_mask, c_mask, grad_out, **opts)
        budget_loss = (ref_loss.double() - truth_loss).abs().nan_to_num(0.0)
        budget_grad = (ref_grad.double() - truth_grad).norm().nan_to_num(0.0).item()
    err = (loss.double() - truth_loss).abs()
    assert torch.all(err <= budget_loss + tol * (1 + truth_loss.abs())), (
        f"loss error {err.max().item():.3e} above budget; loss {loss} vs truth {truth_loss}")
    gerr = (grad.double() - truth_grad).norm().item()
    gscale = truth_grad.norm().item()
    assert gerr <= budget_grad + tol * (1e-3 + gscale), (
        f"gradient error {gerr:.3e} above budget {budget_grad:.3e} + tol (|g| = {gscale:.3e})")


# ----------------------------------------------------------------------------- TOFU fixtures

import os  # noqa: E402

import pytest  # noqa: E402

# The TOFU and MUSE tests read the task's data from ../shared, next to the repository (never
# copied into it); where it is absent (a fresh clone elsewhere, the unpacked sdist) they skip
# with these reasons.
TOFU_ABSENT = "../shared is absent: no TOFU data in ../shared/data/tofu next to the repository"
MUSE_ABSENT = ("../shared is absent: no MUSE News data in ../shared/data/muse_news next to the "
               "repository")
TOFU = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "tofu"))
FORGET01 = os.path.join(TOFU, "forget01_spans.jsonl")
RETAIN99 = os.path.join(TOFU, "retain99.json")
needs_tofu = pytest.mark.skipif(not os.path.exists(FORGET01), reason=TOFU_ABSENT)

TINY = dict(vocab_size=300, hidden_size=32, num_layers=1, num_heads=2)  # tiny test model


def tofu_texts_for_tokenizer():
    """The texts the test tokenizers are trained on (forget01 spans, 40 retain records)."""
    from palu_kernels.tiny import tofu_texts

    return tofu_texts(FORGET01) + tofu_texts(RETAIN99, limit=40)


def write_tofu_subset(d, n_forget, n_retain, *, seed=0):
    """The first lines of forget01 spans / retain99 as files in ``d``, and a tiny model
    (``TINY``, tokenizer trained locally) saved in ``d/model``; returns their paths."""
    from palu_kernels.tiny import save_tiny_model

    for src, name, n in ((FORGET01, "forget.jsonl", n_forget), (RETAIN99, "retain.json", n_retain)):
        with open(src, encoding="utf-8") as f:
            (d / name).write_text("".join(next(f) for _ in range(n)), encoding="utf-8")
    model = save_tiny_model(str(d / "model"), texts=tofu_texts_for_tokenizer(), seed=seed,
                            **{k: v for k, v in TINY.items()})
    return {"model": model, "forget": str(d / "forget.jsonl"), "retain": str(d / "retain.json")}


def tofu_tokenizer_and_records(n_forget=4, n_retain=6):
    """A locally trained tokenizer, the first forget01 span records and retain99 records."""
    from palu_kernels.tiny import build_tokenizer
    from palu_kernels.train import load_records

    with pytest.warns(UserWarning):  # forget01 line 31 has overlapping spans: skipped, counted
        forget, _ = load_records(FORGET01, skip_bad=True)
    retain, _ = load_records(RETAIN99, spans="ignore")
    tok = build_tokenizer(tofu_texts_for_tokenizer(), vocab_size=TINY["vocab_size"])
    return tok, forget[:n_forget], retain[:n_retain]


def tiny_llama(tok, seed=0):
    """The tiny test model (``TINY``) for tokenizer ``tok``, in training mode."""
    from palu_kernels.tiny import build_tiny_llama

    return build_tiny_llama(tok, seed=seed, **{k: v for k, v in TINY.items()
                                               if k != "vocab_size"}).train()
