"""``palu-unlearn demo --muse``: PALU, NPO and GA on MUSE News text, at CPU size.

What it does, with nothing downloaded (the MUSE metrics: :mod:`palu_kernels.eval.muse`):

1. **Data** (written to ``<out>/data`` in the MUSE layout, so :func:`evaluate_muse` reads it
   as it reads the real benchmark). From ``--data-dir`` (the MUSE News corpus):

   * forget passages: the first ``n`` VerbMem items, each cut to the last words of its prompt
     plus the first words of its ``gt`` (a short window of a forget article); the demo's
     VerbMem prompt / ``gt`` are exactly those two halves;
   * forget facts: the first ``n`` KnowMem forget question/answer pairs, each as a record
     whose prompt is MUSE's KnowMem prompt (the first ``icl`` in-context examples of MUSE's
     ``*_icl.json``, then ``"Question: q\\nAnswer: "``) and whose answer is the answer;
   * retain: ``n`` windows of ``privleak/retain2.json`` articles and the first ``n`` KnowMem
     retain pairs, the same way;
   * holdout: ``n`` windows of ``privleak/holdout.json`` articles (never trained on).

   A model trained from scratch on a few thousand tokens cannot answer questions about an
   article it has only read, so the facts are trained directly (answer tokens, in the very
   prompt KnowMem uses): KnowMem here measures how well the model recalls the answers it was
   trained on, and is the one metric of this demo that MUSE's real models get from reading.
2. **Models**: a byte-level BPE tokenizer trained on all of that text and a tiny Llama
   (:mod:`palu_kernels.tiny`, spaces as tokens of their own so that MUSE's prompt ending in
   ``"Answer: "`` tokenizes as in training); the *target* model is trained on forget and
   retain records (every passage token, every answer token), the *retrained* model on the
   retain records only (:func:`palu_kernels.eval.setups.build_setup`, which also evaluates
   both: step 5's target and retrained rows).
3. **Spans** for PALU (``contrast``, :func:`palu_kernels.spans.contrast.contrast_spans`,
   as ``palu-spans --method contrast``): the tokens of each forget record that the target
   predicts far better than the retrained model, ``log p_target - log p_retrained >
   contrast_threshold`` nats (default: the span module's), widened to words and merged.
4. **Unlearning**: PALU, NPO and GA from the target model with the same forget documents
   (every token is an answer token), the retain documents as the retain set, the same seed
   and schedule (:func:`palu_kernels.train.job.run_unlearning`).
5. **Evaluation**: the four MUSE metrics of every model in MUSE's conventions (VerbMem,
   KnowMem forget, PrivLeak against the retrained model, utility = KnowMem retain; plus the
   retain KnowMem as a percentage of the target's, an extra column), one table
   with the mean and standard deviation over ``seeds`` (model initialisation, training order,
   unlearning), written to ``muse_demo.md`` / ``muse_demo.json``.

Run::

    palu-unlearn demo --muse --data-dir ../shared/data/muse_news --seeds 0,1,2 --out muse_demo
"""

from __future__ import annotations

import json
import os
import shlex
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Dict, List, Optional, Sequence

from ..errors import UsageError
from ..eval.muse import evaluate_muse, knowmem_prompt
from ..eval.muse_files import MUSE_FILES, load_muse
from ..eval.setups import SetupSpec, build_setup, muse_evaluation
from ..eval.table import format_number, format_table
from ..outputs import atomic_write_text

__all__ = ["MUSE_CHAT_TEMPLATE", "MuseDemoConfig", "build_data", "run_muse_demo"]

# An empty "question" renders as BOS alone: a passage record ("", text) is BOS + text + EOS,
# every text token an answer token, for fine-tuning and unlearning alike.
MUSE_CHAT_TEMPLATE = "{{ bos_token }}{% for message in messages %}{{ message['content'] }}{% endfor %}"

_METHODS = ("palu", "npo", "ga")

_SIZES = {
    "default": dict(n=10, prompt_words=16, gt_words=40, hidden=128, layers=2, vocab=1024,
                    ft_epochs=80, icl=3),
    "quick": dict(n=4, prompt_words=12, gt_words=20, hidden=64, layers=2, vocab=512,
                  ft_epochs=60, icl=2),
}


@dataclass
class MuseDemoConfig:
    """The MUSE demo's options (``palu-unlearn demo --muse``, :mod:`palu_kernels.cli.demo`)."""

    data_dir: str
    out: str = "palu_muse_demo"
    quick: bool = False
    methods: Optional[str] = None
    seeds: Sequence[int] = (0,)
    n: Optional[int] = None
    ft_lr: float = 3e-3
    ft_epochs: Optional[int] = None
    ft_target_nll: float = 0.05
    lr: float = 1e-3
    epochs: float = 10
    batch_size: int = 4
    k: object = 1  # an integer >= 1, or "all" / -1 / None (the whole vocabulary)
    first_n: object = 3  # an integer >= 1, or "all" / -1 / None (every sensitive token)
    gamma: float = 2.0
    contrast_threshold: Optional[float] = None
    threads: int = 1
    no_progress: bool = False
    command: str = field(default="", repr=False)


# ------------------------------------------------------------------------------ data


def _words(text: str) -> List[str]:
    return text.split()


def _window(text: str, n_words: int) -> str:
    return " ".join(_words(text)[:n_words])


def build_data(data_dir: str, sizes: dict, out_dir: str) -> dict:
    """Write the demo's MUSE-layout data and the training documents; returns their paths and
    the documents."""
    full = load_muse(data_dir)
    n = sizes["n"]
    for name in ("verbmem", "knowmem_forget", "knowmem_retain", "privleak_forget",
                 "privleak_holdout"):
        if len(getattr(full, name)) < n:
            raise UsageError("n", f"{n}: {name} has only {len(getattr(full, name))} items")
    with open(os.path.join(data_dir, "privleak/retain2.json"), encoding="utf-8") as f:
        retain_articles = json.load(f)
    verbmem, forget_passages = [], []
    for r in full.verbmem[:n]:
        prompt = " ".join(_words(r["prompt"])[-sizes["prompt_words"]:])
        gt = _window(r["gt"], sizes["gt_words"])
        verbmem.append({"prompt": prompt, "gt": gt})
        forget_passages.append(prompt + " " + gt)
    win = sizes["prompt_words"] + sizes["gt_words"]
    retain_passages = [_window(t, win) for t in retain_articles[:n]]
    holdout = [_window(t, win) for t in full.privleak_holdout[:n]]
    kf, kr = full.knowmem_forget[:n], full.knowmem_retain[:n]
    icl_f = full.knowmem_forget_icl[:sizes["icl"]]
    icl_r = full.knowmem_retain_icl[:sizes["icl"]]
    files = {
        "verbmem": verbmem, "knowmem_forget": kf, "knowmem_forget_icl": icl_f,
        "knowmem_retain": kr, "knowmem_retain_icl": icl_r,
        "privleak_forget": forget_passages, "privleak_holdout": holdout,
    }
    muse_dir = os.path.join(out_dir, "data", "muse")
    for key, rel in MUSE_FILES.items():
        atomic_write_text(os.path.join(muse_dir, rel), json.dumps(files[key], ensure_ascii=False,
                                                              indent=1))
    # (prompt, text) records: a passage has no prompt, a fact has MUSE's KnowMem prompt
    forget = [("", p) for p in forget_passages] + [(knowmem_prompt(r["question"], icl_f),
                                                    r["answer"]) for r in kf]
    retain = [("", p) for p in retain_passages] + [(knowmem_prompt(r["question"], icl_r),
                                                    r["answer"]) for r in kr]
    retain_path = os.path.join(out_dir, "data", "retain.jsonl")
    atomic_write_text(retain_path, "".join(json.dumps({"question": q, "answer": a},
                                                      ensure_ascii=False) + "\n"
                                           for q, a in retain))
    return {"muse_dir": muse_dir, "forget": forget, "retain": retain,
            "retain_path": retain_path,
            "tokenizer_texts": [q + a for q, a in forget + retain] + holdout}


# --------------------------------------------------------------------------- the run


def _evaluate(model, tokenizer, muse_dir, verb_new, retain_auc=None, target_km=None):
    return evaluate_muse(model, tokenizer, muse_dir, batch_size=16,
                         verbmem_max_new_tokens=verb_new, retain_auc=retain_auc,
                         target_knowmem_retain=target_km, progress=False)


def _one_seed(cfg: MuseDemoConfig, sizes: dict, data: dict, tokenizer, methods: List[str],
              seed: int, out: str, progress: bool, log) -> Dict[str, dict]:
    from ..io.models import load_model
    from ..tiny import build_tiny_llama
    from ..train.job import (DataSpec, MethodSpec, ModelSpec, OutputSpec, TrainingOptions,
                             UnlearningJob, run_unlearning)

    sdir = os.path.join(out, f"seed{seed}")
    muse_dir = data["muse_dir"]
    # VerbMem continuation length: the longest gt in tokens with BOS (MUSE cuts the gt to its
    # first 128 tokens, BOS included; here no gt is cut)
    with open(os.path.join(muse_dir, MUSE_FILES["verbmem"]), encoding="utf-8") as f:
        verb_new = max(len(tokenizer(r["gt"], add_special_tokens=True)["input_ids"])
                       for r in json.load(f))
    forget_path = os.path.join(sdir, "forget_spans.jsonl")  # the contrast spans, below
    built = build_setup(SetupSpec(
        data_dir=muse_dir, forget_split="forget", forget_spans=forget_path,
        retain=data["retain_path"], tokenizer=tokenizer,
        pairs={"target": data["forget"] + data["retain"], "retrained": list(data["retain"])},
        start=lambda name: build_tiny_llama(tokenizer, hidden_size=sizes["hidden"],
                                            num_layers=sizes["layers"],
                                            max_position_embeddings=1024, seed=seed),
        model_dirs={"target": os.path.join(sdir, "target"),
                    "retrained": os.path.join(sdir, "retrained")},
        evaluate=muse_evaluation(muse_dir, verb_new, batch_size=16, progress=False),
        lr=cfg.ft_lr, max_epochs=cfg.ft_epochs or sizes["ft_epochs"],
        target_nll=cfg.ft_target_nll, seed=seed, batch_size=4, desc=f"seed {seed}: {{name}}",
        progress=progress, keep_models=True))
    info_t, info_r = built.training["target"], built.training["retrained"]
    log(f"  seed {seed}: target {info_t['epochs']} epochs (NLL {info_t['nll']:.3f}), retrained "
        f"{info_r['epochs']} epochs (NLL {info_r['nll']:.3f}), "
        f"{info_t['seconds'] + info_r['seconds']:.0f} s")
    target, retrain = built.models["target"], built.models["retrained"]
    target_dir = built.target_dir
    ev_t, ev_r = built.metrics["target"], built.metrics["retrained"]
    auc_r, km_t = ev_r["metrics"]["privleak_auc"], ev_t["metrics"]["knowmem_retain"]
    rows: Dict[str, dict] = {"target": {"eval": ev_t, "seconds": info_t["seconds"]},
                             "retrained": {"eval": ev_r, "seconds": info_r["seconds"]}}

    from ..spans.contrast import DEFAULT_THRESHOLD, ContrastOptions, contrast_spans
    from ..io.records import QARecord

    threshold = DEFAULT_THRESHOLD if cfg.contrast_threshold is None else cfg.contrast_threshold
    marked_records = contrast_spans([QARecord(q, a) for q, a in data["forget"]], target, retrain,
                                    tokenizer=tokenizer,
                                    options=ContrastOptions(threshold=threshold,
                                                            max_length=1024))
    source = "contrast"
    if not any(r.spans for r in marked_records):
        # The target did not out-predict the retrained model by the threshold anywhere (a
        # barely trained target, e.g. --quick): PALU would have no initiating row, so the
        # demo falls back to the model-free text spans and says so.
        from ..spans.text import text_spans

        marked_records = text_spans([QARecord(q, a) for q, a in data["forget"]])
        source = "text (contrast marked nothing)"
    spans = [[{"word": sp.word, "start": sp.start, "end": sp.end} for sp in r.spans]
             for r in marked_records]
    n_chars = sum(len(a) for _, a in data["forget"])
    marked = sum(s["end"] - s["start"] for sp in spans for s in sp)
    atomic_write_text(forget_path, "".join(
        json.dumps({"question": q, "answer": a, "target_words": sp}, ensure_ascii=False) + "\n"
        for (q, a), sp in zip(data["forget"], spans)))
    span_info = {"source": source, "threshold": threshold,
                 "marked_char_fraction": marked / n_chars,
                 "n_spans": sum(len(sp) for sp in spans)}
    log(f"  seed {seed}: {source} spans cover {100 * marked / n_chars:.0f}% of the forget "
        f"characters ({span_info['n_spans']} spans)")
    del target, retrain

    job = UnlearningJob(
        model=ModelSpec(target_dir),
        data=DataSpec(forget=forget_path, retain=data["retain_path"], max_length=1024,
                      first_n=cfg.first_n),
        method=MethodSpec(k=cfg.k, gamma=cfg.gamma),
        training=TrainingOptions(lr=cfg.lr, epochs=cfg.epochs, batch_size=cfg.batch_size,
                                 warmup_epochs=1, seed=seed, logging_steps=1000000),
        output=OutputSpec(os.path.join(sdir, "unlearned"), save_total_limit=1, overwrite=True,
                          save_steps=1000000000))
    for name in methods:
        j = replace(job, method=replace(job.method, name=name),
                    output=replace(job.output, output_dir=os.path.join(sdir, name)))
        summary = run_unlearning(j, verbose=False)
        model = load_model(j.output.output_dir, float32=True, eval_mode=True)
        rows[name] = {"eval": _evaluate(model, tokenizer, muse_dir, verb_new, retain_auc=auc_r,
                                        target_km=km_t),
                      "seconds": summary["train_runtime_s"], "command": j.command()}
        log(f"  seed {seed}: {name} {summary['steps']} steps, {summary['train_runtime_s']} s")
        del model
    for r in rows.values():
        r["eval"].pop("per_item", None)  # the per-item outputs stay in eval dirs; keep it small
    return {"rows": rows, "spans": span_info,
            "training": {"target": info_t, "retrained": info_r}, "verbmem_new_tokens": verb_new}


_COLS = (("verbmem_forget", "VerbMem forget"), ("knowmem_forget", "KnowMem forget"),
         ("knowmem_retain", "Utility (KnowMem retain)"), ("privleak_auc", "Min-40% AUC"),
         ("privleak", "PrivLeak %"), ("knowmem_retain_vs_target", "retain / target % (extra)"))


def _stat(values: List[Optional[float]]) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "n/a"
    mean = sum(vals) / len(vals)
    digits = 1 if max(abs(v) for v in vals) >= 10 else 3
    if len(vals) == 1:
        return format_number(float(mean), digits, large=None)
    sd = statistics.stdev(vals)
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def summary_table(per_seed: List[dict]) -> str:
    names = list(per_seed[0]["rows"])
    cells = []
    for name in names:
        evs = [s["rows"][name]["eval"]["metrics"] for s in per_seed]
        secs = [s["rows"][name]["seconds"] for s in per_seed]
        cells.append([name] + [_stat([m[k] for m in evs]) for k, _ in _COLS]
                     + [f"{sum(secs) / len(secs):.0f}"])
    return format_table(["model"] + [h for _, h in _COLS] + ["train s"], cells)


def run_muse_demo(cfg: MuseDemoConfig) -> dict:
    """Run the MUSE demo of ``cfg``; returns ``{"config", "per_seed", "table", "paths",
    "seconds"}`` and writes ``muse_demo.md`` / ``muse_demo.json`` into ``cfg.out``."""
    import torch
    from transformers.utils import logging as hf_logging

    from ..tiny import build_tokenizer
    from ..train.registry import METHODS

    from ..train.checks import all_or_count

    if not os.path.isdir(cfg.data_dir):
        raise UsageError("data_dir", f"data_dir: MUSE data directory not found: {cfg.data_dir}")
    missing = [rel for rel in list(MUSE_FILES.values()) + ["privleak/retain2.json"]
               if not os.path.isfile(os.path.join(cfg.data_dir, rel))]
    if missing:
        raise UsageError("data_dir", f"data_dir: missing MUSE file(s) in {cfg.data_dir}: "
                                     f"{', '.join(missing)}")
    methods = (list(_METHODS) if cfg.methods is None
               else [m.strip() for m in cfg.methods.split(",") if m.strip()])
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise UsageError("methods", f"methods: {unknown or methods} not available; the "
                                    f"trainer offers {list(METHODS)}")
    if not cfg.seeds:
        raise UsageError("seeds", "seeds: expected at least one seed")
    all_or_count("k", cfg.k)  # before any work (the jobs read them again)
    all_or_count("first_n", cfg.first_n)
    sizes = dict(_SIZES["quick" if cfg.quick else "default"])
    if cfg.n is not None:
        if cfg.n < 1:
            raise UsageError("n", f"n: expected a positive integer, got {cfg.n}")
        sizes["n"] = cfg.n
    progress = not cfg.no_progress
    t_start = time.time()
    out = os.path.abspath(cfg.out)

    def log(msg):
        print(msg, flush=True)

    old_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        data = build_data(cfg.data_dir, sizes, out)
        tokenizer = build_tokenizer(data["tokenizer_texts"], vocab_size=sizes["vocab"], split_spaces=True,
                                    model_max_length=1024, chat_template=MUSE_CHAT_TEMPLATE)
        log(f"MUSE demo: {len(data['forget'])} forget and {len(data['retain'])} "
            f"retain records, tokenizer {len(tokenizer)} tokens, tiny Llama hidden "
            f"{sizes['hidden']} x {sizes['layers']} layers, methods {', '.join(methods)}, "
            f"seeds {list(cfg.seeds)}")
        per_seed = [_one_seed(cfg, sizes, data, tokenizer, methods, s, out, progress, log)
                    for s in cfg.seeds]
    finally:
        torch.set_num_threads(old_threads)
        hf_logging.set_verbosity(verbosity)
    table = summary_table(per_seed)
    seconds = round(time.time() - t_start, 1)
    spans = [s["spans"]["marked_char_fraction"] for s in per_seed]
    title = (f"MUSE News demo: tiny Llama, {sizes['n']} forget passages + {sizes['n']} forget "
             f"QA, {len(cfg.seeds)} seed(s)")
    md = "\n".join([
        f"# {title}", "", table, "",
        f"Mean ± standard deviation over seeds {list(cfg.seeds)}. MUSE's conventions "
        "(palu_kernels/eval/muse.py). VerbMem / KnowMem: ROUGE-L F1 (lower on forget = more "
        "forgotten; the retrained model is the reference level). Min-40% AUC: forget labelled "
        "0, holdout 1. PrivLeak: (AUC - AUC_retrained) / AUC_retrained x 100, 0 is ideal, "
        "-100 = still memorised, positive = over-unlearned. Utility: KnowMem on retain, "
        "absolute; retain / target %: the same as % of the target's (not a MUSE metric). "
        "train s: training time of that model.",
        "",
        f"PALU spans: contrast (palu_kernels.spans.contrast), log p_target - log p_retrained > "
        f"{per_seed[0]['spans']['threshold']} nats"
        + "".join(f" (seed {s}: {p['spans']['source']})" for s, p in zip(cfg.seeds, per_seed)
                  if p["spans"]["source"] != "contrast") + "; "
        f"they cover {100 * min(spans):.0f}-{100 * max(spans):.0f}% of the forget characters.",
        "", f"Command: `{cfg.command or 'run_muse_demo(...)'}`", "",
        f"Total wall time: {seconds} s.", ""])
    paths = {"markdown": os.path.join(out, "muse_demo.md"),
             "json": os.path.join(out, "muse_demo.json")}
    result = {"config": {**asdict(cfg), "sizes": sizes, "methods": methods},
              "per_seed": per_seed, "table": table, "paths": paths, "seconds": seconds}
    atomic_write_text(paths["markdown"], md)
    atomic_write_text(paths["json"], json.dumps(result, indent=1, default=str))
    print()
    print(md)
    return result


def command_line(argv: Sequence[str]) -> str:
    """The ``palu-unlearn demo`` command of ``argv`` (recorded in the result)."""
    return "palu-unlearn demo " + shlex.join(list(argv))
