"""The demo's models: the tiny Llama built here, or a pre-trained model; the fine-tuned and
the retain model fine-tuned on the facts and the retain model evaluated as the Forget Quality
reference, by :func:`palu_kernels.eval.setups.build_setup`. The result is a typed
:class:`DemoSetup` (the setup and the unlearning options that depend on the model)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Optional

from ..eval.setups import (QA_CHAT_TEMPLATE, QA_MAX_NEW_TOKENS, SetupSpec, build_setup,
                           qa_pairs, qa_texts, split_names, tofu_evaluation)
from ..tiny import build_tiny_llama, build_tokenizer
from .data import pretrained_data, synthetic_data

__all__ = ["DemoSetup", "pretrained_models", "tiny_models"]

_EVALUATING = "[4/5] evaluating the retain model (reference for Forget Quality)"
_FINE_TUNING = "[3/5] fine-tuning the {name} model on {n_pairs} question/answer pairs"
_FINE_TUNED = "      {name}: {epochs} epochs, answer NLL {nll:.4f}, {seconds:.1f} s"


@dataclass
class DemoSetup:
    """Steps 1-3 of the demo: the data, the fine-tuned model (saved in ``finetuned_dir``), the
    retain model's evaluation, and the unlearning options that depend on the model."""

    data_dir: str
    forget_split: str
    data: dict  # name -> path of the data files written
    training: dict  # model name -> {"epochs", "nll", "seconds", "n_pairs"}
    finetuned_dir: str
    retain_eval: dict  # palu_kernels.eval.evaluate_model's result for the retain model
    retain_dir: str
    forget_spans: str
    retain: str
    max_samples: Optional[int]
    max_new_tokens: int
    label: str
    warmup_epochs: float
    save_steps: int
    delete_models: bool
    max_length: int


def tiny_models(args, sizes: dict, out: str, progress: bool, log) -> "DemoSetup":
    """Steps 1-3 with the tiny Llama: synthetic data, tokenizer, the fine-tuned and retain
    models (both saved), the retain model's evaluation
    (:func:`palu_kernels.eval.setups.build_setup`)."""

    models_dir = os.path.join(out, "models")
    data_dir, paths = synthetic_data(args, sizes, out, log, retain_eval_size=None)
    forget_split, retain_split = split_names(data_dir, None)
    tokenizer = build_tokenizer(qa_texts(data_dir), vocab_size=sizes["vocab"],
                                chat_template=QA_CHAT_TEMPLATE)
    log(f"[2/5] tokenizer: byte-level BPE, {len(tokenizer)} tokens; tiny Llama hidden "
        f"{sizes['hidden']}, {sizes['layers']} layers")
    names = ("finetuned", "retain")
    built = build_setup(SetupSpec(
        data_dir=data_dir, forget_split=forget_split, forget_spans=str(paths["forget_spans"]),
        retain=str(paths["retain"]), tokenizer=tokenizer,
        pairs={name: qa_pairs(data_dir, forget_split, retain_split, name == "finetuned")
               for name in names},
        start=lambda name: build_tiny_llama(tokenizer, hidden_size=sizes["hidden"],
                                            num_layers=sizes["layers"], seed=args.seed),
        model_dirs={name: os.path.join(models_dir, name) for name in names},
        evaluate=tofu_evaluation(data_dir, forget_split, names=["retain"], log=log,
                                 message=_EVALUATING, batch_size=16,
                                 max_new_tokens=QA_MAX_NEW_TOKENS, progress=progress),
        lr=args.ft_lr, max_epochs=sizes["ft_epochs"], target_nll=args.ft_target_nll,
        seed=args.seed, progress=progress, log=log, log_before=_FINE_TUNING,
        log_after=_FINE_TUNED))
    return DemoSetup(
        data_dir=data_dir, forget_split=forget_split,
        data={k: str(v) for k, v in paths.items()}, training=built.training,
        finetuned_dir=built.target_dir, retain_eval=built.metrics["retain"],
        retain_dir=built.retain_dir, forget_spans=built.forget_spans, retain=built.retain,
        max_samples=None, max_new_tokens=QA_MAX_NEW_TOKENS, label="tiny Llama",
        warmup_epochs=1, save_steps=0, delete_models=False, max_length=512)


def pretrained_models(args, sizes: dict, source, out: str, progress: bool, log) -> "DemoSetup":
    """Steps 1-3 with a pre-trained model: data, the fine-tuned model (saved) and the retain
    model (fine-tuned on the retain questions, or the untouched model with
    ``--retain-from-base``; evaluated in memory, not saved)."""
    import copy

    from .pretrained import load_pretrained

    model_dir, gguf, label = source
    d = pretrained_data(args, sizes, out, log)
    n, max_new = sizes["max_samples"], sizes["max_new_tokens"]
    t0 = time.time()
    log(f"[2/5] loading {label} from {os.path.join(model_dir, gguf or '')} "
        f"(a GGUF file is de-quantised: a minute or two on a CPU)")
    base, tokenizer = load_pretrained(model_dir, gguf)
    n_params = sum(p.numel() for p in base.parameters())
    log(f"      {n_params / 1e6:.0f}M parameters, vocabulary {len(tokenizer)}, "
        f"{time.time() - t0:.1f} s; prompts use the tokenizer's chat template "
        f"(trainer and evaluation alike)")
    finetuned_dir = os.path.join(out, "models", "finetuned")
    pairs = dict(d["pairs"])
    if args.retain_from_base:
        pairs["retain"] = None  # the untouched model
    built = build_setup(SetupSpec(
        data_dir=d["data_dir"], forget_split=d["forget_split"], forget_spans=d["forget_spans"],
        retain=d["retain"], tokenizer=tokenizer, pairs=pairs,
        # the fine-tuned model starts from a copy, the retain model is the base itself
        start=lambda name: copy.deepcopy(base) if name == "finetuned" else base,
        model_dirs={"finetuned": finetuned_dir},
        evaluate=tofu_evaluation(
            d["data_dir"], d["forget_split"], names=["retain"], log=log,
            message=("[4/5] evaluating the untouched model as the retain model (retain from "
                     "base)" if args.retain_from_base else _EVALUATING),
            max_samples=n, batch_size=16, max_new_tokens=max_new, progress=progress),
        lr=args.ft_lr, max_epochs=sizes["ft_epochs"], target_nll=args.ft_target_nll,
        batch_size=8, seed=args.seed, answer_rows_only=True, progress=progress, log=log,
        log_before=_FINE_TUNING, log_after=_FINE_TUNED))
    return DemoSetup(
        data_dir=d["data_dir"], forget_split=d["forget_split"], data=d["paths"],
        training=built.training, finetuned_dir=finetuned_dir,
        retain_eval=built.metrics["retain"], retain_dir=os.path.join(out, "models", "retain"),
        forget_spans=d["forget_spans"], retain=d["retain"], max_samples=n,
        max_new_tokens=max_new, label=label, warmup_epochs=0,
        # no mid-run checkpoints (a 135M model's optimizer state is a gigabyte) and no
        # unlearned weights kept after their evaluation
        save_steps=1000000000, delete_models=True, max_length=256)
