"""``tofu-smollm2``'s two one-seed ranking checks (issue 19), run after the main 60 runs.

On the first seed, each method's best setting on that seed (``chosen[m][0]``):

1. **whole model** (``RunSpec.train_layers="all"``): unlearned with every layer trainable,
   from the same start models (fine-tuned on the last 4 layers), evaluated like every other
   run; against the selection run of that setting (the last 4 layers).
2. **full sets** (``RunSpec.evaluation="full"``): the selection run's training again (the last
   4 layers), evaluated with no question cut (every question scored and generated; the 64 new
   tokens kept, so only the question cut differs); against the selection run (the cut). The
   start models are evaluated on the full sets too (cached apart from ``setup.json``:
   :func:`palu_kernels.experiments.variants.start_evaluation`): the retain model's forget
   truth ratios are those runs' Forget Quality reference and its Model Utility their bar.

Each check's table ranks the methods under both (:func:`rank`: best Forget Quality among
those with Model Utility >= 0.95 x the retain model's, then utility; then those under the
bar, by utility) and says whether the ranking is the same. Runs not done are "not run yet";
the checks' count is their own (the report's title counts the main runs only).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Dict, List, Optional

from .runspec import FULL
from .variants import START_MODELS, start_metrics

__all__ = ["CHECKS", "NOT_RUN", "check_tables", "rank", "run_checks", "run_whole_second",
           "whole_second_table"]

CHECKS = {"whole": "check: whole model", "full": "check: full sets"}
"""The ``stage`` of each check's rows."""
WHOLE_SECOND = "check: whole model, 2nd setting"
"""The ``stage`` of the whole-model follow-up's rows (:func:`run_whole_second`)."""
NOT_RUN = "not run yet"


def rank(values: Dict[str, Optional[tuple]], bar: Optional[float]) -> Dict[str, int]:
    """``{method: 1-based rank}`` of ``{method: (FQ, MU)}`` (``None``: not ranked): Model
    Utility >= ``bar`` first, by Forget Quality then utility; then the others by utility."""
    order = sorted((m for m, v in values.items() if v is not None),
                   key=lambda m: _rank_key(*values[m], bar), reverse=True)
    return {m: i + 1 for i, m in enumerate(order)}


def _rank_key(fq: Optional[float], mu: float, bar: Optional[float]) -> tuple:
    """Higher is better: at the bar by FQ then MU, under it by MU."""
    ok = bar is not None and mu >= bar
    fq = -1.0 if fq is None else fq
    return (ok, fq if ok else mu, mu)


def run_checks(hh, methods: List[str], chosen: Dict[str, List[str]], spec_of: Callable,
               seed: int, selection_rows: List[dict]) -> dict:
    """Run (or read from the cache) both checks of ``methods`` at their ``chosen`` settings
    (best first; empty: the selection is not complete, and nothing is run) on ``seed``.
    ``spec_of(m, label)``: the setting's :class:`RunSpec`; ``selection_rows``: the selection
    runs of ``seed`` (what the checks compare with). ``hh.cfg.checks`` False: read only.

    Returns ``{"rows": [...], "selection": {method: its chosen selection row},
    "start": {name: full-set metrics or None}, "expected": n, "seed": seed}``; each row
    with the run's ``trainable_params`` (``None``: not recorded) and ``questions``. With
    ``--shard``, the retain model's full evaluation is shard 0's, the target's shard 1's; the
    full-set runs fall on shard 0 (they need the retain model's), the whole-model runs on
    shard 1."""
    from .harness import Harness

    cfg = hh.cfg
    out = {"rows": [], "start": {n: None for n in START_MODELS},
           "expected": 2 * len(methods), "seed": seed,
           "selection": {r["method"]: dict(r) for r in selection_rows
                         if chosen.get(r["method"]) and r["setting"] == chosen[r["method"]][0]}}
    ch = hh if cfg.checks else Harness(replace(cfg, compute=False))
    ready = [m for m in methods if chosen.get(m)]
    if not ready:
        return out
    setup = hh.setup(seed)
    mine = {n: bool(cfg.checks and cfg.compute and (
        cfg.shard is None or i % cfg.shard[1] == cfg.shard[0]))
        for i, n in enumerate(START_MODELS)}
    start_metrics(hh, setup, FULL, compute=mine)
    items = []
    for m in ready:
        label = chosen[m][0]
        params = {"method_label": m, "setting": label}
        spec = spec_of(m, label)
        items += [(replace(spec, evaluation=FULL), seed, {**params, "stage": CHECKS["full"]}),
                  (replace(spec, train_layers="all"), seed,
                   {**params, "stage": CHECKS["whole"]})]
    rows = ch.run_many(items, desc=f"checks (seed {seed})")
    out["start"] = start = start_metrics(hh, setup, FULL)  # (a run may have made the retain's)
    for r in rows:
        r["method"] = r.pop("method_label")
    for r in rows + list(out["selection"].values()):
        res = ch.result(r["run"])
        r["trainable_params"] = res.get("trainable_params")
        r["questions"] = _questions(res["metrics"])
        if r["stage"] == CHECKS["full"]:  # the references of the full sets, not the cut's
            ret, fin = start["retain"] or {}, start["finetuned"] or {}
            r.update(retain_mu=ret.get("model_utility"),
                     retain_forget_probability=ret.get("forget", {}).get("probability"),
                     finetuned_mu=fin.get("model_utility"),
                     finetuned_fq=fin.get("forget_quality"),
                     finetuned_forget_probability=fin.get("forget", {}).get("probability"))
    out["rows"] = rows
    return out


def _questions(metrics: dict) -> str:
    """'scored / generated' over the four splits."""
    splits = ("forget", "retain", "real_authors", "world_facts")
    scored = sum(metrics[s]["n"] for s in splits)
    generated = sum(metrics[s].get("n_generated", 0) for s in splits)
    return f"{scored} / {generated}"


def _side(row: Optional[dict], bar: Optional[float], suffix: str, extra: str) -> dict:
    if row is None:
        return {f"fq_{suffix}": NOT_RUN}
    return {f"fq_{suffix}": row["forget_quality"], f"mu_{suffix}": row["model_utility"],
            f"bar_{suffix}": "-" if bar is None else (
                "pass" if row["model_utility"] >= bar else "fail"),
            f"{extra}_{suffix}": row.get(extra)}


def _compare(selection: Dict[str, dict], checked: Dict[str, dict], methods, bars, labels,
             extra: str, chosen) -> tuple:
    """The table rows of one check and its one-line verdict."""
    ranks = [rank({m: (s[m]["forget_quality"], s[m]["model_utility"]) if m in s else None
                   for m in methods}, bar) for s, bar in zip((selection, checked), bars)]
    table = []
    for m in methods:
        t = {"method": m, "setting": chosen[m][0] if chosen.get(m) else "-",
             **_side(selection.get(m), bars[0], "a", extra),
             **_side(checked.get(m), bars[1], "b", extra)}
        t.update(rank_a=ranks[0].get(m), rank_b=ranks[1].get(m))
        table.append(t)
    order = [sorted(r, key=r.get) for r in ranks]
    done = sum(m in checked for m in methods)
    rule = (f"Ranking (best FQ at MU >= the bar, then MU; under the bar by MU): "
            f"{labels[0]}: {' > '.join(order[0]) or '-'}; {labels[1]}: "
            f"{' > '.join(order[1]) or '-'}. ")
    if not chosen or done < len(methods) or len(order[0]) < len(methods):
        rule += f"Not comparable yet ({done} of {len(methods)} check runs done)."
    else:
        rule += ("**The same ranking.**" if order[0] == order[1]
                 else "**The ranking differs.**")
    return table, rule


def check_tables(checks: dict, chosen, methods, setup, thr: float, fraction: float,
                 layers: Optional[int]) -> List[tuple]:
    """The report's two check tables (``(heading, cols, rows, text)``) of :func:`run_checks`'s
    result; ``setup``: the start models, ``thr``: the cut's utility bar (``fraction`` x the
    retain model's MU), ``layers``: the main runs' trained layers."""
    sel = checks["selection"]
    by = {k: {r["method"]: r for r in checks["rows"] if r["stage"] == stage}
          for k, stage in CHECKS.items()}
    start, n, seed = checks["start"], checks["expected"] // 2, checks["seed"]
    full_bar = fraction * start["retain"]["model_utility"] if start["retain"] else None
    trained = (f"last {layers} layer{'s' if layers != 1 else ''}" if layers
               else "whole model")

    def cols(a, b, extra, extra_head):
        return ([("method", "method"), ("setting", "setting")]
                + [(f"{k}_{s}", f"{h} ({lab})") for s, lab in (("a", a), ("b", b))
                   for k, h in (("fq", "FQ"), ("mu", "MU"), ("bar", "MU >= bar"), ("rank", "rank"),
                                (extra, extra_head))])

    whole, rule1 = _compare(sel, by["whole"], methods, (thr, thr), (trained, "whole model"),
                            "trainable_params", chosen)
    full, rule2 = _compare(sel, by["full"], methods, (thr, full_bar), ("cut", "full sets"),
                           "questions", chosen)
    for name, label in (("finetuned", "target (start)"), ("retain", "retain (start)")):
        cut = setup.finetuned_metrics if name == "finetuned" else setup.retain_metrics
        f = start[name]
        full.append({"method": label, "setting": "-", "fq_a": cut["forget_quality"],
                     "mu_a": cut["model_utility"], "questions_a": _questions(cut),
                     **({"fq_b": NOT_RUN} if f is None else
                        {"fq_b": f["forget_quality"], "mu_b": f["model_utility"],
                         "questions_b": _questions(f)})})
    full_bar_text = (f"{full_bar:.3f}, {fraction} x the retain model's full-set MU"
                     if full_bar is not None else NOT_RUN)
    text1 = (f"{rule1} Both columns: the same start models (fine-tuned on the {trained}), "
             f"the same setting and seed, the same evaluation (MU bar {thr:.3f}); only the "
             "unlearning's trainable layers differ.")
    text2 = (f"{rule2} Both columns: the same training (the selection run's, run again); the "
             "cut scores the whole forget set but only the first questions of the utility "
             f"splits, and generates (ROUGE) for only the first questions of each (MU bar "
             f"{thr:.3f}); the full sets score and generate every question (MU bar "
             f"{full_bar_text}). The generation limit (new tokens) is the same, so only the "
             "question cut differs. Questions: scored / generated, over the four splits.")
    n_start = sum(v is not None for v in start.values())
    where = f"seed {seed}, each method's best setting"
    return [(f"Check: whole model vs the {trained} ({where}; {len(by['whole'])} of {n} runs "
             "done)", cols(trained, "whole model", "trainable_params", "trained params"),
             whole, text1),
            (f"Check: the evaluation cut vs the full sets ({where}; {len(by['full'])} of {n} "
             f"runs done, start models {n_start} of 2)",
             cols("cut", "full sets", "questions", "questions"), full, text2)]


def run_whole_second(hh, methods: List[str], chosen: Dict[str, List[str]], spec_of: Callable,
                     seed: int) -> List[dict]:
    """The whole-model check's follow-up: each method's second confirmed setting
    (``chosen[m][1]``) unlearned with every layer trainable on ``seed``, so that every method
    has its two confirmed settings under whole-model training (the same budget each; the
    first is :func:`run_checks`'s). ``hh.cfg.checks`` False: read only. Rows with stage
    :data:`WHOLE_SECOND`."""
    from .harness import Harness

    ch = hh if hh.cfg.checks else Harness(replace(hh.cfg, compute=False))
    items = [(replace(spec_of(m, chosen[m][1]), train_layers="all"), seed,
              {"method_label": m, "setting": chosen[m][1], "stage": WHOLE_SECOND})
             for m in methods if len(chosen.get(m) or []) > 1]
    rows = ch.run_many(items, desc=f"whole model, 2nd settings (seed {seed})") if items else []
    for r in rows:
        r["method"] = r.pop("method_label")
    return rows


def whole_second_table(checks: dict, second: List[dict], chosen, methods, thr: float
                       ) -> tuple:
    """``(heading, cols, rows, text)``: each method's two confirmed settings under
    whole-model training, its best of the two (FQ at MU >= ``thr``, then MU; under the bar
    by MU) and the methods ranked by that best."""
    first = {r["method"]: r for r in checks["rows"] if r["stage"] == CHECKS["whole"]}
    snd = {r["method"]: r for r in second}
    best, table = {}, []
    for m in methods:
        runs = [r for r in (first.get(m), snd.get(m)) if r is not None]
        if runs:
            best[m] = max(runs, key=lambda r: _rank_key(r["forget_quality"],
                                                        r["model_utility"], thr))
    ranks = rank({m: (b["forget_quality"], b["model_utility"]) for m, b in best.items()}, thr)
    for m in methods:
        t = {"method": m}
        for i, side, by_method in ((0, "1", first), (1, "2", snd)):
            r = by_method.get(m)
            label = chosen[m][i] if chosen.get(m) and len(chosen[m]) > i else "-"
            t.update({f"setting_{side}": label,
                      f"fq_{side}": ("-" if label == "-" else NOT_RUN) if r is None
                      else r["forget_quality"],
                      f"mu_{side}": None if r is None else r["model_utility"],
                      f"bar_{side}": None if r is None else (
                          "pass" if r["model_utility"] >= thr else "fail")})
        t["best"] = best[m]["setting"] if m in best else "-"
        t["rank"] = ranks.get(m)
        table.append(t)
    cols = [("method", "method")] + [(f"{k}_{s}", f"{h} ({n})") for s, n in (("1", "1st"),
                                                                            ("2", "2nd"))
                                     for k, h in (("setting", "setting"), ("fq", "FQ"),
                                                  ("mu", "MU"), ("bar", "MU >= bar"))]
    cols += [("best", "best of the two"), ("rank", "rank")]
    done = len(first) + len(snd)
    n = sum(min(2, len(chosen.get(m) or [])) for m in methods)
    order = sorted(ranks, key=ranks.get)
    text = (f"Ranking by each method's best of its two confirmed settings, trained whole "
            f"(MU bar {thr:.3f}): {' > '.join(order) or '-'}"
            + ("." if done == n else f" (not final: {done} of {n} runs done).")
            + " The settings were chosen under last-layers training; no method was tuned for "
              "whole-model training beyond these two.")
    heading = (f"Check: whole model, each method's two confirmed settings (seed "
               f"{checks['seed']}; {done} of {n} runs done)")
    return heading, cols, table, text
