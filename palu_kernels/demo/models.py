"""The demo's models: the tiny Llama built here, or a pre-trained model; each fine-tuned on
the facts (:func:`palu_kernels.train.finetune.fine_tune`), and the retain model evaluated as
the Forget Quality reference. The result is a typed :class:`DemoSetup`."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Optional

from ..eval import evaluate_model
from ..tiny import build_tiny_llama, build_tokenizer
from ..train.finetune import fine_tune
from ..io.models import load_model
from .data import all_texts, pretrained_data, synthetic_data, training_pairs

__all__ = ["DEMO_CHAT_TEMPLATE", "DemoSetup", "pretrained_models", "tiny_models"]

# The prompt format of the demo's tokenizer. The trainer and the evaluation both apply a
# tokenizer's chat template the same way (prompt tokens, then the answer tokenised on its own,
# then EOS), so fine-tuning, unlearning and evaluation see identical token sequences.
DEMO_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}Question: {{ message['content'] }}\n"
    "Answer: {% endfor %}"
)
MAX_NEW_TOKENS = 48  # the synthetic answers are short


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
    models (both saved), the retain model's evaluation."""

    models_dir = os.path.join(out, "models")
    data_dir, paths = synthetic_data(args, sizes, out, log, retain_eval_size=None)
    forget_split = json.loads(paths["meta"].read_text())["forget_split"]
    tokenizer = build_tokenizer(all_texts(paths), vocab_size=sizes["vocab"],
                                chat_template=DEMO_CHAT_TEMPLATE)
    log(f"[2/5] tokenizer: byte-level BPE, {len(tokenizer)} tokens; tiny Llama hidden "
        f"{sizes['hidden']}, {sizes['layers']} layers")
    training = {}
    model_dirs = {}
    for name, with_forget in (("finetuned", True), ("retain", False)):
        model = build_tiny_llama(tokenizer, hidden_size=sizes["hidden"],
                                 num_layers=sizes["layers"], seed=args.seed)
        pairs = training_pairs(paths, forget=with_forget)
        log(f"[3/5] fine-tuning the {name} model on {len(pairs)} question/answer pairs")
        training[name] = fine_tune(model, tokenizer, pairs, lr=args.ft_lr,
                                   max_epochs=sizes["ft_epochs"], target_nll=args.ft_target_nll,
                                   seed=args.seed, desc=f"fine-tune {name}", progress=progress)
        training[name]["n_pairs"] = len(pairs)
        model_dirs[name] = os.path.join(models_dir, name)
        model.save_pretrained(model_dirs[name], safe_serialization=True)
        tokenizer.save_pretrained(model_dirs[name])
        log(f"      {name}: {training[name]['epochs']} epochs, answer NLL "
            f"{training[name]['nll']:.4f}, {training[name]['seconds']:.1f} s")
    log("[4/5] evaluating the retain model (reference for Forget Quality)")
    retain_model = load_model(model_dirs["retain"], float32=True, eval_mode=True)
    retain_eval = evaluate_model(retain_model, tokenizer, data_dir, forget_split,
                                 batch_size=16, max_new_tokens=MAX_NEW_TOKENS,
                                 progress=progress)
    return DemoSetup(**{"data_dir": data_dir, "forget_split": forget_split,
            "data": {k: str(v) for k, v in paths.items()}, "training": training,
            "finetuned_dir": model_dirs["finetuned"], "retain_eval": retain_eval,
            "retain_dir": model_dirs["retain"], "forget_spans": str(paths["forget_spans"]),
            "retain": str(paths["retain"]), "max_samples": None,
            "max_new_tokens": MAX_NEW_TOKENS, "label": "tiny Llama", "warmup_epochs": 1,
            "save_steps": 0, "delete_models": False, "max_length": 512})


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
    ev_kw = dict(max_samples=n, batch_size=16, max_new_tokens=max_new, progress=progress)
    training = {}
    retain_eval = None
    if args.retain_from_base:
        log("[3/5] evaluating the untouched model as the retain model (retain from base)")
        retain_eval = evaluate_model(base, tokenizer, d["data_dir"], d["forget_split"], **ev_kw)
        training["retain"] = {"epochs": 0, "nll": None, "seconds": 0.0, "n_pairs": 0,
                              "from_base": True}
    names = ["finetuned"] if args.retain_from_base else ["finetuned", "retain"]
    finetuned_dir = os.path.join(out, "models", "finetuned")
    for name in names:
        model = base if name == names[-1] else copy.deepcopy(base)
        pairs = d["pairs"][name]
        log(f"[3/5] fine-tuning the {name} model on {len(pairs)} question/answer pairs")
        training[name] = fine_tune(model, tokenizer, pairs, lr=args.ft_lr,
                                   max_epochs=sizes["ft_epochs"], target_nll=args.ft_target_nll,
                                   batch_size=8, seed=args.seed, desc=f"fine-tune {name}",
                                   progress=progress, answer_rows_only=True)
        training[name]["n_pairs"] = len(pairs)
        log(f"      {name}: {training[name]['epochs']} epochs, answer NLL "
            f"{training[name]['nll']:.4f}, {training[name]['seconds']:.1f} s")
        if name == "finetuned":
            model.save_pretrained(finetuned_dir, safe_serialization=True)
            tokenizer.save_pretrained(finetuned_dir)
        else:
            log("[4/5] evaluating the retain model (reference for Forget Quality)")
            retain_eval = evaluate_model(model, tokenizer, d["data_dir"], d["forget_split"],
                                         **ev_kw)
        del model
    del base
    return DemoSetup(**{"data_dir": d["data_dir"], "forget_split": d["forget_split"], "data": d["paths"],
            "training": training, "finetuned_dir": finetuned_dir, "retain_eval": retain_eval,
            "retain_dir": os.path.join(out, "models", "retain"),
            "forget_spans": d["forget_spans"], "retain": d["retain"], "max_samples": n,
            "max_new_tokens": max_new, "label": label, "warmup_epochs": 0,
            # no mid-run checkpoints (a 135M model's optimizer state is a gigabyte) and no
            # unlearned weights kept after their evaluation
            "save_steps": 1000000000, "delete_models": True, "max_length": 256})
