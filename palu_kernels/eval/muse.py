"""MUSE evaluation (the News corpus): VerbMem, KnowMem, PrivLeak and utility preservation.

The metrics follow MUSE (Shi et al., 2024, "Machine Unlearning Six-Way Evaluation for
Language Models") as its evaluation code defines them; this docstring is their definition
in this project (``palu-eval --benchmark muse``, :mod:`palu_kernels.cli.eval_muse`).
The layout read from ``data_dir`` (JSON lists, as MUSE publishes them):

* ``verbmem/forget.json``: ``{"prompt", "gt"}``, a forget-set prefix and its true
  continuation;
* ``knowmem/forget_qa.json``, ``knowmem/retain2_qa.json``: ``{"question", "answer"}``, with
  their in-context examples ``knowmem/forget_qa_icl.json`` / ``knowmem/retain2_qa_icl.json``;
* ``privleak/forget.json``, ``privleak/holdout.json``: passages (strings), members (seen in
  training) and non-members (never seen).

Definitions (``n`` items, each averaged with equal weight), MUSE's own conventions (checked
against muse_bench's ``verbmem``/``knowmem``/``privleak`` scripts; ``tests/test_eval_muse.py``
compares each with a direct transcription of MUSE's formula):

* **VerbMem** = mean ROUGE-L F1 (no stemming) of the greedy continuation of each prompt
  against its ``gt``. As MUSE cuts it, the reference is the ``gt`` tokenized *with* the
  tokenizer's special tokens (BOS), cut to its first ``verbmem_max_new_tokens`` tokens (MUSE:
  128, BOS included) and decoded without them; the continuation is limited to as many new
  tokens.
* **KnowMem** (forget and retain) = mean ROUGE-L F1 (no stemming) of the greedy answer
  against the gold answer. The prompt is the in-context examples then the question, each as
  ``"Question: {q}\\nAnswer: {a}\\n\\n"`` and ending ``"Question: {q}\\nAnswer: "``, tokenized
  with the tokenizer's special tokens (BOS); at most ``knowmem_max_new_tokens`` (MUSE: 32) new
  tokens, and the answer is cut before the first ``"\\n\\n"``, ``"\\nQuestion"`` or
  ``"Question:"``.
* **Min-K% score** of a passage (K = 40%): its tokens (BOS first) are scored by the model
  (log p of each token after the first given the ones before); the score is the mean of the
  ``floor(0.4 * m)`` lowest of those ``m`` log-probabilities (at least one: MUSE's mean of
  an empty slice is NaN for passages of fewer than 3 tokens, which MUSE News never has).
  Higher = the model finds even the passage's hardest tokens likely. (MUSE stores the
  negated value, ``Min-40%``, and ranks passages by its negation: the same ranking.)
* **AUC** (MUSE's ``forget_holdout_Min-40%``) = the area under the ROC curve of the Min-K%
  score with the **forget passages labelled 0 and the holdout passages labelled 1**: the
  probability that a random *holdout* passage scores above a random *forget* passage, ties
  counting one half. A model that never saw either set sits near 0.5; a model that memorised
  the forget set finds its passages likelier than never-seen ones, and its AUC goes to 0.
* **PrivLeak** = ``(AUC - AUC_retrain) / AUC_retrain * 100`` in that AUC, with
  ``AUC_retrain`` the same AUC of the retrained model (never trained on the forget set). 0 is
  ideal. An un-unlearned (memorising) model reads near **-100** (AUC near 0); a *positive*
  value = over-unlearned (forget passages now look *less* familiar than never-seen ones,
  which also leaks).
* **Utility** = KnowMem on retain, absolute (MUSE's utility preservation criterion reports
  this number, not a ratio). As an extra column that is **not** a MUSE metric,
  ``knowmem_retain_vs_target`` = ``KnowMem_retain(model) / KnowMem_retain(target) * 100``
  (``None`` without the target, or when the target's KnowMem on retain is 0).

MUSE's own tables print VerbMem, KnowMem and utility multiplied by 100; here they stay in
[0, 1] (the same numbers divided by 100). PrivLeak is a percentage in both.

Results written before these conventions (AUC with forget as the positive class, PrivLeak
of the opposite sign, utility as a ratio) carry no ``config.conventions`` entry and are
refused as references (:func:`palu_kernels.eval.muse_files.read_muse_result`). The data
files and the result files: :mod:`palu_kernels.eval.muse_files`.

Sequences longer than the model's context (``config.max_position_embeddings``) are cut:
prompts keep their *last* tokens (room is left for the new tokens; in-context examples go
first), passages their *first* tokens. How many were cut is in the result's ``config``.

Example::

    from palu_kernels.eval.muse import evaluate_muse
    result = evaluate_muse(model, tokenizer, "../shared/data/muse_news", max_samples=4)
    print(result["metrics"]["verbmem_forget"], result["metrics"]["privleak_auc"])
"""

from __future__ import annotations

import math
import os
from typing import List, Optional, Sequence, Tuple

import torch

from .metrics import (check_batch_size, generate_greedy, index_batches, logits_of, model_device,
                      progress_iter, rouge_l_f1)
from .muse_files import CONVENTIONS, MuseData, load_muse

__all__ = ["KNOWMEM_MAX_NEW_TOKENS", "MIN_K_FRACTION", "VERBMEM_MAX_NEW_TOKENS", "auc_score",
           "evaluate_muse", "knowmem_prompt", "knowmem_retain_vs_target", "min_k_score",
           "passage_log_probs", "priv_leak", "truncate_answer", "verbmem_reference"]

MIN_K_FRACTION = 0.4
VERBMEM_MAX_NEW_TOKENS = 128
KNOWMEM_MAX_NEW_TOKENS = 32
ANSWER_STOPS = ("\n\n", "\nQuestion", "Question:")
# --------------------------------------------------------------------------- pure metrics


def min_k_score(log_probs: Sequence[float], fraction: float = MIN_K_FRACTION) -> float:
    """Mean of the ``max(1, floor(fraction * m))`` lowest of ``m`` token log-probabilities.

    >>> min_k_score([-1.0, -4.0, -2.0, -3.0, -0.5], 0.4)  # the 2 lowest: -4, -3
    -3.5
    """
    vals = sorted(float(x) for x in log_probs)
    if not vals:
        raise ValueError("log_probs: expected at least one scored token, got none")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction: expected a value in (0, 1], got {fraction!r}")
    if any(math.isnan(v) for v in vals):
        raise ValueError("log_probs: got NaN log-probabilities")
    k = max(1, int(len(vals) * fraction))
    return sum(vals[:k]) / k


def auc_score(forget_scores: Sequence[float], holdout_scores: Sequence[float]) -> float:
    """MUSE's forget-vs-holdout ROC AUC of the Min-K% ``score``: forget labelled 0, holdout
    labelled 1, i.e. ``P(holdout > forget) + 0.5 P(tie)`` (near 0 when the forget passages are
    memorised, 0.5 when the model cannot tell them from never-seen ones).

    >>> auc_score([3.0, 2.0], [1.0, 2.0])  # holdout above forget: no pair; one tie 2 = 2
    0.125
    """
    forget = [float(x) for x in forget_scores]
    holdout = [float(x) for x in holdout_scores]
    if not forget or not holdout:
        raise ValueError(f"auc_score: expected non-empty samples, got {len(forget)} forget and "
                         f"{len(holdout)} holdout scores")
    if any(math.isnan(v) for v in forget + holdout):
        raise ValueError("auc_score: got NaN scores")
    # rank-sum (Mann-Whitney) form of the positive class (holdout), O((n + m) log(n + m)):
    # average ranks of tied values
    both = sorted([(v, 1) for v in holdout] + [(v, 0) for v in forget])
    rank_sum, i = 0.0, 0
    while i < len(both):
        j = i
        while j < len(both) and both[j][0] == both[i][0]:
            j += 1
        avg_rank = (i + 1 + j) / 2.0  # ranks i+1 .. j
        rank_sum += avg_rank * sum(1 for _, is_pos in both[i:j] if is_pos)
        i = j
    n, m = len(holdout), len(forget)
    return (rank_sum - n * (n + 1) / 2.0) / (n * m)


def priv_leak(auc: float, auc_retrain: float) -> float:
    """MUSE's PrivLeak, ``(auc - auc_retrain) / auc_retrain * 100`` (percent) in MUSE's AUC
    (:func:`auc_score`): 0 = like the retrained model, near -100 = the forget set is still
    memorised, positive = over-unlearned.

    >>> priv_leak(0.0, 0.5)  # a memorising model against a retrained one at chance
    -100.0
    """
    if not auc_retrain > 0:
        raise ValueError(f"auc_retrain: expected a positive AUC, got {auc_retrain!r} (MUSE's "
                         "PrivLeak divides by the retrained model's AUC)")
    return (float(auc) - float(auc_retrain)) / float(auc_retrain) * 100.0


def knowmem_retain_vs_target(knowmem_retain: float, knowmem_retain_target: float) -> float:
    """``knowmem_retain / knowmem_retain_target * 100``: the percent of the target's retain
    KnowMem kept. An extra column, not a MUSE metric (MUSE's utility is the absolute
    KnowMem on retain).

    >>> knowmem_retain_vs_target(0.25, 0.5)
    50.0
    """
    if not knowmem_retain_target > 0:
        raise ValueError("knowmem_retain_target: the target model's KnowMem on retain is "
                         f"{knowmem_retain_target!r}; the ratio to it is undefined")
    return float(knowmem_retain) / float(knowmem_retain_target) * 100.0


def truncate_answer(text: str, stops: Sequence[str] = ANSWER_STOPS) -> str:
    """``text`` up to the first of each stop string in turn (MUSE's answer cut).

    >>> truncate_answer("1472\\n\\nQuestion: next")
    '1472'
    """
    for s in stops:
        text = text.split(s)[0]
    return text


def knowmem_prompt(question: str, icl: Sequence[dict]) -> str:
    """MUSE's few-shot prompt: each example ``"Question: {q}\\nAnswer: {a}\\n\\n"``, then
    ``"Question: {question}\\nAnswer: "``."""
    head = "".join(f"Question: {e['question']}\nAnswer: {e['answer']}\n\n" for e in icl)
    return head + f"Question: {question}\nAnswer: "


# ------------------------------------------------------------------------ model scoring


def _context(model) -> Optional[int]:
    n = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return int(n) if isinstance(n, int) and n > 1 else None


@torch.no_grad()
def passage_log_probs(model, sequences: Sequence[Sequence[int]], *, pad_token_id: int,
                      batch_size: int = 8, desc: str = "scoring",
                      progress: bool = True) -> List[List[float]]:
    """Per sequence, ``log p(x_t | x_<t)`` of tokens ``1 .. len - 1`` (fp32; right padding,
    masked; results in input order)."""
    check_batch_size(batch_size)
    for i, s in enumerate(sequences):
        if len(s) < 2:
            raise ValueError(f"sequences[{i}]: expected at least 2 tokens (one to score), "
                             f"got {len(s)}")
    device = model_device(model)
    order = sorted(range(len(sequences)), key=lambda i: (-len(sequences[i]), i))
    out: List[Optional[List[float]]] = [None] * len(sequences)
    n_batches = (len(order) + batch_size - 1) // batch_size
    for idx in progress_iter(index_batches(order, batch_size), desc, n_batches, progress):
        width = max(len(sequences[i]) for i in idx)
        ids = torch.full((len(idx), width), int(pad_token_id), dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, :len(sequences[i])] = torch.tensor(list(sequences[i]), dtype=torch.long)
            mask[row, :len(sequences[i])] = 1
        ids, mask = ids.to(device), mask.to(device)
        logits = logits_of(model(input_ids=ids, attention_mask=mask))
        for row, i in enumerate(idx):
            n = len(sequences[i])
            z = logits[row, :n - 1].float()
            lp = z.gather(-1, ids[row, 1:n, None]).squeeze(-1) - torch.logsumexp(z, dim=-1)
            out[i] = lp.tolist()
    return out  # type: ignore[return-value]


def _encode(tokenizer, text: str, special: bool) -> List[int]:
    return list(tokenizer(text, add_special_tokens=special, verbose=False)["input_ids"])


def _generate(model, tokenizer, prompts: List[List[int]], max_new_tokens: int,
              batch_size: int, desc: str, progress: bool) -> List[str]:
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    stop = [] if eos is None else [int(eos)]
    extra = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for e in ([extra] if isinstance(extra, int) else (extra or [])):
        if int(e) not in stop:
            stop.append(int(e))
    ids = generate_greedy(model, prompts, pad_token_id=int(pad), eos_token_id=stop,
                          max_new_tokens=max_new_tokens, batch_size=batch_size, desc=desc,
                          progress=progress)
    return [tokenizer.decode(g, skip_special_tokens=True) for g in ids]


def _cut_left(ids: List[int], keep: Optional[int]) -> Tuple[List[int], bool]:
    if keep is None or len(ids) <= keep:
        return ids, False
    return ids[len(ids) - keep:], True


def _mean(xs: Sequence[float]) -> float:
    return float(sum(xs) / len(xs))


def verbmem_reference(tokenizer, gt: str, max_new_tokens: int = VERBMEM_MAX_NEW_TOKENS) -> str:
    """VerbMem's reference as MUSE cuts it: ``gt`` tokenized with the special tokens (BOS),
    its first ``max_new_tokens`` tokens (BOS counts), decoded without special tokens."""
    return tokenizer.decode(_encode(tokenizer, gt, True)[:max_new_tokens],
                            skip_special_tokens=True)


def evaluate_verbmem(model, tokenizer, items: Sequence[dict], *,
                     max_new_tokens: int = VERBMEM_MAX_NEW_TOKENS, batch_size: int = 8,
                     progress: bool = True) -> dict:
    """VerbMem of ``items`` (``{"prompt", "gt"}``): ``{"score", "per_item", "n_cut"}``."""
    ctx = _context(model)
    keep = None if ctx is None else max(1, ctx - max_new_tokens)
    prompts, n_cut = [], 0
    for r in items:
        ids, cut = _cut_left(_encode(tokenizer, r["prompt"], True), keep)
        prompts.append(ids)
        n_cut += cut
    outputs = _generate(model, tokenizer, prompts, max_new_tokens, batch_size,
                        "verbmem: generating", progress)
    gts = [verbmem_reference(tokenizer, r["gt"], max_new_tokens) for r in items]
    scores = rouge_l_f1(outputs, gts)
    per = [{"index": i, "gt": g, "output": o, "rouge_l_f1": s}
           for i, (g, o, s) in enumerate(zip(gts, outputs, scores))]
    return {"score": _mean(scores), "per_item": per, "n_cut": n_cut}


def evaluate_knowmem(model, tokenizer, items: Sequence[dict], icl: Sequence[dict], *,
                     max_new_tokens: int = KNOWMEM_MAX_NEW_TOKENS, batch_size: int = 8,
                     desc: str = "knowmem", progress: bool = True) -> dict:
    """KnowMem of ``items`` (``{"question", "answer"}``) with the in-context examples ``icl``:
    ``{"score", "per_item", "n_cut"}``."""
    ctx = _context(model)
    keep = None if ctx is None else max(1, ctx - max_new_tokens)
    prompts, n_cut = [], 0
    for r in items:
        ids, cut = _cut_left(_encode(tokenizer, knowmem_prompt(r["question"], icl), True), keep)
        prompts.append(ids)
        n_cut += cut
    outputs = [truncate_answer(o) for o in _generate(model, tokenizer, prompts, max_new_tokens,
                                                     batch_size, f"{desc}: generating",
                                                     progress)]
    scores = rouge_l_f1(outputs, [r["answer"] for r in items])
    per = [{"index": i, "question": r["question"], "answer": r["answer"], "output": o,
            "rouge_l_f1": s} for i, (r, o, s) in enumerate(zip(items, outputs, scores))]
    return {"score": _mean(scores), "per_item": per, "n_cut": n_cut}


def min_k_scores(model, tokenizer, passages: Sequence[str], *,
                 fraction: float = MIN_K_FRACTION, batch_size: int = 8, desc: str = "min-k",
                 progress: bool = True) -> Tuple[List[float], int]:
    """Min-K% scores of ``passages`` (BOS + text, cut to the model's context) and how many
    were cut."""
    ctx = _context(model)
    seqs, n_cut = [], 0
    for text in passages:
        ids = _encode(tokenizer, text, True)
        if ctx is not None and len(ids) > ctx:
            ids, n_cut = ids[:ctx], n_cut + 1
        if len(ids) < 2:
            raise ValueError(f"passage {text[:40]!r}: fewer than 2 tokens, nothing to score")
        seqs.append(ids)
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    lps = passage_log_probs(model, seqs, pad_token_id=int(pad), batch_size=batch_size,
                            desc=desc, progress=progress)
    return [min_k_score(lp, fraction) for lp in lps], n_cut


def privleak_scores(model, tokenizer, data: MuseData, *, batch_size: int = 8,
                    progress: bool = True) -> dict:
    """Min-K% scores of the forget and holdout passages and their AUC (no generation: all
    the retrained model is needed for)."""
    forget, cut_f = min_k_scores(model, tokenizer, data.privleak_forget, batch_size=batch_size,
                                 desc="privleak forget: scoring", progress=progress)
    holdout, cut_h = min_k_scores(model, tokenizer, data.privleak_holdout,
                                  batch_size=batch_size, desc="privleak holdout: scoring",
                                  progress=progress)
    return {"auc": auc_score(forget, holdout), "forget": forget, "holdout": holdout,
            "n_cut": cut_f + cut_h}


def _in_eval(model, fn):
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        return fn()
    finally:
        model.train(was_training)


def evaluate_muse(model, tokenizer, data_dir: str, *, max_samples: Optional[int] = None,
                  batch_size: int = 8, verbmem_max_new_tokens: int = VERBMEM_MAX_NEW_TOKENS,
                  knowmem_max_new_tokens: int = KNOWMEM_MAX_NEW_TOKENS,
                  retain_auc: Optional[float] = None,
                  target_knowmem_retain: Optional[float] = None,
                  progress: bool = True) -> dict:
    """The four MUSE metrics of ``model`` (see the module docstring).

    ``retain_auc``: the retrained model's forget-vs-holdout AUC in MUSE's convention
    (PrivLeak is ``None`` without it); ``target_knowmem_retain``: the target model's KnowMem
    on retain (the extra ``knowmem_retain_vs_target`` column is ``None`` without it, and when
    it is 0). Returns ``{"config", "metrics", "min_k", "per_item"}``; ``metrics`` holds
    ``verbmem_forget``, ``knowmem_forget``, ``knowmem_retain``, ``privleak_auc``,
    ``privleak``, ``utility`` (= ``knowmem_retain``, MUSE's utility), ``knowmem_retain_vs_target``
    (and the references used).
    """
    for name, v in (("verbmem_max_new_tokens", verbmem_max_new_tokens),
                    ("knowmem_max_new_tokens", knowmem_max_new_tokens)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: expected a positive integer, got {v!r}")
    data = load_muse(data_dir, max_samples)
    kw = dict(batch_size=batch_size, progress=progress)

    def run():
        verb = evaluate_verbmem(model, tokenizer, data.verbmem,
                                max_new_tokens=verbmem_max_new_tokens, **kw)
        kf = evaluate_knowmem(model, tokenizer, data.knowmem_forget, data.knowmem_forget_icl,
                              max_new_tokens=knowmem_max_new_tokens, desc="knowmem forget", **kw)
        kr = evaluate_knowmem(model, tokenizer, data.knowmem_retain, data.knowmem_retain_icl,
                              max_new_tokens=knowmem_max_new_tokens, desc="knowmem retain", **kw)
        pl = privleak_scores(model, tokenizer, data, **kw)
        return verb, kf, kr, pl

    verb, kf, kr, pl = _in_eval(model, run)
    metrics = {
        "verbmem_forget": verb["score"], "knowmem_forget": kf["score"],
        "knowmem_retain": kr["score"], "privleak_auc": pl["auc"],
        "privleak": None if retain_auc is None else priv_leak(pl["auc"], retain_auc),
        "utility": kr["score"],
        "knowmem_retain_vs_target": (None if not target_knowmem_retain else
                                     knowmem_retain_vs_target(kr["score"],
                                                              target_knowmem_retain)),
        "retain_auc": retain_auc, "target_knowmem_retain": target_knowmem_retain,
    }
    config = {"benchmark": "muse", "conventions": CONVENTIONS,
              "data_dir": os.path.abspath(data_dir),
              "max_samples": max_samples, "batch_size": batch_size,
              "verbmem_max_new_tokens": verbmem_max_new_tokens,
              "knowmem_max_new_tokens": knowmem_max_new_tokens,
              "min_k_fraction": MIN_K_FRACTION, "context": _context(model),
              "n": {"verbmem": len(data.verbmem), "knowmem_forget": len(data.knowmem_forget),
                    "knowmem_retain": len(data.knowmem_retain),
                    "privleak_forget": len(data.privleak_forget),
                    "privleak_holdout": len(data.privleak_holdout)},
              "n_cut": {"verbmem_prompts": verb["n_cut"], "knowmem_forget_prompts": kf["n_cut"],
                        "knowmem_retain_prompts": kr["n_cut"], "privleak_passages": pl["n_cut"]}}
    return {"config": config, "metrics": metrics,
            "min_k": {"forget": pl["forget"], "holdout": pl["holdout"]},
            "per_item": {"verbmem": verb["per_item"], "knowmem_forget": kf["per_item"],
                         "knowmem_retain": kr["per_item"]}}


def retain_model_auc(model, tokenizer, data_dir: str, *, max_samples: Optional[int] = None,
                     batch_size: int = 8, progress: bool = True) -> float:
    """The retrained model's forget-vs-holdout AUC in MUSE's convention (for PrivLeak)."""
    data = load_muse(data_dir, max_samples)
    return _in_eval(model, lambda: privleak_scores(model, tokenizer, data, batch_size=batch_size,
                                                   progress=progress))["auc"]


def target_model_knowmem_retain(model, tokenizer, data_dir: str, *,
                                max_samples: Optional[int] = None, batch_size: int = 8,
                                max_new_tokens: int = KNOWMEM_MAX_NEW_TOKENS,
                                progress: bool = True) -> float:
    """The target model's KnowMem on retain (for the ``knowmem_retain_vs_target`` column)."""
    data = load_muse(data_dir, max_samples)
    return _in_eval(model, lambda: evaluate_knowmem(
        model, tokenizer, data.knowmem_retain, data.knowmem_retain_icl,
        max_new_tokens=max_new_tokens, batch_size=batch_size, desc="target knowmem retain",
        progress=progress))["score"]
