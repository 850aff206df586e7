"""The demo's data: the synthetic benchmark (or a TOFU directory for a pre-trained model) and,
for a pre-trained model, the question/answer pairs each model is fine-tuned on (the tiny
model's: :func:`palu_kernels.eval.setups.qa_pairs`)."""

from __future__ import annotations

import json
import os
from typing import List

from ..eval.tofu import read_json_records

__all__ = ["pretrained_data", "synthetic_data"]


def _write_jsonl(path: str, rows: List[dict]) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


def synthetic_data(args, sizes: dict, out: str, log, *, retain_eval_size):
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


def pretrained_data(args, sizes: dict, out: str, log) -> dict:
    """Data for a pre-trained model: the synthetic benchmark (written to ``out/data``) or the
    TOFU directory ``--data-dir``; the first ``max_samples`` forget and retain questions are
    fine-tuned and unlearned (``out/subset``), and evaluated."""

    n = sizes["max_samples"]
    if args.data_dir is None:
        data_dir, paths = synthetic_data(
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
    forget = read_json_records(os.path.join(data_dir, f"{split}_spans.jsonl"))[:n]
    # the retain questions evaluated are the first ones of retain_perturbed.json: fine-tune
    # (and keep, while unlearning) exactly those
    retain = [{"question": r["question"], "answer": r["answer"]}
              for r in read_json_records(os.path.join(data_dir, "retain_perturbed.json"))[:n]]
    sub = os.path.join(out, "subset")
    os.makedirs(sub, exist_ok=True)
    data.update(forget_spans=_write_jsonl(os.path.join(sub, "forget_spans.jsonl"), forget),
                retain=_write_jsonl(os.path.join(sub, "retain.jsonl"), retain))
    return {"data_dir": data_dir, "forget_split": split, "paths": data,
            "pairs": {"finetuned": [(r["question"], r["answer"]) for r in forget + retain],
                      "retain": [(r["question"], r["answer"]) for r in retain]},
            "forget_spans": data["forget_spans"], "retain": data["retain"]}
