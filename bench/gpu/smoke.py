"""Section a, ``smoke``: every kernel family against the fp64 reference on small shapes,
PASS/FAIL per family with the largest error, never stopping at the first failure."""

from __future__ import annotations

from bench.gpu.core import RUNNING, Context, one_line

def _rel(a, b) -> float:
    """Largest ``|a - b| / (1 + |b|)`` (fp64)."""
    return ((a.double() - b.double()).abs() / (1 + b.double().abs())).max().item()


def _grad_rel(g, truth) -> float:
    """``||g - truth|| / (1e-3 + ||truth||)``, the tests' gradient measure."""
    return ((g.double() - truth.double()).norm() / (1e-3 + truth.double().norm())).item()


class Family:
    """PASS/FAIL bookkeeping of one kernel family: every check runs, failures are listed, and
    the tally is written after every check (a section stopped midway keeps it)."""

    def __init__(self, ctx: Context, name: str, tol: float):
        self.ctx, self.name, self.tol = ctx, name, tol
        self.checks = self.failed = 0
        self.max_err = {}
        self.failures = []

    def check(self, label: str, fn) -> None:
        """``fn()`` returns ``{error name: value}``; a check fails above ``tol`` or on raising."""
        self.checks += 1
        try:
            errs = fn()
        except Exception as e:  # noqa: BLE001 - a failing check is a result
            errs, bad = {}, f"{label}: raised {one_line(e)}"
        else:
            for k, v in errs.items():
                old = self.max_err.get(k)
                self.max_err[k] = v if old is None or not v <= old else old  # NaN sticks
            over = {k: v for k, v in errs.items() if not v <= self.tol}  # NaN fails too
            bad = over and f"{label}: " + ", ".join(f"{k} {v:.3g}" for k, v in over.items())
        if bad:
            self.failed += 1
            self.failures.append(bad)
            print(f"    FAIL {bad}", flush=True)
        self._write(final=False)

    def _write(self, final: bool) -> dict:
        ok = self.failed == 0 and self.checks > 0
        res = {"status": ("ok" if ok else "failed") if final else RUNNING,
               "result": ("PASS" if ok else "FAIL") if final else "incomplete",
               "checks": self.checks, "failed": self.failed, "tolerance": self.tol,
               "max_error": self.max_err, "failures": self.failures[:8]}
        self.ctx.put("families", self.name, value=res)
        return res

    def record(self) -> bool:
        """The final tally; True when every check passed."""
        res = self._write(final=True)
        errs = ", ".join(f"max {k} {v:.3g}" for k, v in self.max_err.items()) or "no error measured"
        print(f"{res['result']} {self.name}: {self.checks} checks, {self.failed} failed, {errs}",
              flush=True)
        return res["result"] == "PASS"


def _smoke_case(shape, seed, device, dtype):
    import torch

    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(shape, generator=g, dtype=torch.float64) * 3).to(dtype).to(device)
    r = (torch.randn(shape, generator=g, dtype=torch.float64) * 3).to(dtype).to(device)
    u = torch.rand(shape[0], generator=g)
    i, c = (u < 0.3).to(device), ((u >= 0.3) & (u < 0.8)).to(device)
    return z, r, i, c


def sec_smoke(ctx: Context) -> str:
    import torch

    import palu_kernels as pk
    import reference

    dev = ctx.device
    # The dry run keeps one shape and fewer cases: the interpreter is slow, and the point is
    # only to run every line once.
    small, large = ((8, 300), (4, 1000)) if ctx.dry else ((64, 1000), (16, 50257))
    shapes = [small] if ctx.dry else [small, large]
    ks = (lambda v: [1, 5, v]) if ctx.dry else (lambda v: sorted({1, 5, 50, v // 2 + 1, v}))
    all_ok = True

    # topk_threshold: the set it defines equals the first K of a stable descending sort.
    fam = Family(ctx, "topk_threshold", tol=0)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    for dname, dtype in dtypes.items():
        for n, v in shapes:
            for kind in ("randn", "ties"):
                g = torch.Generator().manual_seed(v)
                if kind == "ties":  # a handful of values: many entries share the K-th value
                    r = torch.randint(0, 4, (n, v), generator=g).to(dtype).to(dev)
                else:
                    r = (torch.randn(n, v, generator=g) * 2).to(dtype).to(dev)
                for k in ks(v):
                    def check(r=r, k=k):
                        thr, ties = pk.topk_threshold(r, k)
                        got = _mask_from_threshold(r, thr, ties)
                        want = reference.topk_set_reference(r, k)
                        return {"rows with a wrong set": float((got != want).any(-1).sum())}
                    fam.check(f"{dname} {n}x{v} {kind} k={k}", check)
    all_ok &= fam.record()

    # The fused loss: every target x kl, with and without the gradient, every reduction.
    def loss_check(shape, k, target, kl, reduction, grad, seed):
        z, r, i, c = _smoke_case(shape, seed, dev, torch.float32)
        opts = dict(k=k, target=target, kl=kl, reduction=reduction)
        zz = z.clone().requires_grad_(grad)
        loss = pk.palu_local_entropy_loss(zz, r, i, c, backend="triton", **opts)
        z64 = z.double().cpu().requires_grad_(grad)
        truth = reference.palu_loss_reference(z64, r.double().cpu(), i.cpu(), c.cpu(), **opts)
        errs = {"loss": _rel(loss.detach().cpu(), truth.detach())}
        if grad:  # reduction "none": a weighted sum, so grad_output != 1 (the trainer's path)
            w = torch.rand(loss.shape, generator=torch.Generator().manual_seed(seed)) + 0.5
            (gz,) = torch.autograd.grad(loss, zz, w.to(dev) if reduction == "none" else None)
            (gt,) = torch.autograd.grad(truth, z64, w.double() if reduction == "none" else None)
            errs["grad"] = _grad_rel(gz.cpu(), gt)
        return errs

    fam = Family(ctx, "palu_local_entropy_loss", tol=1e-4)
    k_small = 5 if ctx.dry else 50
    reductions = ("mean", "sum", "none")
    n = 0
    for target in ("mean", "mean_detached", "topk_mean", 0.75):
        for kl in ("reverse", "forward", None):
            for grad in (True, False):
                n += 1  # the dry run takes one reduction per combination, in turn
                for reduction in reductions[n % 3:n % 3 + 1] if ctx.dry else reductions:
                    fam.check(f"{small[0]}x{small[1]} k={k_small} target={target} kl={kl} "
                              f"{reduction} grad={grad}",
                              lambda t=target, kl=kl, red=reduction, g=grad:
                              loss_check(small, k_small, t, kl, red, g, seed=1))
    k_large = 5 if ctx.dry else 5000
    for reduction in ("mean", "sum", "none"):
        fam.check(f"{large[0]}x{large[1]} k={k_large} target=mean kl=reverse {reduction} grad=True",
                  lambda red=reduction: loss_check(large, k_large, "mean", "reverse", red, True, 2))
    all_ok &= fam.record()

    # The fused linear loss (hidden states and lm_head weight), backend triton.
    fam = Family(ctx, "palu_fused_linear_loss", tol=1e-4)

    def fused_check(n, h, v, k, reduction, seed):
        g = torch.Generator().manual_seed(seed)
        hid, w = torch.randn(n, h, generator=g), torch.randn(v, h, generator=g) / h ** 0.5
        rhid, rw = torch.randn(n, h, generator=g), torch.randn(v, h, generator=g) / h ** 0.5
        u = torch.rand(n, generator=g)
        i, c = u < 0.3, (u >= 0.3) & (u < 0.8)
        a = [t.to(dev).requires_grad_(j < 2) for j, t in enumerate((hid, w, rhid, rw))]
        loss = pk.palu_fused_linear_loss(*a, i.to(dev), c.to(dev), k=k, reduction=reduction,
                                         backend="triton")
        t = [x.double().requires_grad_(j < 2) for j, x in enumerate((hid, w, rhid, rw))]
        truth = reference.palu_loss_reference(t[0] @ t[1].T, t[2] @ t[3].T, i, c, k=k,
                                              reduction=reduction)
        go = torch.rand(loss.shape, generator=g) + 0.5 if reduction == "none" else None
        gh, gw = torch.autograd.grad(loss, a[:2], None if go is None else go.to(dev))
        th, tw = torch.autograd.grad(truth, t[:2], None if go is None else go.double())
        return {"loss": _rel(loss.detach().cpu(), truth.detach()),
                "grad_hidden": _grad_rel(gh.cpu(), th), "grad_weight": _grad_rel(gw.cpu(), tw)}

    fshape = (8, 16, 300) if ctx.dry else (64, 64, 1000)
    for reduction in ("mean", "sum", "none"):
        fam.check(f"{fshape[0]} rows, H {fshape[1]}, V {fshape[2]}, {reduction}",
                  lambda red=reduction: fused_check(*fshape, k=k_small, reduction=red, seed=3))
    all_ok &= fam.record()
    return "ok" if all_ok else "failed: a kernel family failed (see families)"


def _mask_from_threshold(r, thr, ties):
    """The set that ``topk_threshold``'s ``(thr, ties)`` define (its documented rule)."""
    try:
        from palu_kernels.backends.triton_topk import topk_mask_from_threshold

        return topk_mask_from_threshold(r, thr, ties)
    except ImportError:
        t = thr.unsqueeze(-1)
        at = r == t
        return (r > t) | (at & (at.cumsum(dim=-1) <= ties.unsqueeze(-1)))
