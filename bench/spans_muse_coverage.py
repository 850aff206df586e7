"""How much of the MUSE News forget passages each span source marks (issue 22).

    python bench/spans_muse_coverage.py --data ../shared/data/muse_news/raw/forget.json \\
        --n-model 100 --cache /tmp/muse_cov --out bench/results/spans/muse_coverage

* ``text`` (no model) on every passage, at several ``max_df`` values (the passage default
  is 0.01);
* ``predictability`` under SmolLM2-135M-Instruct (``--reference smollm2``) on the first
  ``--n-model`` passages, at several probability thresholds (default 0.5): the token
  log-probabilities are computed once and cached under ``--cache`` (resumable, a chunk of
  passages at a time), the thresholds only re-read them;
* ``contrast`` of ``--target`` (a model fine-tuned on the passages, same tokenizer) against
  the same pre-trained reference, with the per-passage cap, when ``--target`` is given.

Writes ``<out>.md`` and ``<out>.json``. Coverage = marked characters / all characters of the
passages (and words inside a span / all words).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace

from palu_kernels.outputs import atomic_write_text
from palu_kernels.spans import (PASSAGE_MAX_COVERAGE, ContrastOptions, coverage,
                                read_span_inputs, text_spans)
from palu_kernels.spans.contrast import _spans_of
from palu_kernels.spans.lm import _predictability_marks, load_scorer, token_log_probs
from palu_kernels.spans.text import spans_from_marks

DF_LADDER = (0.2, 0.05, 0.01)
P_LADDER = (0.9, 0.5, 0.2, 0.1)
NATS_LADDER = (2.0, 4.0)
CAP_LADDER = (None, 0.25, 0.1)


def _cached_log_probs(name, load, records, cache, chunk, log):
    path = os.path.join(cache, f"{name}_log_probs.json")
    done = {}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            done = {int(k): v for k, v in json.load(f).items()}
    todo = [i for i in range(len(records)) if i not in done]
    model, tokenizer = load() if todo else (None, None)
    t0, n_tok = time.time(), 0
    for s in range(0, len(todo), chunk):
        idx = todo[s:s + chunk]
        (lps,) = token_log_probs([model], tokenizer, [records[i] for i in idx],
                                 batch_size=chunk, max_length=512)
        for i, lp in zip(idx, lps):
            done[i] = lp
            n_tok += len(lp)
        atomic_write_text(path, json.dumps({str(k): v for k, v in done.items()}))
        log(f"  {name}: {len(done)}/{len(records)} passages, {n_tok} tokens in "
            f"{time.time() - t0:.0f} s ({n_tok / max(time.time() - t0, 1e-9):.0f} tokens/s)")
    return [done[i] for i in range(len(records))], n_tok, time.time() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="../shared/data/muse_news/raw/forget.json")
    p.add_argument("--reference", default="smollm2")
    p.add_argument("--target", default=None)
    p.add_argument("--n-model", type=int, default=100)
    p.add_argument("--cache", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--chunk", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    os.makedirs(args.cache, exist_ok=True)
    log = lambda m: print(m, flush=True)  # noqa: E731
    records, report = read_span_inputs(args.data, skip_bad=True)
    sub = records[:args.n_model]
    rows, examples = [], {}

    def add(source, setting, recs, n):
        c = coverage(recs)
        rows.append({"source": source, "setting": setting, "passages": n,
                     "chars": c["chars"], "words": c["words"], "spans": c["n_spans"]})
        log(f"{source} {setting} ({n} passages): {100 * c['chars']:.1f}% chars, "
            f"{100 * c['words']:.1f}% words")
        return recs

    for df in DF_LADDER:
        out = add("text", f"max_df {df}" + (" (default)" if df == 0.01 else ""),
                  text_spans(records, max_df=df, use_spacy=False), len(records))
        add("text", f"max_df {df}, first {len(sub)}", out[:len(sub)], len(sub))
        if df == 0.01:
            examples["text (max_df 0.01)"] = [s.word for s in out[0].spans][:40]
    out = add("text", "names, numbers, dates only (no content words)",
              text_spans(records, content_words=False, use_spacy=False), len(records))

    loaded = {}

    def reference():
        if "ref" not in loaded:
            t0 = time.time()
            loaded["ref"] = load_scorer(args.reference)
            log(f"loaded {args.reference} in {time.time() - t0:.0f} s")
        return loaded["ref"]

    lps, n_tok, secs = _cached_log_probs("reference", reference, sub, args.cache, args.chunk,
                                         log)
    timing = {"reference_tokens": n_tok, "reference_seconds_this_run": round(secs, 1)}
    for th in P_LADDER:
        recs = []
        for r, lp in zip(sub, lps):
            words, mark = _predictability_marks(r.answer, [tuple(x) for x in lp], th)
            recs.append(replace(r, spans=spans_from_marks(r.answer, words, mark)))
        add("predictability", f"p >= {th} is common" + (" (default)" if th == 0.5 else ""),
            recs, len(sub))
        if th in (0.5, 0.1):
            examples[f"predictability (p {th})"] = [s.word for s in recs[0].spans][:40]

    if args.target:
        lpt, n_tok_t, secs_t = _cached_log_probs(
            "target", lambda: (load_scorer(args.target, tokenizer=reference()[1])[0],
                               reference()[1]), sub, args.cache, args.chunk, log)
        timing["target_seconds_this_run"] = round(secs_t, 1)
        for nats in NATS_LADDER:
            for cap in CAP_LADDER:
                recs = []
                for r, a, b in zip(sub, lpt, lps):
                    llr = [(x[0], x[1], x[2] - y[2]) for x, y in zip(a, b)]
                    recs.append(replace(r, spans=_spans_of(
                        r.answer, llr, ContrastOptions(threshold=nats, max_coverage=cap))))
                add("contrast", f"{nats} nats, cap {cap}"
                    + (" (default)" if nats == 2.0 and cap == PASSAGE_MAX_COVERAGE else ""),
                    recs, len(sub))

    table = ["| source | setting | passages | characters marked | words marked | spans |",
             "|---|---|---|---|---|---|"]
    table += [f"| {r['source']} | {r['setting']} | {r['passages']} | {100 * r['chars']:.1f}% "
              f"| {100 * r['words']:.1f}% | {r['spans']} |" for r in rows]
    cmd = "python " + " ".join(["bench/spans_muse_coverage.py"] + list(argv or sys.argv[1:]))
    md = "\n".join(["# Span coverage on the MUSE News forget passages", "",
                    f"Input: {report.describe()}.", "", *table, "",
                    f"Command: `{cmd}`", "",
                    "First spans of passage 0 per source:", ""]
                   + [f"- {k}: {', '.join(v)}" for k, v in examples.items()] + [""])
    atomic_write_text(args.out + ".md", md)
    atomic_write_text(args.out + ".json", json.dumps({"rows": rows, "examples": examples,
                                                      "timing": timing, "command": cmd},
                                                     indent=1))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
