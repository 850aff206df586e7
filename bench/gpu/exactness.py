"""Section b, ``exactness``: at the headline case, every initiating row's top-K set against a
stable sort, gradient rows outside I and C exactly zero, the torch backend and the fp64
reference on the same inputs."""

from __future__ import annotations

from bench.gpu.core import Context
from bench.gpu.smoke import _grad_rel, _mask_from_threshold, _rel

def sec_exactness(ctx: Context) -> str:
    import torch

    import palu_kernels as pk
    import reference
    from bench.common import make_inputs

    case = ctx.case
    ctx.put("case", value=case.label())
    z, r, i, c = make_inputs(case, ctx.device)
    k = case.k_eff

    rows = r[i]  # the initiating rows: the only ones that select a top-K set
    thr, ties = pk.topk_threshold(rows, k)
    got = _mask_from_threshold(rows, thr, ties)
    want = reference.topk_set_reference(rows, k)  # torch.sort(stable=True), first K
    wrong = int((got != want).any(-1).sum())
    wrong_size = int((got.sum(-1) != k).sum())
    topk = {"initiating_rows": int(rows.shape[0]), "k": k, "rows_with_a_wrong_set": wrong,
            "rows_whose_set_size_is_not_k": wrong_size}
    ctx.put("topk_sets", value=topk)
    print(f"top-K sets: {wrong} of {rows.shape[0]} initiating rows differ from the stable sort, "
          f"{wrong_size} have a set size other than K = {k}", flush=True)
    del got, want, rows
    ctx.free()

    loss = pk.palu_local_entropy_loss(z, r, i, c, k=case.k, backend="triton")
    loss.backward()
    grad = z.grad
    outside = ~(i | c)
    nonzero = int((grad[outside] != 0).any(-1).sum())
    nonfinite = int((~torch.isfinite(grad[i | c])).any(-1).sum())
    g = {"rows_outside_I_and_C": int(outside.sum()), "of_them_with_a_nonzero_gradient": nonzero,
         "loss_rows_with_a_non_finite_gradient": nonfinite, "loss_triton": loss.item()}
    ctx.put("gradient", value=g)
    print(f"gradient: {nonzero} of {int(outside.sum())} rows outside I and C are not exactly "
          f"zero; {nonfinite} loss rows hold a non-finite value", flush=True)

    # The torch backend on the same inputs (both compute in fp32): loss and gradient.
    z.grad = None
    z2 = z.detach().clone().requires_grad_(True)
    loss_t = pk.palu_local_entropy_loss(z2, r, i, c, k=case.k, backend="torch")
    loss_t.backward()
    diff = 0.0
    for s in range(0, case.rows, 512):  # no [N, V] fp32 temporary
        d = (grad[s:s + 512].float() - z2.grad[s:s + 512].float()).abs().max().item()
        diff = max(diff, d)
    vs = {"loss_torch": loss_t.item(),
          "loss_rel_diff": abs(loss.item() - loss_t.item()) / max(abs(loss_t.item()), 1e-30),
          "grad_max_abs_diff": diff, "grad_max_abs": grad.abs().max().item()}
    ctx.put("triton_vs_torch_backend", value=vs)
    print(f"triton vs torch backend: {vs}", flush=True)
    del z2, loss_t, grad
    z.grad = None
    ctx.free()

    # fp64 ground truth on the first loss rows (per-row loss, gradient norm error).
    sel = (i | c).nonzero().flatten()[: 64 if not ctx.dry else 8]
    zs, rs, is_, cs = z.detach()[sel], r[sel], i[sel], c[sel]
    zs_ = zs.clone().requires_grad_(True)
    per_row = pk.palu_local_entropy_loss(zs_, rs, is_, cs, k=case.k, reduction="none",
                                         backend="triton")
    (gs,) = torch.autograd.grad(per_row.sum(), zs_)
    z64 = zs.double().requires_grad_(True)
    truth = reference.palu_loss_reference(z64, rs.double(), is_, cs, k=case.k, reduction="none")
    (gt,) = torch.autograd.grad(truth.sum(), z64)
    fp64 = {"rows": int(sel.numel()), "loss_max_rel_err": _rel(per_row.detach(), truth.detach()),
            "grad_rel_err": _grad_rel(gs, gt)}
    ctx.put("triton_vs_fp64_reference", value=fp64)
    print(f"triton vs fp64 reference on {fp64['rows']} loss rows: {fp64}", flush=True)

    if wrong or wrong_size or nonzero or nonfinite:
        return "failed: top-K sets or gradient rows not exact (see counts)"
    return "ok"
