"""TOFU evaluation: data loading, prompt encoding and :func:`evaluate_model`.

The TOFU layout (one JSON object per line) that this reads from ``data_dir``:

* ``forget01_perturbed.json`` / ``forget05_...`` / ``forget10_...``: the forget set, with
  ``question``, ``answer``, ``paraphrased_answer`` and ``perturbed_answer`` (a list);
* ``retain_perturbed.json``: the 400 retain questions used for evaluation, same fields;
* ``real_authors_perturbed.json``, ``world_facts_perturbed.json``: ``question``, ``answer``
  and ``perturbed_answer`` (the wrong options).

Metric definitions: :mod:`palu_kernels.eval.metrics`.

Example (a tiny random model, two questions per split)::

    from palu_kernels.eval import evaluate_model
    result = evaluate_model(model, tokenizer, "../shared/data/tofu", "forget01",
                            max_samples=2, max_new_tokens=16)
    print(result["metrics"]["model_utility"])
"""

from __future__ import annotations

import json
import math
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ..errors import UsageError
from ..jsonio import read_json_objects
from .metrics import (
    exact_memorisation,
    extraction_strength,
    forget_quality,
    generate_greedy,
    model_utility,
    option_probability,
    rouge_l_recall,
    score_answers,
    truth_ratio,
    truth_ratio_score,
)
from .table import format_number, format_table

FORGET_SPLITS = ("forget01", "forget05", "forget10")
EVAL_SPLITS = ("forget", "retain", "real_authors", "world_facts")
# The nine Model Utility components, in TOFU's order.
UTILITY_KEYS = tuple(f"{split}_{metric}" for split in ("retain", "real_authors", "world_facts")
                     for metric in ("probability", "rouge_l_recall", "truth_ratio"))

FormatPrompt = Callable[[str], str]


# ------------------------------------------------------------------------------ data


def split_file(data_dir: str, split: str, forget_split: str = "forget01") -> str:
    """Path of the evaluation file of ``split`` (one of :data:`EVAL_SPLITS`)."""
    names = {"forget": f"{forget_split}_perturbed.json", "retain": "retain_perturbed.json",
             "real_authors": "real_authors_perturbed.json",
             "world_facts": "world_facts_perturbed.json"}
    if split not in names:
        raise ValueError(f"split: expected one of {EVAL_SPLITS}, got {split!r}")
    return os.path.join(data_dir, names[split])


def read_json_records(path: str) -> List[dict]:
    """Records of a TOFU file: JSON lines, or one JSON list of objects."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"TOFU data file not found: {path}")
    return read_json_objects(path)


def load_split(data_dir: str, split: str, forget_split: str = "forget01",
               max_samples: Optional[int] = None) -> List[dict]:
    """The first ``max_samples`` (all if ``None``) checked records of one evaluation split.

    Each record has ``question`` and ``answer`` (str), ``perturbed_answer`` (a non-empty list
    of str) and, for ``forget`` and ``retain``, ``paraphrased_answer`` (str).
    """
    if forget_split not in FORGET_SPLITS:
        raise ValueError(f"forget_split: expected one of {FORGET_SPLITS}, got {forget_split!r}")
    if max_samples is not None and (not isinstance(max_samples, int) or max_samples < 1):
        raise ValueError(f"max_samples: expected a positive integer or None, got {max_samples!r}")
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"data_dir: TOFU data directory not found: {data_dir}")
    path = split_file(data_dir, split, forget_split)
    records = read_json_records(path)
    if max_samples is not None:
        records = records[:max_samples]
    if not records:
        raise ValueError(f"{path}: no records")
    need_para = split in ("forget", "retain")
    for i, r in enumerate(records):
        where = f"{path}: record {i}"
        for key in ("question", "answer") + (("paraphrased_answer",) if need_para else ()):
            if not isinstance(r.get(key), str):
                raise ValueError(f"{where}: expected a string field {key!r}, got "
                                 f"{type(r.get(key)).__name__}")
        pert = r.get("perturbed_answer")
        if isinstance(pert, str):
            pert = [pert]
        if not (isinstance(pert, list) and pert and all(isinstance(p, str) for p in pert)):
            raise ValueError(f"{where}: expected 'perturbed_answer' to be a non-empty list of "
                             f"strings, got {pert!r}")
        r["perturbed_answer"] = pert
    return records


# ------------------------------------------------------------------------ encoding


class PromptEncoder:
    """Token ids of prompts and answers, exactly as the trainer builds them.

    Default (``format_prompt=None``): the trainer's encoding
    (:func:`palu_kernels.io.data.prompt_ids` / ``format_prompt``): the chat template
    (one user turn plus the generation prompt) when the tokenizer has one, else
    ``"Question: {question}\\nAnswer:"`` after BOS, with the answer following after one space.
    With a ``format_prompt`` callable: its text, tokenized with the tokenizer's usual special
    tokens (BOS), and the answer tokenized as is. In both cases the answer is tokenized
    without special tokens and closed by EOS, and the answer tokens (EOS included) are what
    the metrics score.
    """

    def __init__(self, tokenizer, format_prompt: Optional[FormatPrompt] = None):
        self.tokenizer = tokenizer
        self.custom_format = format_prompt
        self.use_chat = format_prompt is None and bool(getattr(tokenizer, "chat_template", None))
        eos = tokenizer.eos_token_id
        if eos is None:
            raise ValueError("tokenizer: expected an eos_token_id (answers end with EOS), got None")
        self.eos_token_id = int(eos)
        pad = tokenizer.pad_token_id
        self.pad_token_id = int(pad) if pad is not None else self.eos_token_id
        self._prompts: Dict[str, Tuple[List[int], str]] = {}
        self._answers: Dict[Tuple[str, str], List[int]] = {}

    @property
    def prompt_format(self) -> str:
        return ("custom format_prompt" if self.custom_format is not None else
                "chat template" if self.use_chat else "trainer plain template")

    def _prompt(self, question: str) -> Tuple[List[int], str]:
        if question not in self._prompts:
            if self.custom_format is not None:
                text = self.custom_format(question)
                ids = self.tokenizer(text, add_special_tokens=True)["input_ids"]
                self._prompts[question] = (list(ids), "")
            else:
                from ..io.data import format_prompt, prompt_ids

                prefix = format_prompt(self.tokenizer, question)[1]
                self._prompts[question] = (list(prompt_ids(self.tokenizer, question)), prefix)
        return self._prompts[question]

    def prompt_ids(self, question: str) -> List[int]:
        return self._prompt(question)[0]

    def answer_ids(self, question: str, answer: str) -> List[int]:
        prefix = self._prompt(question)[1]
        key = (prefix, answer)
        if key not in self._answers:
            ids = self.tokenizer(prefix + answer, add_special_tokens=False)["input_ids"]
            self._answers[key] = list(ids) + [self.eos_token_id]
        return self._answers[key]

    def pair(self, question: str, answer: str) -> Tuple[List[int], List[int]]:
        return self.prompt_ids(question), self.answer_ids(question, answer)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True).strip()


# ------------------------------------------------------------------------ evaluation


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values))


def _stop_ids(model, encoder: PromptEncoder) -> List[int]:
    """The tokenizer's EOS plus the model's generation-config EOS ids (e.g. an end-of-turn
    token of a chat model): generation stops at any of them."""
    ids = [encoder.eos_token_id]
    extra = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(extra, int):
        extra = [extra]
    for e in extra or []:
        if int(e) not in ids:
            ids.append(int(e))
    return ids


def evaluate_split(model, encoder: PromptEncoder, records: Sequence[dict], split: str, *,
                   batch_size: int = 8, max_new_tokens: int = 200, generate: bool = True,
                   max_generate: Optional[int] = None, progress: bool = True) -> dict:
    """Per-question values and aggregate metrics of one split (see module docstring).

    ``generate=False`` skips greedy generation (and ROUGE): used for the retain model, of
    which only the forget-set truth ratios are needed. ``max_generate``: generate (and score
    ROUGE) for only the first that many questions; probabilities and truth ratios still cover
    every record (ROUGE is the expensive part of an evaluation on a CPU).
    """
    if max_generate is not None and (isinstance(max_generate, bool)
                                     or not isinstance(max_generate, int) or max_generate < 1):
        raise ValueError(f"max_generate: expected a positive integer or None, got "
                         f"{max_generate!r}")
    if split not in EVAL_SPLITS:
        raise ValueError(f"split: expected one of {EVAL_SPLITS}, got {split!r}")
    options = split in ("real_authors", "world_facts")
    # One flat list of (prompt, answer) pairs: answer, [paraphrase,] perturbed..., per record.
    pairs, spans = [], []
    for r in records:
        start = len(pairs)
        pairs.append(encoder.pair(r["question"], r["answer"]))
        if not options:
            pairs.append(encoder.pair(r["question"], r["paraphrased_answer"]))
        pairs.extend(encoder.pair(r["question"], p) for p in r["perturbed_answer"])
        spans.append((start, len(pairs)))
    scores = score_answers(model, pairs, pad_token_id=encoder.pad_token_id,
                           batch_size=batch_size, desc=f"{split}: scoring", progress=progress)
    generations = None
    if generate:
        gen_records = list(records[:max_generate] if max_generate else records)
        gen_ids = generate_greedy(model, [encoder.prompt_ids(r["question"]) for r in gen_records],
                                  pad_token_id=encoder.pad_token_id,
                                  eos_token_id=_stop_ids(model, encoder),
                                  max_new_tokens=max_new_tokens, batch_size=batch_size,
                                  desc=f"{split}: generating", progress=progress)
        generations = [encoder.decode(g) for g in gen_ids]
        rouges = rouge_l_recall(generations, [r["answer"] for r in gen_records])

    per_question = []
    for qi, (r, (a, b)) in enumerate(zip(records, spans)):
        gold = scores[a]
        base = gold if options else scores[a + 1]
        pert = scores[a + (1 if options else 2):b]
        ratio = truth_ratio(base.avg_nll, [s.avg_nll for s in pert])
        item = {"index": qi, "question": r["question"], "answer": r["answer"],
                "answer_tokens": gold.n_tokens, "avg_nll": gold.avg_nll,
                "probability": gold.probability,
                "truth_ratio": ratio,
                "base_probability": base.probability,
                "perturbed_probabilities": [s.probability for s in pert]}
        if options:
            item["option_probability"] = option_probability(gold.avg_nll,
                                                            [s.avg_nll for s in pert])
        if split == "forget":
            item["exact_memorisation"] = exact_memorisation(gold.correct)
            item["extraction_strength"] = extraction_strength(gold.correct)
        if generations is not None and qi < len(generations):
            item["generation"] = generations[qi]
            item["rouge_l_recall"] = rouges[qi]
        per_question.append(item)

    ratios = [q["truth_ratio"] for q in per_question]
    prob_key = "option_probability" if options else "probability"
    metrics = {"n": len(per_question),
               "probability": _mean([q[prob_key] for q in per_question]),
               "truth_ratio": truth_ratio_score(ratios, forget=(split == "forget"))}
    if generations is not None:
        metrics["rouge_l_recall"] = _mean(rouges)
        metrics["n_generated"] = len(rouges)
    if split == "forget":
        metrics["exact_memorisation"] = _mean([q["exact_memorisation"] for q in per_question])
        metrics["extraction_strength"] = _mean([q["extraction_strength"] for q in per_question])
    return {"metrics": metrics, "per_question": per_question, "truth_ratios": ratios}


def forget_truth_ratios(model, tokenizer, data_dir: str, forget_split: str, *,
                        max_samples: Optional[int] = None, batch_size: int = 8,
                        format_prompt: Optional[FormatPrompt] = None,
                        progress: bool = True) -> List[float]:
    """Per-question forget-set truth ratios ``R`` of ``model`` (e.g. the retain model).

    No generation: this is all Forget Quality needs from the retain model.
    """
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        records = load_split(data_dir, "forget", forget_split, max_samples)
        out = evaluate_split(model, PromptEncoder(tokenizer, format_prompt), records, "forget",
                             batch_size=batch_size, generate=False, progress=progress)
    finally:
        model.train(was_training)
    return out["truth_ratios"]


def evaluate_model(model, tokenizer, data_dir: str, forget_split: str = "forget01", *,
                   max_samples=None, batch_size: int = 8,
                   max_new_tokens: int = 200, format_prompt: Optional[FormatPrompt] = None,
                   retain_truth_ratios: Optional[Sequence[float]] = None,
                   max_generate: Optional[int] = None, progress: bool = True) -> dict:
    """Evaluate ``model`` on TOFU: forget, retain, real-authors and world-facts splits.

    Args:
        model: a causal LM (``model(input_ids, attention_mask).logits`` and ``generate``),
            already on its device; it is put in eval mode and restored afterwards.
        tokenizer: its tokenizer (needs ``eos_token_id``; ``pad_token_id`` defaults to EOS).
        data_dir: a TOFU directory (see module docstring).
        forget_split: ``"forget01"``, ``"forget05"`` or ``"forget10"``.
        max_samples: evaluate only the first ``max_samples`` questions of each split (an
            int), or of the splits named in a dict (``{"retain": 100}``; others whole).
        batch_size: sequences per forward pass / generation batch.
        max_new_tokens: the generation limit for ROUGE (TOFU answers stay under ~150 tokens).
        format_prompt: ``question -> prompt text``; default: the chat template when the
            tokenizer has one, else the trainer's plain template (:class:`PromptEncoder`).
        max_generate: generate answers (ROUGE) for only the first that many questions of
            each split; probabilities and truth ratios still use every question.
        retain_truth_ratios: the retain model's forget-set truth ratios (e.g. from
            :func:`forget_truth_ratios` or a previous result's ``"forget_truth_ratios"``);
            when given, Forget Quality is computed, otherwise it is ``None``.

    Returns:
        ``{"config", "metrics", "forget_truth_ratios", "per_question"}``. ``metrics`` holds
        ``forget_quality``, ``model_utility``, ``model_utility_components`` (the nine values)
        and one dict per split (``probability``, ``rouge_l_recall``, ``truth_ratio``; plus
        ``exact_memorisation`` and ``extraction_strength`` for the forget set).
    """
    if isinstance(max_samples, dict):
        unknown = sorted(set(max_samples) - set(EVAL_SPLITS))
        if unknown:
            raise ValueError(f"max_samples: unknown split(s) {unknown}; expected keys of "
                             f"{EVAL_SPLITS}")
        per_split = {s: max_samples.get(s) for s in EVAL_SPLITS}
    else:
        per_split = {s: max_samples for s in EVAL_SPLITS}
    records = {s: load_split(data_dir, s, forget_split, per_split[s]) for s in EVAL_SPLITS}
    if retain_truth_ratios is not None:  # before the work, not after it
        check_retain_ratios(retain_truth_ratios, len(records["forget"]))
    encoder = PromptEncoder(tokenizer, format_prompt)
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        results = {s: evaluate_split(model, encoder, records[s], s, batch_size=batch_size,
                                     max_new_tokens=max_new_tokens, max_generate=max_generate,
                                     progress=progress)
                   for s in EVAL_SPLITS}
    finally:
        model.train(was_training)

    components = {f"{s}_{m}": results[s]["metrics"][m] for s in ("retain", "real_authors",
                                                                 "world_facts")
                  for m in ("probability", "rouge_l_recall", "truth_ratio")}
    components = {k: components[k] for k in UTILITY_KEYS}
    fq = None
    if retain_truth_ratios is not None:
        check_retain_ratios(retain_truth_ratios, len(records["forget"]))
        fq = forget_quality(results["forget"]["truth_ratios"], retain_truth_ratios)
    metrics = {"forget_quality": fq, "model_utility": model_utility(list(components.values())),
               "model_utility_components": components}
    metrics.update({s: results[s]["metrics"] for s in EVAL_SPLITS})
    config = {"forget_split": forget_split, "data_dir": os.path.abspath(data_dir),
              "max_samples": max_samples, "batch_size": batch_size,
              "max_new_tokens": max_new_tokens, "max_generate": max_generate,
              "prompt_format": encoder.prompt_format,
              "n_retain_truth_ratios": (None if retain_truth_ratios is None
                                        else len(retain_truth_ratios))}
    return {"config": config, "metrics": metrics,
            "forget_truth_ratios": results["forget"]["truth_ratios"],
            "per_question": {s: results[s]["per_question"] for s in EVAL_SPLITS}}


def _fmt(x) -> str:
    return format_number(x)


def summary_markdown(result: dict, title: str = "TOFU evaluation") -> str:
    """A markdown summary (headline metrics, then one row per split) of a result dict."""
    m, cfg = result["metrics"], result["config"]
    headline = [["Forget Quality (KS p-value)", _fmt(m["forget_quality"])],
                ["Model Utility (harmonic mean of 9)", _fmt(m["model_utility"])],
                ["forget exact memorisation", _fmt(m["forget"]["exact_memorisation"])],
                ["forget extraction strength", _fmt(m["forget"]["extraction_strength"])]]
    splits = [[s, str(m[s]["n"]), _fmt(m[s]["probability"]), _fmt(m[s].get("rouge_l_recall")),
               _fmt(m[s]["truth_ratio"])] for s in EVAL_SPLITS]
    lines = [f"# {title}", "",
             f"Forget split: `{cfg['forget_split']}`, max samples per split: "
             f"{cfg['max_samples'] or 'all'}, prompt: {cfg['prompt_format']}.", "",
             format_table(["metric", "value"], headline), "",
             format_table(["split", "n", "probability", "ROUGE-L recall", "truth ratio"], splits)]
    lines += ["", "Truth ratio: mean min(R, 1/R) on forget (1 = cannot tell), mean "
              "max(0, 1 - R) elsewhere (higher = prefers the truth). Probability on real "
              "authors and world facts: P(correct) / (P(correct) + sum P(wrong options)). Model "
              "Utility: harmonic mean of the retain, real-authors and world-facts rows (0 when "
              "any of the nine is 0)."]
    if m["forget_quality"] is None:
        lines += ["", "Forget Quality needs the retain model (or the eval.json of its "
                  "evaluation)."]
    return "\n".join(lines) + "\n"


def check_output_dir(output_dir: str) -> None:
    """A :class:`~palu_kernels.errors.UsageError` on ``output_dir`` when it (or a parent)
    exists and is not a directory: checked before an evaluation, not after it."""
    path = os.path.abspath(output_dir)
    while path and not os.path.exists(path):
        path = os.path.dirname(path)
    if path and not os.path.isdir(path):
        raise UsageError("output_dir", f"{output_dir!r}: {path!r} exists and is not a directory")


def check_retain_ratios(ratios: Sequence[float], n_forget: int, source: str = "") -> None:
    """The retain model's forget truth ratios must be finite and one per forget question (a
    :class:`~palu_kernels.errors.UsageError` naming ``source``, e.g. the retain result file)."""
    where = f"{source}: " if source else "retain_truth_ratios: "
    if len(ratios) != n_forget:
        raise UsageError(None, f"{where}{len(ratios)} retain truth ratios, but the forget set "
                               f"has {n_forget} questions (another `max_samples` or forget "
                               "split?)")
    bad = [i for i, x in enumerate(ratios) if not math.isfinite(float(x))]
    if bad:
        raise UsageError(None, f"{where}{len(bad)} of {len(ratios)} retain truth ratios are "
                               f"not finite (e.g. index {bad[0]}: {ratios[bad[0]]})")


def write_result(result: dict, output_dir: str, title: str = "TOFU evaluation"
                 ) -> Tuple[str, str]:
    """Write ``eval.json`` (the whole result) and ``eval.md`` (:func:`summary_markdown`),
    each atomically (:func:`palu_kernels.outputs.atomic_write_text`); ``eval.json`` last."""
    from ..outputs import atomic_write_json, atomic_write_text

    check_output_dir(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    json_path = os.path.join(output_dir, "eval.json")
    md_path = os.path.join(output_dir, "eval.md")
    atomic_write_text(md_path, summary_markdown(result, title=title))
    atomic_write_json(json_path, result, indent=1, ensure_ascii=False)
    return json_path, md_path


__all__ = ["EVAL_SPLITS", "FORGET_SPLITS", "PromptEncoder", "UTILITY_KEYS",
           "check_output_dir", "check_retain_ratios", "evaluate_model", "evaluate_split",
           "forget_truth_ratios",
           "load_split", "read_json_records", "split_file", "summary_markdown",
           "write_result"]



def load_eval_model(path: str, device=None, dtype: str = "auto",
                    tokenizer_path: Optional[str] = None):
    """``(model, tokenizer)`` for evaluation from local directories, in eval mode on ``device``
    (:func:`palu_kernels.io.models.load_model_and_tokenizer`; ``FileNotFoundError`` for a
    missing directory)."""
    from ..io.models import load_model_and_tokenizer

    if not os.path.isdir(path):
        raise FileNotFoundError(f"model directory not found: {path}")
    tok_path = tokenizer_path or path
    if not os.path.isdir(tok_path):
        raise FileNotFoundError(f"tokenizer directory not found: {tok_path}")
    return load_model_and_tokenizer(path, tokenizer_source=tok_path, pad_with_eos=False,
                                    dtype=dtype, device=device, eval_mode=True)


def read_retain_result(path: str, forget_split: str) -> List[float]:
    """``forget_truth_ratios`` of the ``eval.json`` of a previous evaluation of the retain
    model (a :class:`~palu_kernels.errors.UsageError` on ``retain_result``)."""
    def bad(message: str) -> UsageError:
        return UsageError("retain_result", f"retain_result: {message}")

    if not os.path.isfile(path):
        raise bad(f"file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise bad(f"{path} is not JSON ({e}); expected the eval.json written by "
                  "palu-eval") from None
    ratios = data.get("forget_truth_ratios") if isinstance(data, dict) else None
    if not isinstance(ratios, list) or not ratios:
        raise bad(f"{path} has no 'forget_truth_ratios' list (expected the eval.json written "
                  "by palu-eval)")
    got = (data.get("config") or {}).get("forget_split")
    if got is not None and got != forget_split:
        raise bad(f"{path} was computed on {got!r}, but `forget_split` is {forget_split!r}")
    out = []
    for i, x in enumerate(ratios):
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
            raise bad(f"{path}: forget_truth_ratios[{i}] is {x!r}, expected a finite number")
        out.append(float(x))
    return out
