"""Exactness of the Triton kernels on random cases that are not in the tests.

    TRITON_INTERPRET=1 python -m bench.exactness_sweep --cases 80 --seed 11   # CPU
    python -m bench.exactness_sweep --cases 200 --device cuda                 # a GPU

Each case draws a shape (rows, V up to 50257, 2-D or a strided 3-D view ``x[:, :-1]``), a
dtype, the options (target, KL direction, reduction, K from 1 to beyond V, gamma, alpha,
per-row weights), the reference's kind (ties at the K-th value, -inf entries, large
magnitudes) and a ``grad_output`` that is not 1, runs the Triton backend and compares the
loss and the gradient with the fp64 reference (``reference.palu_loss_reference``):

* fp32: relative error of the loss at most 2e-5, and of the gradient as a whole
  (``||g - g*|| <= 2e-5 (1e-3 + ||g*||)``, the criterion of ``tests/helpers.py``; a single
  entry can be a small difference of two large numbers, e.g. ``p (d - E_p[d])`` at the
  argmax of a peaked softmax, where every fp32 implementation, the plain reference
  included, is off by far more than 2e-5 of the largest entry);
* bf16 / fp16: the error against the fp64 truth at most the plain reference's own error in
  that dtype (the Cut Cross-Entropy oracle), plus 1e-2 / 2e-3 of the scale (the dtype's
  rounding of the result itself).

It prints one line per case and a summary; it exits 1 if any case fails. A check, not a
benchmark, and not a test either (it takes minutes on the interpreter): the closing notes
quote its summary.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=80)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--device", default="cuda" if os.environ.get("TRITON_INTERPRET") != "1"
                    else "cpu")
    ap.add_argument("--budget-s", type=float, default=1800.0,
                    help="start no new case after this many seconds")
    a = ap.parse_args(argv)
    if a.cases < 1:
        ap.error(f"--cases must be >= 1, got {a.cases}")

    import torch

    import palu_kernels as pk
    import reference

    rng = random.Random(a.seed)
    tol = {torch.float32: 2e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}
    start, failed, done = time.time(), 0, 0
    for n in range(a.cases):
        if time.time() - start > a.budget_s:
            print(f"budget spent: stopped after {done} cases")
            break
        g = torch.Generator().manual_seed(rng.randrange(2**31))
        v = rng.choice([5, 37, 1000, 4099, 32003, 50257])
        b, t = rng.choice([1, 2, 3]), rng.choice([3, 6, 9])
        dtype = rng.choice([torch.float32, torch.float32, torch.bfloat16, torch.float16])
        strided = rng.random() < 0.5
        kind = rng.choice(["randn", "ties", "inf", "large"])
        target = rng.choice(["mean", "mean_detached", "topk_mean", round(rng.uniform(-2, 2), 3)])
        kl = rng.choice(["reverse", "forward", None])
        reduction = rng.choice(["mean", "sum", "none"])
        k = rng.choice([1, 2, rng.randrange(1, v + 1), v, v + 3, None, min(v, 5000)])
        gamma, alpha = round(rng.uniform(0.1, 3), 2), round(rng.uniform(0.1, 3), 2)
        weighted = rng.random() < 0.4

        shape = (b, t + 1 if strided else t, v)
        scale = 30.0 if kind == "large" else 3.0
        z = torch.randn(shape, generator=g, dtype=torch.float64) * scale
        if kind == "ties":
            r = torch.randint(-3, 3, shape, generator=g).double()
        else:
            r = torch.randn(shape, generator=g, dtype=torch.float64) * scale
        if strided:
            z, r = z[:, :-1], r[:, :-1]
        u = torch.rand(b, t, generator=g)
        i = u < 0.3
        c = (u >= 0.3) & (u < 0.8)
        if kind == "inf":  # masked vocabulary entries: -inf in the reference everywhere and
            # in the logits of common rows (a local term of -inf logits is NaN by definition)
            cols = torch.rand(v, generator=g) < 0.05
            r = r.clone()
            r[..., cols] = float("-inf")
            z = torch.where(c[..., None] & cols, float("-inf"), z)
        w = (torch.rand(b, t, generator=g) + 0.5) if weighted else None
        go = torch.rand(b, t, generator=g) + 0.5 if reduction == "none" else torch.tensor(0.7)
        opts = dict(k=k, target=target, kl=kl, reduction=reduction, gamma=gamma, alpha=alpha)

        def run(zz, rr, fn, **extra):
            zz = zz.detach().clone().requires_grad_(True)
            loss = fn(zz, rr, i.to(zz.device), c.to(zz.device), **opts, **extra)
            (grad,) = torch.autograd.grad(loss, zz, go.to(zz.device, loss.dtype))
            return loss.detach().double().cpu(), grad.double().cpu()

        def ref(zz, rr, ii, cc, **o):
            rows = reference.palu_loss_reference(zz, rr, ii, cc, **{**o, "reduction": "none"})
            if w is not None:
                rows = rows * w.to(rows.device, rows.dtype)
            if o["reduction"] == "none":
                return rows
            if o["reduction"] == "sum":
                return rows.sum()
            n_i = ii.sum().clamp(min=1)
            n_c = cc.sum().clamp(min=1) if o["kl"] else 1
            return (rows * (ii / n_i + cc / n_c)).sum() if o["kl"] else (rows * ii / n_i).sum()

        zd, rd = z.to(dtype), r.to(dtype)
        dev = a.device
        got_l, got_g = run(zd.to(dev), rd.to(dev), pk.palu_local_entropy_loss, backend="triton",
                           weights=None if w is None else w.to(dev))
        truth_l, truth_g = run(zd.double(), rd.double(), ref)
        def err(x, y):  # largest error over the finite entries of y; inf if the non-finite
            # entries (NaN, +-inf) of x and y differ
            same = torch.equal(torch.isnan(x), torch.isnan(y)) and torch.equal(
                torch.isinf(x) & (x > 0), torch.isinf(y) & (y > 0)) and torch.equal(
                torch.isinf(x) & (x < 0), torch.isinf(y) & (y < 0))
            fin = torch.isfinite(y)
            if not same:
                return float("inf")
            return (x[fin] - y[fin]).abs().max().item() if fin.any() else 0.0

        def mag(y):
            fin = torch.isfinite(y)
            return y[fin].abs().max().item() if fin.any() else 0.0

        def norm_err(x, y):
            fin = torch.isfinite(y)
            return (x[fin] - y[fin]).norm().item() if fin.any() else 0.0

        lerr, gerr = err(got_l, truth_l), err(got_g, truth_g)
        lscale, gscale = mag(truth_l), mag(truth_g)
        if dtype == torch.float32:
            fin = torch.isfinite(truth_g)
            gnorm = truth_g[fin].norm().item() if fin.any() else 0.0
            ok = (lerr <= tol[dtype] * (1 + lscale) and gerr != float("inf")
                  and norm_err(got_g, truth_g) <= tol[dtype] * (1e-3 + gnorm))
            budget = f"2e-5 relative; gradient norm error {norm_err(got_g, truth_g):.1e}"
        else:
            own_l, own_g = run(zd, rd, ref)
            bl = err(own_l, truth_l) if err(own_l, truth_l) != float("inf") else 0.0
            bg = err(own_g, truth_g) if err(own_g, truth_g) != float("inf") else 0.0
            ok = lerr <= bl + tol[dtype] * (1 + lscale) and gerr <= bg + tol[dtype] * max(
                gscale, 1e-3)
            budget = f"reference's own error {bl:.1e} / {bg:.1e}"
        done += 1
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} case {n}: {b}x{t}x{v} {str(dtype)[6:]} "
              f"{'strided' if strided else 'contig'} {kind} k={k} {target} {kl} {reduction} "
              f"g={gamma} a={alpha} w={'y' if weighted else 'n'}: loss err {lerr:.1e}, grad err "
              f"{gerr:.1e} (max |g| {gscale:.1e}; {budget})", flush=True)
    print(f"exactness sweep: {done - failed} of {done} cases within bounds, {failed} failed "
          f"({time.time() - start:.0f} s, device {a.device})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
