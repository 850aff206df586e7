"""Faults against the building blocks (issue 13, ``docs/reliability.md``): atomic outputs and
completion markers, complete checkpoints, the non-finite rule of the loss across backends
(``docs/spec.md``), retained-graph backward, the fused loss's messages, the evaluation's
refusals. Fast: no model is trained here (see ``tests/test_reliability_cli.py``)."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

import palu_kernels as pk
import reference
from palu_kernels import outputs

INF = float("inf")
BACKENDS = ["torch"] + (["triton"] if os.environ.get("TRITON_INTERPRET") == "1" else [])


# ----------------------------------------------------------------------------- outputs

def test_atomic_write_replaces_whole_files_and_leaves_no_temp(tmp_path):
    p = tmp_path / "a.json"
    outputs.atomic_write_json(str(p), {"x": 1})
    outputs.atomic_write_text(str(p), "new")
    assert p.read_text() == "new" and os.listdir(tmp_path) == ["a.json"]

    class Boom:
        def __str__(self):
            raise RuntimeError("boom")

    with pytest.raises(TypeError):  # the dump fails: the old file stays whole
        outputs.atomic_write_json(str(p), {"x": Boom()})
    assert p.read_text() == "new" and os.listdir(tmp_path) == ["a.json"]


def _fake_result(d, text, with_marker=True):
    os.makedirs(d, exist_ok=True)
    (d / "model.safetensors").write_text(text)
    (d / "config.json").write_text("{}")
    if with_marker:
        (d / outputs.MARKER).write_text(json.dumps({"run": text}))


def test_publish_result_swaps_a_complete_result_in(tmp_path):
    out = tmp_path / "out"
    _fake_result(out, "old")
    (out / "model-00002-of-00002.safetensors").write_text("old shard")
    (out / "checkpoint-3").mkdir()
    (out / "adapter").mkdir()
    (out / "eval_forget01").mkdir()  # an evaluation of the old model
    (out / "notes.txt").write_text("the user's")
    tmp = tmp_path / ".out.tmp-1"
    _fake_result(tmp, "new")
    (tmp / "adapter").mkdir()
    (tmp / "adapter" / "a").write_text("new adapter")
    outputs.publish_result(str(tmp), str(out))
    assert not tmp.exists()
    assert sorted(os.listdir(out)) == ["adapter", "checkpoint-3", "config.json",
                                       "model.safetensors", "notes.txt", outputs.MARKER]
    assert (out / "model.safetensors").read_text() == "new"
    assert json.loads((out / outputs.MARKER).read_text()) == {"run": "new"}
    assert (out / "adapter" / "a").read_text() == "new adapter"
    incomplete = tmp_path / ".out.tmp-2"
    _fake_result(incomplete, "x", with_marker=False)
    with pytest.raises(ValueError, match="incomplete"):
        outputs.publish_result(str(incomplete), str(out))
    assert (out / "model.safetensors").read_text() == "new"


def _tiny_safetensors(path, n=64):
    from safetensors.torch import save_file

    save_file({"w": torch.arange(n, dtype=torch.float32)}, str(path))


def _checkpoint(d, *, state=True, optimizer=True):
    d.mkdir(parents=True)
    _tiny_safetensors(d / "model.safetensors")
    if optimizer:
        torch.save({"s": 1}, str(d / "optimizer.pt"))
    torch.save({"s": 1}, str(d / "scheduler.pt"))
    if state:
        (d / "trainer_state.json").write_text("{}")


def test_latest_complete_checkpoint_skips_unfinished_ones(tmp_path):
    _checkpoint(tmp_path / "checkpoint-19")
    _checkpoint(tmp_path / "checkpoint-20", optimizer=False)  # killed while writing it
    _checkpoint(tmp_path / "checkpoint-21", state=False)
    _checkpoint(tmp_path / "checkpoint-22")
    with open(tmp_path / "checkpoint-22" / "optimizer.pt", "r+b") as f:  # truncated
        f.truncate(os.path.getsize(tmp_path / "checkpoint-22" / "optimizer.pt") // 2)
    path, skipped = outputs.latest_complete_checkpoint(str(tmp_path))
    assert path == str(tmp_path / "checkpoint-19")
    assert [os.path.basename(p) for p, _ in skipped] == ["checkpoint-22", "checkpoint-21",
                                                           "checkpoint-20"]
    assert "optimizer.pt" in skipped[0][1] and "trainer_state" in skipped[1][1]
    assert outputs.checkpoint_problem(str(tmp_path / "checkpoint-19")) is None


def test_truncated_weights_and_unfinished_runs_are_named(tmp_path):
    m = tmp_path / "m"
    m.mkdir()
    (m / "config.json").write_text("{}")
    _tiny_safetensors(m / "model.safetensors")
    assert outputs.result_problem(str(m)) is None
    size = os.path.getsize(m / "model.safetensors")
    with open(m / "model.safetensors", "r+b") as f:
        f.truncate(size - 10)
    assert "truncated" in outputs.result_problem(str(m))
    run = tmp_path / "run"
    _checkpoint(run / "checkpoint-2")
    (run / "config.json").write_text("{}")
    assert "unfinished palu-unlearn run" in outputs.result_problem(str(run))
    (run / outputs.MARKER).write_text("{}")
    assert "no model weights" in outputs.result_problem(str(run))
    assert outputs.is_within(str(run / "checkpoint-2"), str(run))
    assert not outputs.is_within(str(tmp_path / "runx"), str(run))


# ----------------------------------------------------------------------------- the loss

def _loss_and_grad(backend, z, r, i, c, **kw):
    z = z.clone().requires_grad_(True)
    if backend == "reference":
        loss = reference.palu_loss_reference(z, r, i, c, reduction="none", **kw)
    else:
        loss = pk.palu_local_entropy_loss(z, r, i, c, reduction="none", backend=backend, **kw)
    (g,) = torch.autograd.grad(loss.sum(), z)
    return loss.detach(), g


def _same_pattern(a, b):
    """Equal NaN / +inf / -inf positions, and equal finite values."""
    for f in (torch.isnan, torch.isposinf, torch.isneginf):
        if not torch.equal(f(a), f(b)):
            return False
    fin = torch.isfinite(a)
    return torch.allclose(a[fin].double(), b[fin].double(), rtol=1e-4, atol=1e-5)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("target", ["mean", "mean_detached", "topk_mean", 0.5])
@pytest.mark.parametrize("value", [INF, -INF, float("nan")])
@pytest.mark.parametrize("in_s", [True, False])
def test_nonfinite_logit_in_an_initiating_row_follows_the_reference(backend, target, value,
                                                                    in_s):
    g = torch.Generator().manual_seed(3)
    z = torch.randn(3, 16, generator=g)
    r = torch.randn(3, 16, generator=g)
    z[1, 5] = value
    r[1, 5] = 10.0 if in_s else -10.0  # entry 5 is (or is not) in the top-4 set S
    i = torch.tensor([False, True, False])
    c = torch.tensor([True, False, True])
    truth, truth_g = _loss_and_grad("reference", z.double(), r.double(), i, c, k=4,
                                    target=target)
    loss, grad = _loss_and_grad(backend, z, r, i, c, k=4, target=target)
    assert _same_pattern(loss, truth), (loss, truth)
    assert _same_pattern(grad[1], truth_g[1])
    assert not math.isfinite(loss[1].item())  # never a number where a logit is not one
    assert torch.isfinite(loss[[0, 2]]).all()  # the other rows are untouched


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["gamma", "alpha", "target"])
def test_weights_beyond_fp32_are_refused_on_every_backend(backend, name):
    z, r = torch.randn(2, 8), torch.randn(2, 8)
    i, c = torch.tensor([True, False]), torch.tensor([False, True])
    with pytest.raises(ValueError, match=f"{name} must be at most 3.403e\\+38"):
        pk.palu_local_entropy_loss(z, r, i, c, k=3, backend=backend, **{name: 1e300})
    # in fp64 (torch backend) the same weight is a number, as in the reference
    if backend == "torch" and name == "gamma":
        loss = pk.palu_local_entropy_loss(z.double(), r.double(), i, c, k=3, gamma=1e300)
        truth = reference.palu_loss_reference(z.double(), r.double(), i, c, k=3, gamma=1e300)
        assert math.isfinite(loss.item()) and loss.item() == pytest.approx(truth.item(), rel=1e-9)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_retained_graph_backward_any_number_of_times(reduction):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(2, 5, 16, generator=g, requires_grad=True)
    r = torch.randn(2, 5, 16, generator=g)
    i = torch.zeros(2, 5, dtype=torch.bool)
    i[0, 1] = i[1, 3] = True
    c = torch.zeros_like(i)
    c[0, 2] = c[1, 4] = True
    z = w * 2  # a non-leaf: the gradient flows through another node
    loss = pk.palu_local_entropy_loss(z, r, i, c, k=4, backend="torch", reduction=reduction)
    out = loss if reduction == "mean" else loss.sum()
    for _ in range(4):
        out.backward(retain_graph=True)
    (once,) = torch.autograd.grad(
        pk.palu_local_entropy_loss(w * 2, r, i, c, k=4, backend="torch",
                                   reduction=reduction).sum(), w)
    torch.testing.assert_close(w.grad, 4 * once)
    z2 = torch.randn(2, 5, 16, generator=g, requires_grad=True)  # a leaf takes the buffer
    loss2 = pk.palu_local_entropy_loss(z2, r, i, c, k=4, backend="torch")
    for _ in range(3):
        loss2.backward(retain_graph=True)
    (once2,) = torch.autograd.grad(pk.palu_local_entropy_loss(z2, r, i, c, k=4), z2)
    torch.testing.assert_close(z2.grad, 3 * once2)


def test_fused_linear_errors_name_the_callers_arguments_and_rows():
    from palu_kernels.fused_linear import palu_fused_linear_loss

    g = torch.Generator().manual_seed(0)
    h = torch.randn(2, 4, 8, generator=g)
    w = torch.randn(16, 8, generator=g)
    i = torch.zeros(2, 4, dtype=torch.bool)
    i[0, 1] = i[1, 2] = True
    rh = h.clone()
    rh[1, 2, 3] = float("nan")  # flat row 6 = [1, 2]
    with pytest.raises(ValueError, match=r"^ref_hidden must not hold NaN .*row 6 \(\[1, 2\]\) of ref_hidden"):
        palu_fused_linear_loss(h, w, rh, w, i, None, k=4, chunk_rows=1)
    rw = w.clone()
    rw[3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"^ref_weight must not hold NaN, got NaN in 1 vocabulary row"):
        palu_fused_linear_loss(h, w, h, rw, i, None, k=4)
    with pytest.raises(ValueError, match="hidden size of at least 1, got 0"):
        palu_fused_linear_loss(h[..., :0], w[:, :0], h[..., :0], w[:, :0], i, None, k=4)


# ----------------------------------------------------------------------------- evaluation

def test_retain_results_are_checked_and_named(tmp_path):
    from palu_kernels.eval.metrics import forget_quality
    from palu_kernels.eval.tofu import check_output_dir, check_retain_ratios, read_retain_result

    bad = tmp_path / "bad.json"
    bad.write_text("not json\n")
    with pytest.raises(ValueError, match=r"^retain_result: .*bad\.json is not JSON"):
        read_retain_result(str(bad), "forget01")
    nan = tmp_path / "nan.json"
    nan.write_text(json.dumps({"forget_truth_ratios": [0.5, float("nan")]}))
    with pytest.raises(ValueError, match=r"nan\.json: forget_truth_ratios\[1\] is nan"):
        read_retain_result(str(nan), "forget01")
    word = tmp_path / "word.json"
    word.write_text(json.dumps({"forget_truth_ratios": [0.5, "x"]}))
    with pytest.raises(ValueError, match=r"forget_truth_ratios\[1\] is 'x'"):
        read_retain_result(str(word), "forget01")
    with pytest.raises(ValueError, match="r.json: 2 retain truth ratios, but the forget set has 6"):
        check_retain_ratios([0.5, 0.7], 6, "r.json")
    with pytest.raises(ValueError, match="1 of 2 retain truth ratios are not finite"):
        check_retain_ratios([0.5, INF], 2)
    with pytest.raises(ValueError, match="2 of 3 of the evaluated model's forget truth ratios are NaN"):
        forget_quality([0.1, float("nan"), float("nan")], [0.1, 0.2, 0.3])
    assert forget_quality([0.1, 0.2, 0.3], [0.1, 0.2, 0.3]) == 1.0
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        check_output_dir(str(afile / "sub"))
    check_output_dir(str(tmp_path / "new" / "dir"))  # not there yet: fine
