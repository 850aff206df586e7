"""What the harness does for a run with a variant of its options (``RunSpec.train_layers``,
``RunSpec.evaluation``), and the start models' evaluation under a variant evaluation.

A variant changes one run, never the setup: the start models stay those of the setup (for
example fine-tuned on the last 4 decoder layers), and ``setups/<key>/setup.json`` keeps its
cut evaluation. The start models' evaluation on the full sets (the retain model's forget
truth ratios are Forget Quality's reference of a run evaluated that way; its Model Utility
sets that run's utility bar) is cached apart, one file per model:
``setups/<key>/eval-full-<name>.json`` (:func:`start_evaluation`).
"""

from __future__ import annotations

import json
import os
import time
from typing import Dict, List, Optional

from ..outputs import atomic_write_text
from .cache import read_cached
from .runspec import FULL

__all__ = ["START_MODELS", "eval_kwargs", "reference_ratios", "start_evaluation",
           "start_metrics", "trainable_count", "unlearn_layers"]

START_MODELS = ("retain", "finetuned")
"""The setup's two models (the retain model first: the others' reference)."""


def unlearn_layers(spec, cfg) -> Optional[int]:
    """The decoder layers ``spec``'s unlearning trains: ``spec.train_layers``, or every layer
    (``None``) for ``"all"``, or the harness's ``train_layers`` when unset."""
    v = spec.train_layers
    if v is None:
        return cfg.train_layers
    return None if v == "all" else v


def eval_kwargs(h, evaluation: Optional[str]) -> dict:
    """:func:`palu_kernels.eval.evaluate_model`'s options for ``evaluation`` (``None``: the
    harness's, its cut; :data:`~palu_kernels.experiments.runspec.FULL`: no question cut,
    the same generation limit)."""
    kw = h._eval_kwargs()
    if evaluation == FULL:
        kw.update(max_samples=None, max_generate=None)
    return kw


def _path(h, setup, name: str, evaluation: str) -> str:
    return os.path.join(h.out, "setups", setup.key, f"eval-{evaluation}-{name}.json")


def _check(obj: dict) -> dict:
    obj["metrics"]["model_utility"], obj["metrics"]["forget"]["probability"]  # noqa: B018
    if not isinstance(obj["forget_truth_ratios"], list):
        raise TypeError("forget_truth_ratios is not a list")
    return obj


def start_evaluation(h, setup, name: str, evaluation: str = FULL, *,
                     compute: bool = True) -> Optional[dict]:
    """The evaluation of the setup's model ``name`` (``"retain"`` or ``"finetuned"``) under
    ``evaluation``: ``{"model", "evaluation", "setup", "options", "metrics",
    "forget_truth_ratios", "seconds"}``, computed once and cached (``compute`` False: ``None``
    when not cached). Its ``metrics["forget_quality"]`` is ``None``: :func:`start_metrics`
    puts the Forget Quality against the retain model's."""
    if name not in START_MODELS:
        raise ValueError(f"name: expected one of {START_MODELS}, got {name!r}")
    path = _path(h, setup, name, evaluation)
    res = read_cached(path, _check)
    if res is not None or not compute:
        return res
    from ..eval import evaluate_model
    from ..eval.tofu import load_eval_model

    h.log(f"setup {setup.key}: evaluating the {name} model on the {evaluation} sets")
    kw = eval_kwargs(h, evaluation)
    with h._threads():
        model, tok = load_eval_model(setup.finetuned_dir if name == "finetuned"
                                     else setup.retain_dir, device=h.cfg.device)
        t0 = time.time()
        out = evaluate_model(model, tok, setup.data_dir, setup.forget_split, **kw)
        seconds = round(time.time() - t0, 1)
        del model
    res = {"model": name, "evaluation": evaluation, "setup": setup.key, "options": kw,
           "metrics": out["metrics"], "forget_truth_ratios": out["forget_truth_ratios"],
           "seconds": seconds}
    atomic_write_text(path, json.dumps(res, indent=1, default=str))
    return res


def reference_ratios(h, setup, evaluation: Optional[str]) -> List[float]:
    """The retain model's forget truth ratios under ``evaluation`` (Forget Quality's
    reference): the setup's own, or its cached (computed once) variant evaluation's."""
    if evaluation is None:
        return setup.retain_truth_ratios
    return start_evaluation(h, setup, "retain", evaluation)["forget_truth_ratios"]


def start_metrics(h, setup, evaluation: str = FULL, *,
                  compute: Optional[Dict[str, bool]] = None) -> Dict[str, Optional[dict]]:
    """``{name: metrics or None}`` of the two start models under ``evaluation``, each with
    its Forget Quality against the retain model's (when that one is there). ``compute``:
    ``{name: whether to compute it when not cached}`` (default: read only)."""
    from ..eval.metrics import forget_quality

    res = {n: start_evaluation(h, setup, n, evaluation, compute=(compute or {}).get(n, False))
           for n in START_MODELS}
    ref = res["retain"]["forget_truth_ratios"] if res["retain"] else None
    out: Dict[str, Optional[dict]] = {}
    for n, r in res.items():
        if r is None:
            out[n] = None
            continue
        m = dict(r["metrics"])
        m["forget_quality"] = forget_quality(r["forget_truth_ratios"], ref) if ref else None
        out[n] = m
    return out


def trainable_count():
    """A ``TrainerCallback`` that records, in its ``n``, how many parameters the run trains
    (``requires_grad``, each shared tensor once) when training begins."""
    from transformers import TrainerCallback

    class Count(TrainerCallback):
        n: Optional[int] = None

        def on_train_begin(self, args, state, control, model=None, **kw):
            self.n = sum(p.numel() for p in model.parameters() if p.requires_grad)

    return Count()
