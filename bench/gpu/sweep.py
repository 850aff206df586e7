"""Section e, ``sweep``: the triton forward over tile sizes / warps, one ``sweep.csv`` row per
point as it is measured."""

from __future__ import annotations

import os

from bench.gpu.core import SWEEP_CSV, Context, _fraction, _gbps, one_line, time_ms

# The first point at the headline case is the default, the per-row kernel alone; the point
# after it the split-row path (issue 23, opt-in until it has run on a GPU: triton_split.py
# for the KL and zero rows, the per-row kernel for the initiating rows), the comparison of
# the two paths (its loss is checked against the default's; under the interpreter of a dry
# run it cannot run and is reported as failed, not counted as a disagreement). The tile points
# then sweep the per-row kernel alone (split=False on every point): 8192-wide tiles, 8
# warps, 3 stages is its default (one program per SM: about 230 registers); 4096 takes fewer
# registers and more instructions per element.
SWEEP_GRID = {"block_v": [4096, 8192, 2048], "num_warps": [8, 4, 16], "num_stages": [3, 2],
              "block_sel": [], "split": [False]}
DRY_SWEEP_GRID = {"block_v": [128, 512], "num_warps": [4], "block_sel": [], "num_stages": [],
                  "split": [False]}
FIRST_POINTS = [{}, {"split": True}]  # the default (the per-row path), the split path (opt-in)
SWEEP_LOSS_TOL = 1e-4  # fp32 sums in another order differ by far less
SWEEP_COLUMNS = ["point", *SWEEP_GRID, "forward_ms", "GBps", "fraction_of_peak",
                 "loss_rel_diff_vs_default", "status"]


def sec_sweep(ctx: Context) -> str:
    import csv
    import inspect
    import itertools

    import palu_kernels._validation as val
    import palu_kernels.backends.triton_loss as pl
    from bench.common import make_inputs

    case = ctx.case
    accepted = set(inspect.signature(pl.palu_forward).parameters)
    grid = DRY_SWEEP_GRID if ctx.dry else SWEEP_GRID
    keys = [key for key, values in grid.items() if values and key in accepted]
    peak = ctx.results.section("environment").get("peak_GBps")
    ctx.put(value={"case": case.label(), "swept": keys,
                   "launcher_accepts": sorted(k for k in SWEEP_GRID if k in accepted),
                   "mode": "forward of palu_loss_triton with logits requiring grad (writes the "
                           "gradient, as in training)", "points": []})
    path = os.path.join(ctx.out, SWEEP_CSV)
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerow(SWEEP_COLUMNS)

    z, r, i, c = make_inputs(case, ctx.device)
    args = val.check_loss_args(z, r, i, c, k=case.k, target="mean", kl="reverse", gamma=1.0,
                               alpha=1.0, reduction="mean")
    first = [p for p in FIRST_POINTS if set(p) <= accepted]
    points = first + [dict(zip(keys, vals))
                      for vals in itertools.product(*(grid[k] for k in keys))]
    default_loss = None
    n_ok = disagree = 0
    for n, opts in enumerate(points):
        if ctx.left() < 5:
            print(f"sweep: stopped before point {n} of {len(points)}: section budget spent",
                  flush=True)
            ctx.put("stopped", value=f"budget spent after {n} of {len(points)} points")
            break
        row = {"point": "default" if not opts else n, **opts}
        try:
            def fwd(_, opts=opts):
                z.grad = None
                return pl.palu_loss_triton(z, args, **opts)
            row["forward_ms"] = time_ms(ctx, fwd)
            loss = fwd(None).item()
            if default_loss is None and not opts:
                default_loss = loss
            if default_loss is not None:
                diff = abs(loss - default_loss) / max(abs(default_loss), 1e-30)
                row["loss_rel_diff_vs_default"] = diff
                disagree += not diff <= SWEEP_LOSS_TOL
            row["GBps"] = _gbps(case.min_bytes, row["forward_ms"])
            row["fraction_of_peak"] = _fraction(row["GBps"], peak)
            row["status"] = "ok"
            n_ok += 1
        except Exception as e:  # noqa: BLE001 - a tile that fails to compile is a result
            row["status"] = f"failed: {one_line(e)}"
        z.grad = None
        with open(path, "a", newline="", encoding="utf-8") as f:
            csv.writer(f).writerow([row.get(col, "") for col in SWEEP_COLUMNS])
            f.flush()
            os.fsync(f.fileno())
        doc_points = ctx.results.section("sweep").get("points", [])
        ctx.put("points", value=doc_points + [row])
        print(f"sweep {row}", flush=True)
        ctx.free()
    # A tile that does not compile (out of registers, say) is a finding, not a failure of the
    # check; a tile that changes the loss is a bug.
    if default_loss is None:
        return "failed: the default tiles failed"
    if disagree:
        return (f"failed: {disagree} point(s) give a loss differing from the default tiles' by "
                f"more than {SWEEP_LOSS_TOL:g} (relative)")
    notes = []
    if not keys:
        notes.append("palu_forward accepts none of " + ", ".join(SWEEP_GRID)
                     + ": only the default tiles were timed")
    if n_ok < len(points):
        notes.append(f"{len(points) - n_ok} of {len(points)} points failed or were not run")
    return "ok" + (f" ({'; '.join(notes)})" if notes else "")
