"""Measure ``palu-spans --method contrast`` on TOFU: a tiny Llama fine-tuned on a forget split
plus some retain data (the model to unlearn) against one fine-tuned on the retain data only
(the reference), scored against the annotated spans at several thresholds.

    python bench/spans_contrast.py --forget ../shared/data/tofu/forget05_spans.jsonl \\
        --retain ../shared/data/tofu/retain99.json --n-retain 200 --out /tmp/spans_contrast

Writes ``<out>/models/{finetuned,reference}``, ``<out>/contrast.json`` (the threshold sweep)
and prints a markdown table. Models, data and rules: ``bench/results/spans/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--forget", required=True)
    p.add_argument("--retain", required=True)
    p.add_argument("--n-retain", type=int, default=200)
    p.add_argument("--out", required=True)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=1500)
    p.add_argument("--epochs", type=int, default=120)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--target-nll", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)

    import torch

    from palu_kernels.spans import ContrastOptions, contrast_spans, score_records
    from palu_kernels.tiny import build_tiny_llama, build_tokenizer
    from palu_kernels.io.records import load_forget, load_records
    from palu_kernels.train.finetune import fine_tune
    from palu_kernels.io.models import load_model, load_tokenizer

    torch.set_num_threads(a.threads)
    gold, _ = load_forget(a.forget, merge_overlaps=True)
    retain, _ = load_records(a.retain, spans="ignore")
    retain = retain[:a.n_retain]
    texts = [t for r in gold + retain for t in (r.question, r.answer)]
    models = os.path.join(a.out, "models")
    dirs = {name: os.path.join(models, name) for name in ("finetuned", "reference")}
    training = {}
    if not all(os.path.isfile(os.path.join(d, "config.json")) for d in dirs.values()):
        tok = build_tokenizer(texts, vocab_size=a.vocab)
        for name, recs in (("finetuned", gold + retain), ("reference", retain)):
            model = build_tiny_llama(tok, hidden_size=a.hidden, num_layers=a.layers, seed=a.seed)
            pairs = [(r.question, r.answer) for r in recs]
            training[name] = fine_tune(model, tok, pairs, lr=a.lr, max_epochs=a.epochs,
                                       target_nll=a.target_nll, seed=a.seed,
                                       desc=f"fine-tune {name}", progress=True)
            training[name]["n_pairs"] = len(pairs)
            print(name, training[name], flush=True)
            model.save_pretrained(dirs[name], safe_serialization=True)
            tok.save_pretrained(dirs[name])
    tok = load_tokenizer(dirs["finetuned"])
    m = load_model(dirs["finetuned"], float32=True, eval_mode=True)
    ref = load_model(dirs["reference"], float32=True, eval_mode=True)
    rows = []
    t0 = time.time()
    for relative, thresholds in ((False, (0.5, 1.0, 2.0, 3.0, 4.0, 6.0)),
                                 (True, (0.0, 0.5, 1.0))):
        for th in thresholds:
            pred = contrast_spans(gold, m, ref, tokenizer=tok,
                                  options=ContrastOptions(threshold=th, relative=relative))
            s = score_records(pred, gold)
            rows.append({"rule": "z-score" if relative else "nats", "threshold": th,
                         **s.to_dict()})
            print(f"{rows[-1]['rule']:8s} {th:5.1f}  {s.describe()}", flush=True)
    result = {"args": vars(a), "training": training, "rows": rows,
              "seconds_scoring": round(time.time() - t0, 1)}
    with open(os.path.join(a.out, "contrast.json"), "w") as f:
        json.dump(result, f, indent=2)
    print("| rule | threshold | P | R | F1 |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['rule']} | {r['threshold']} | {r['precision']:.3f} | {r['recall']:.3f} | "
              f"{r['f1']:.3f} |")


if __name__ == "__main__":
    main()
