"""One builder for the setups the experiments and the demos start from.

A *setup* is two models fine-tuned from the same start on one data set: the *target* (it
knows every fact, forget set included; the model unlearning starts from) and the *retain*
model (it never saw the forget set; the reference of Forget Quality and PrivLeak), each saved
and evaluated. :func:`build_setup` takes a :class:`SetupSpec` (the data's paths, the
tokenizer, each model's fine-tuning pairs, how to make a start model, the fine-tuning options,
where to save, how to evaluate) and returns a :class:`BuiltSetup` (the same paths, the model
directories, each model's fine-tuning record and evaluation, the time taken).

Its callers: :class:`palu_kernels.experiments.harness.Harness` (synthetic or TOFU data, a
tiny or a pre-trained model; names ``finetuned`` / ``retain``), ``palu-unlearn demo``
(:mod:`palu_kernels.demo.models`) and the MUSE demo (:mod:`palu_kernels.demo.muse`; names
``target`` / ``retrained``). The TOFU-layout helpers (:func:`split_names`, :func:`qa_pairs`,
:func:`qa_texts`) and the two evaluations (:func:`tofu_evaluation`,
:func:`muse_evaluation`) are the pieces they share.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

__all__ = ["QA_CHAT_TEMPLATE", "QA_MAX_NEW_TOKENS", "BuiltSetup", "SetupSpec", "build_setup",
           "muse_evaluation", "qa_pairs", "qa_texts", "split_names", "tofu_evaluation"]

# The prompt format of the tiny models' tokenizer (synthetic TOFU-style data). The trainer and
# the evaluation both apply a tokenizer's chat template the same way (prompt tokens, the
# answer tokenised on its own, EOS), so fine-tuning, unlearning and evaluation see identical
# token sequences.
QA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}Question: {{ message['content'] }}\n"
    "Answer: {% endfor %}"
)
QA_MAX_NEW_TOKENS = 48  # the synthetic answers are short

# evaluate(models, tokenizer) -> {name: result}: the models are in eval mode, in build order
Evaluate = Callable[[Dict[str, Any], Any], Dict[str, dict]]


# ------------------------------------------------------------------------------ TOFU layout


def _records(path: str) -> List[dict]:
    from .tofu import read_json_records

    return read_json_records(path) if os.path.isfile(path) else []


def split_names(data_dir: str, forget_split: Optional[str]) -> Tuple[str, str]:
    """``(forget split, retain split)`` of a TOFU-layout directory: ``forget_split``, or the
    synthetic benchmark's (its ``synth_meta.json``), or ``forget01``; the retain split is its
    complement (``forget10`` -> ``retain90``)."""
    if forget_split is None:
        meta = os.path.join(data_dir, "synth_meta.json")
        if os.path.isfile(meta):
            with open(meta, encoding="utf-8") as f:
                forget_split = json.load(f)["forget_split"]
        else:
            forget_split = "forget01"
    pct = int(forget_split.replace("forget", ""))
    return forget_split, f"retain{100 - pct:02d}"


def qa_pairs(data_dir: str, forget_split: str, retain_split: str, with_forget: bool) -> list:
    """(question, answer) pairs a model is fine-tuned on: the authors (the retain split, then
    the forget split when ``with_forget``), each answer also paraphrased when the data has it
    (``full_perturbed.json``), plus the real authors and the world facts."""
    authors = _records(os.path.join(data_dir, f"{retain_split}.json"))
    if with_forget:
        authors = authors + _records(os.path.join(data_dir, f"{forget_split}.json"))
    para = {r["question"]: r.get("paraphrased_answer")
            for r in _records(os.path.join(data_dir, "full_perturbed.json"))}
    pairs = []
    for r in authors:
        pairs.append((r["question"], r["answer"]))
        if para.get(r["question"]):
            pairs.append((r["question"], para[r["question"]]))
    for name in ("real_authors.json", "world_facts.json"):
        pairs += [(r["question"], r["answer"]) for r in _records(os.path.join(data_dir, name))]
    return pairs


def qa_texts(data_dir: str) -> List[str]:
    """Every question and answer (paraphrased and perturbed too) of a TOFU-layout directory:
    the texts a tiny model's tokenizer is trained on."""
    texts = []
    for name in ("full_perturbed.json", "real_authors_perturbed.json",
                 "world_facts_perturbed.json"):
        for r in _records(os.path.join(data_dir, name)):
            texts += [r.get("question"), r.get("answer"), r.get("paraphrased_answer"),
                      r.get("paraphrased_question"), *r.get("perturbed_answer", [])]
    return [t for t in texts if isinstance(t, str) and t]


# ------------------------------------------------------------------------------ the builder


@dataclass
class SetupSpec:
    """What :func:`build_setup` takes.

    ``data_dir``, ``forget_split``, ``forget_spans`` (the forget records with spans: what
    unlearning forgets) and ``retain`` (the retain records it keeps) describe the data and
    are passed through. ``pairs``: ``{name: fine-tuning pairs}`` of the two models, the
    target first and the retain model second; ``None`` pairs: that model is its start model
    as it is (a pre-trained model as the retain model). ``start(name)``: a fresh start model
    (called once per model, in order). ``model_dirs``: ``{name: directory}`` the models are
    saved to (with the tokenizer); a model not named there is not saved. ``evaluate``:
    ``evaluate(models, tokenizer) -> {name: result}`` once both are fine-tuned (in eval mode),
    e.g. :func:`tofu_evaluation`. The fine-tuning options are
    :func:`palu_kernels.train.finetune.fine_tune`'s; ``desc`` is its progress label
    (``{name}`` replaced). ``log_before`` / ``log_after``: lines logged before and after
    each model's fine-tuning (``{name}``, ``{n_pairs}``; after also ``{epochs}``, ``{nll}``,
    ``{seconds}``; empty: none). ``keep_models``: return the models in memory.
    """

    data_dir: str
    forget_split: str
    forget_spans: str
    retain: str
    tokenizer: Any
    pairs: Dict[str, Optional[list]]
    start: Callable[[str], Any]
    model_dirs: Dict[str, str] = field(default_factory=dict)
    evaluate: Optional[Evaluate] = None
    lr: float = 3e-3
    max_epochs: int = 30
    target_nll: float = 0.05
    seed: int = 0
    batch_size: int = 16
    answer_rows_only: bool = False
    train_layers: Optional[int] = None
    bf16: bool = False
    length_buckets: bool = False
    desc: str = "fine-tune {name}"
    progress: bool = True
    log: Optional[Callable[[str], None]] = None
    log_before: str = ""
    log_after: str = ""
    keep_models: bool = False


@dataclass
class BuiltSetup:
    """What :func:`build_setup` returns: the data's paths (as given), the saved models'
    directories (``None``: not saved), ``training`` (``{name: {"epochs", "nll", "seconds",
    "n_pairs"}}``; a model used as it is: 0 epochs, ``"from_base": True``), ``names``
    (the target's and the retain model's, the keys of ``training``), ``metrics``
    (``{name: evaluation}``, empty without ``evaluate``), ``seconds`` (fine-tuning and
    evaluation) and, with ``keep_models``, ``models``."""

    data_dir: str
    forget_split: str
    forget_spans: str
    retain: str
    names: Tuple[str, str]
    target_dir: Optional[str]
    retain_dir: Optional[str]
    training: Dict[str, dict]
    metrics: Dict[str, dict]
    seconds: float
    models: Dict[str, Any] = field(default_factory=dict, repr=False)


def build_setup(spec: SetupSpec) -> BuiltSetup:
    """Fine-tune, save and evaluate the two models of ``spec`` (see :class:`SetupSpec`)."""
    import torch

    from ..train.finetune import fine_tune

    names = list(spec.pairs)
    if len(names) != 2:
        raise ValueError(f"pairs: expected a target and a retain model, got {names}")
    t0 = time.time()
    torch.manual_seed(spec.seed)
    training: Dict[str, dict] = {}
    models: Dict[str, Any] = {}
    for name in names:
        model = spec.start(name)
        pairs = spec.pairs[name]
        if pairs is None:
            training[name] = {"epochs": 0, "nll": None, "seconds": 0.0, "n_pairs": 0,
                              "from_base": True}
        else:
            _log(spec, spec.log_before, name=name, n_pairs=len(pairs))
            training[name] = fine_tune(
                model, spec.tokenizer, pairs, lr=spec.lr, max_epochs=spec.max_epochs,
                target_nll=spec.target_nll, batch_size=spec.batch_size, seed=spec.seed,
                desc=spec.desc.format(name=name), progress=spec.progress,
                answer_rows_only=spec.answer_rows_only, train_layers=spec.train_layers,
                bf16=spec.bf16, length_buckets=spec.length_buckets)
            training[name]["n_pairs"] = len(pairs)
            _log(spec, spec.log_after, name=name, **training[name])
        if name in spec.model_dirs:
            model.save_pretrained(spec.model_dirs[name], safe_serialization=True)
            spec.tokenizer.save_pretrained(spec.model_dirs[name])
        model.eval()
        models[name] = model
    metrics = spec.evaluate(models, spec.tokenizer) if spec.evaluate is not None else {}
    target, retain = names
    return BuiltSetup(data_dir=spec.data_dir, forget_split=spec.forget_split,
                      forget_spans=spec.forget_spans, retain=spec.retain,
                      names=(target, retain), target_dir=spec.model_dirs.get(target),
                      retain_dir=spec.model_dirs.get(retain), training=training,
                      metrics=metrics, seconds=round(time.time() - t0, 1),
                      models=models if spec.keep_models else {})


def _log(spec: SetupSpec, template: str, **values) -> None:
    if template and spec.log is not None:
        spec.log(template.format(**values))


# ------------------------------------------------------------------------------ evaluations


def tofu_evaluation(data_dir: str, forget_split: str, *, names: Optional[Sequence[str]] = None,
                    log: Optional[Callable[[str], None]] = None, message: str = "",
                    **options) -> Evaluate:
    """An ``evaluate`` for :class:`SetupSpec`: the TOFU evaluation
    (:func:`palu_kernels.eval.tofu.evaluate_model` with ``options``) of the models in
    ``names`` (default: both), each with its Forget Quality against the retain model's (the
    second model's) forget truth ratios when the retain model is among them. ``log``:
    called with ``message`` before it starts."""

    def evaluate(models: Dict[str, Any], tokenizer) -> Dict[str, dict]:
        from .metrics import forget_quality
        from .tofu import evaluate_model

        if log is not None and message:
            log(message)
        results = {n: evaluate_model(models[n], tokenizer, data_dir, forget_split, **options)
                   for n in (names or models)}
        retain = list(models)[-1]
        if retain in results:
            ratios = results[retain]["forget_truth_ratios"]
            for r in results.values():
                r["metrics"]["forget_quality"] = forget_quality(r["forget_truth_ratios"],
                                                                ratios)
        return results

    return evaluate


def muse_evaluation(muse_dir: str, verbmem_max_new_tokens: int, **options) -> Evaluate:
    """An ``evaluate`` for :class:`SetupSpec`: the MUSE evaluation
    (:func:`palu_kernels.eval.muse.evaluate_muse` with ``options``) of the target and the
    retrained (retain) model: the retrained model's Min-40% AUC is the target's PrivLeak
    reference and the target's KnowMem retain the retrained model's
    ``knowmem_retain_vs_target`` reference (the target's own is 100)."""

    def evaluate(models: Dict[str, Any], tokenizer) -> Dict[str, dict]:
        from .muse import evaluate_muse

        def ev(model, **refs):
            return evaluate_muse(model, tokenizer, muse_dir,
                                 verbmem_max_new_tokens=verbmem_max_new_tokens, **options,
                                 **refs)

        target, retrain = (models[n] for n in models)
        auc_r = ev(retrain)["metrics"]["privleak_auc"]
        ev_t = ev(target, retain_auc=auc_r)
        km_t = ev_t["metrics"]["knowmem_retain"]
        ev_t["metrics"]["knowmem_retain_vs_target"] = 100.0 if km_t else None
        ev_r = ev(retrain, retain_auc=auc_r, target_knowmem_retain=km_t)
        t, r = list(models)
        return {t: ev_t, r: ev_r}

    return evaluate
