"""Bad input gets a clear TypeError / ValueError naming the argument."""

from __future__ import annotations

import pytest
import torch

import palu_kernels as pk
from helpers import make_case


@pytest.fixture
def case():
    return make_case((2, 5, 11), seed=0)


def call(z, r, i, c, **opts):
    return pk.palu_local_entropy_loss(z, r, i, c, **opts)


@pytest.mark.parametrize(
    "mutate, exc, words",
    [
        (lambda z, r, i, c: (z, r[:, :4], i, c), ValueError, ["ref_logits", "shape"]),
        (lambda z, r, i, c: (z, r, i[:, :4], c), ValueError, ["initiating_mask", "shape"]),
        (lambda z, r, i, c: (z, r, i, c[:1]), ValueError, ["common_mask", "shape"]),
        (lambda z, r, i, c: (z.long(), r.long(), i, c), TypeError, ["logits", "floating", "int64"]),
        (lambda z, r, i, c: (z, r.half(), i, c), TypeError, ["ref_logits", "dtype", "float16"]),
        (lambda z, r, i, c: (z, r, i.float(), c), TypeError, ["initiating_mask", "bool"]),
        (lambda z, r, i, c: (z, r, i, c.int()), TypeError, ["common_mask", "bool"]),
        (lambda z, r, i, c: (z[0, 0], r[0, 0], i, c), ValueError, ["logits", "[B, T, V]"]),
        (lambda z, r, i, c: (z.tolist(), r, i, c), TypeError, ["logits", "Tensor", "list"]),
        (lambda z, r, i, c: (z, r, i, i), ValueError, ["overlap", "initiating_mask", "common_mask"]),
    ],
)
def test_bad_tensors(case, mutate, exc, words):
    with pytest.raises(exc) as info:
        call(*mutate(*case))
    for w in words:
        assert w in str(info.value), (w, str(info.value))


@pytest.mark.parametrize(
    "opts, exc, words",
    [
        (dict(k=0), ValueError, ["k", ">= 1", "0"]),
        (dict(k=-3), ValueError, ["k", "-3"]),
        (dict(k=2.5), TypeError, ["k", "float"]),
        (dict(k=True), TypeError, ["k", "bool"]),
        (dict(target="median"), ValueError, ["target", "median"]),
        (dict(target=float("nan")), ValueError, ["target", "finite"]),
        (dict(kl="js"), ValueError, ["kl", "js"]),
        (dict(reduction="max"), ValueError, ["reduction", "max"]),
        (dict(backend="cuda"), ValueError, ["backend", "cuda"]),
        (dict(gamma="1"), TypeError, ["gamma", "str"]),
        (dict(alpha=float("inf")), ValueError, ["alpha", "finite"]),
    ],
)
def test_bad_options(case, opts, exc, words):
    with pytest.raises(exc) as info:
        call(*case, **opts)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_nan_in_a_loss_carrying_reference_row(case):
    z, r, i, c = case
    row = c.reshape(-1).nonzero()[0, 0]
    r2 = r.clone().reshape(-1, r.shape[-1])
    r2[row, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        call(z, r2.reshape(r.shape), i, c)
    # The same NaN in a row that carries no loss is harmless.
    free = (~(i | c)).reshape(-1).nonzero()[0, 0]
    r3 = r.clone().reshape(-1, r.shape[-1])
    r3[free, 3] = float("nan")
    assert torch.isfinite(call(z, r3.reshape(r.shape), i, c))


def test_triton_on_cpu_without_the_interpreter_is_a_clear_error(case, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        call(*case, backend="triton")


def test_overlap_check_ignored_when_kl_is_none(case):
    # With kl=None the common mask carries nothing, so it cannot conflict.
    z, r, i, _ = case
    assert torch.isfinite(call(z, r, i, i, kl=None))


def test_mask_on_another_device_is_reported():
    z, r, i, c = make_case((4, 6), seed=1)
    with pytest.raises(ValueError, match="initiating_mask"):
        call(z, r, i.to("meta"), c)


def test_auto_backend_choice():
    from palu_kernels._validation import check_backend

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert check_backend("auto", cuda, torch.bfloat16) == "triton"
    assert check_backend("auto", cuda, torch.float64) == "torch"  # kernels are fp32/bf16/fp16
    assert check_backend("auto", cpu, torch.float32) == "torch"
