"""TOFU unlearning metrics, computed offline.

Definitions follow the TOFU benchmark (Maini et al., 2024) and the open-unlearning
framework. Everything here is deterministic and runs under ``torch.no_grad`` on whatever
device the model lives on. Log-probabilities are always computed in fp32, whatever the
model's dtype.

Notation for one question ``q`` and one answer ``y = (y_1, ..., y_n)`` (the answer tokens,
the closing EOS included; the prompt tokens are conditioned on but never scored):

* **average NLL** ``nll(y|q) = -(1/n) sum_i log p(y_i | q, y_<i)``.
* **normalised probability** ``P(y|q) = exp(-nll(y|q))`` (the geometric mean of the
  per-token probabilities, so long and short answers compare).
* **truth ratio** ``R = (prod_j P(y_j^pert|q))^(1/m) / P(y^para|q)``: the geometric mean of
  the ``m`` perturbed (wrong) answers' normalised probabilities over that of the paraphrased
  correct answer (for real authors and world facts, of the original answer). ``R`` near 0:
  the model prefers the truth; ``R`` near 1: it cannot tell. Reported as
  ``mean min(R, 1/R)`` on the forget set and ``mean max(0, 1 - R)`` on the other sets
  (:func:`truth_ratio_score`).
* **option probability** (real authors, world facts):
  ``P(y|q) / (P(y|q) + sum_j P(y_j^pert|q))``.
* **ROUGE-L recall** of the greedy generation against the gold answer (``rouge-score``,
  Porter stemming): the longest-common-subsequence length over the gold answer's length.
* **Forget Quality**: the p-value of the two-sample Kolmogorov-Smirnov test between the
  forget-set truth ratios of the unlearned model and of the retain model (a model never
  trained on the forget set). The KS statistic is invariant under the strictly monotone map
  ``R -> 1/R``, so it does not matter which way round the ratio is taken (TOFU's code uses
  ``1/R``).
* **Model Utility**: the harmonic mean of nine values: probability, ROUGE-L recall and truth
  ratio score on the retain set, on real authors and on world facts (option probability for
  the last two).
* **exact memorisation** ``EM = (1/n) sum_i [argmax_v p(v | q, y_<i) = y_i]`` (teacher
  forcing).
* **extraction strength** ``ES = 1 - (1/n) min{k in 0..n : greedy decoding from q, y_<k
  reproduces y_>=k}``. Under greedy decoding the continuation from ``y_<k`` reproduces
  ``y_>=k`` exactly when every teacher-forced argmax from position ``k`` on is correct, so
  ``ES`` is the length of the trailing run of correct teacher-forced predictions over ``n``.
  (open-unlearning's loop stops at ``k = n - 1`` and so reports ``1/n`` instead of ``0``
  when even the last token is wrong; here ``k = n``, the empty suffix, is allowed and gives 0.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

__all__ = [
    "TokenScores",
    "exact_memorisation",
    "extraction_strength",
    "forget_quality",
    "generate_greedy",
    "model_utility",
    "normalised_probability",
    "option_probability",
    "rouge_l_f1",
    "rouge_l_recall",
    "score_answers",
    "sequence_token_scores",
    "truth_ratio",
    "truth_ratio_score",
]


# --------------------------------------------------------------------------- pure metrics


def normalised_probability(avg_nll: float) -> float:
    """``exp(-avg_nll)``: the length-normalised probability of an answer.

    >>> round(normalised_probability(math.log(2.0)), 6)
    0.5
    """
    return math.exp(-float(avg_nll))


def truth_ratio(paraphrased_avg_nll: float, perturbed_avg_nlls: Sequence[float]) -> float:
    """``R = geomean_j P(perturbed_j) / P(paraphrased)`` from average NLLs.

    In log space ``log R = nll(paraphrased) - mean_j nll(perturbed_j)``.

    >>> round(truth_ratio(math.log(2.0), [math.log(4.0), math.log(4.0)]), 6)  # (1/4)/(1/2)
    0.5
    """
    if len(perturbed_avg_nlls) == 0:
        raise ValueError("perturbed_avg_nlls: expected at least one perturbed answer, got none")
    mean_pert = sum(float(x) for x in perturbed_avg_nlls) / len(perturbed_avg_nlls)
    return math.exp(float(paraphrased_avg_nll) - mean_pert)


def truth_ratio_score(ratios: Sequence[float], forget: bool) -> float:
    """Aggregate truth ratios ``R`` the way TOFU reports them.

    ``forget=True``: ``mean min(R, 1/R)`` (1 is best: the model cannot tell the truth from
    the perturbations). ``forget=False``: ``mean max(0, 1 - R)`` (higher is better: the model
    prefers the truth).

    >>> truth_ratio_score([0.5, 2.0], forget=True)
    0.5
    >>> truth_ratio_score([0.25, 2.0], forget=False)
    0.375
    """
    ratios = [float(r) for r in ratios]
    if not ratios:
        raise ValueError("ratios: expected at least one truth ratio, got an empty sequence")
    if any(not (r > 0) for r in ratios):
        raise ValueError(f"ratios: expected positive truth ratios, got {ratios}")
    if forget:
        vals = [min(r, 1.0 / r) for r in ratios]
    else:
        vals = [max(0.0, 1.0 - r) for r in ratios]
    return sum(vals) / len(vals)


def option_probability(correct_avg_nll: float, perturbed_avg_nlls: Sequence[float]) -> float:
    """``P(correct) / (P(correct) + sum_j P(perturbed_j))`` with ``P = exp(-avg NLL)``.

    Used for the real-authors and world-facts probability in Model Utility.

    >>> round(option_probability(math.log(2.0), [math.log(4.0), math.log(4.0)]), 6)
    0.5
    """
    p = normalised_probability(correct_avg_nll)
    total = p + sum(normalised_probability(x) for x in perturbed_avg_nlls)
    return p / total


def forget_quality(unlearned_ratios: Sequence[float], retain_ratios: Sequence[float]) -> float:
    """Kolmogorov-Smirnov two-sample p-value between two sets of forget-set truth ratios.

    1.0 means the unlearned model's truth ratios are distributed like the retain model's.

    >>> forget_quality([0.1, 0.5, 0.9], [0.1, 0.5, 0.9])
    1.0
    """
    from scipy.stats import ks_2samp

    a = [float(x) for x in unlearned_ratios]
    b = [float(x) for x in retain_ratios]
    if not a or not b:
        raise ValueError(
            f"forget_quality: expected non-empty truth-ratio samples, got {len(a)} unlearned "
            f"and {len(b)} retain values")
    for name, values in (("the evaluated model's", a), ("the retain model's", b)):
        bad = sum(1 for x in values if x != x)
        if bad:  # a NaN would make the KS p-value NaN (or meaningless) without a word
            raise ValueError(
                f"forget_quality: {bad} of {len(values)} of {name} forget truth ratios are NaN "
                "(non-finite scores: a model with NaN weights or logits?); no Forget Quality")
    return float(ks_2samp(a, b).pvalue)


def model_utility(values: Sequence[float]) -> float:
    """Harmonic mean ``n / sum(1/v)``; 0 when any value is 0 (TOFU's nine-value utility).

    >>> round(model_utility([0.5, 1.0, 0.25]), 6)  # 3 / (2 + 1 + 4)
    0.428571
    """
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("values: expected at least one value, got an empty sequence")
    if any(math.isnan(v) or v < 0 for v in vals):
        raise ValueError(f"values: expected non-negative numbers, got {vals}")
    if any(v == 0 for v in vals):
        return 0.0
    return len(vals) / sum(1.0 / v for v in vals)


def exact_memorisation(correct: Sequence[bool]) -> float:
    """Fraction of answer tokens whose teacher-forced argmax equals the gold token.

    >>> exact_memorisation([True, False, True, True])
    0.75
    """
    correct = [bool(c) for c in correct]
    if not correct:
        raise ValueError("correct: expected at least one answer token, got none")
    return sum(correct) / len(correct)


def extraction_strength(correct: Sequence[bool]) -> float:
    """``1 - k/n`` for the smallest ``k`` such that all predictions from ``k`` on are correct.

    >>> extraction_strength([False, True, True, True])  # k = 1
    0.75
    >>> extraction_strength([True, True, False])        # k = 3: even the last is wrong
    0.0
    """
    correct = [bool(c) for c in correct]
    n = len(correct)
    if n == 0:
        raise ValueError("correct: expected at least one answer token, got none")
    run = 0
    for c in reversed(correct):
        if not c:
            break
        run += 1
    return run / n


_SCORERS = {}


def _rouge_l(predictions: Sequence[str], references: Sequence[str], field: str,
             stemmer: bool) -> List[float]:
    if len(predictions) != len(references):
        raise ValueError(
            f"predictions: expected as many predictions as references ({len(references)}), "
            f"got {len(predictions)}")
    key = ("rougeL", stemmer)
    if key not in _SCORERS:
        from rouge_score import rouge_scorer

        _SCORERS[key] = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=stemmer)
    scorer = _SCORERS[key]
    return [float(getattr(scorer.score(ref, pred)["rougeL"], field))
            for pred, ref in zip(predictions, references)]


def rouge_l_recall(predictions: Sequence[str], references: Sequence[str]) -> List[float]:
    """ROUGE-L recall of each prediction against its reference (rouge-score, stemming on).

    >>> rouge_l_recall(["the cat sat"], ["the cat sat on the mat"])
    [0.5]
    """
    return _rouge_l(predictions, references, "recall", stemmer=True)


def rouge_l_f1(predictions: Sequence[str], references: Sequence[str], *,
               stemmer: bool = False) -> List[float]:
    """ROUGE-L F1 (the F-measure of LCS precision and recall) of each prediction against its
    reference; MUSE's VerbMem and KnowMem, which score without stemming (the default here).

    >>> rouge_l_f1(["the cat sat"], ["the cat sat on the mat"])  # P 1, R 0.5
    [0.6666666666666666]
    """
    return _rouge_l(predictions, references, "fmeasure", stemmer=stemmer)


# ------------------------------------------------------------------ model-level scoring


@dataclass(frozen=True)
class TokenScores:
    """Teacher-forced statistics of one answer given its prompt.

    ``avg_nll``: mean NLL over the answer tokens; ``n_tokens``: their number; ``correct``:
    per answer token, whether the greedy (argmax) prediction equals it.
    """

    avg_nll: float
    n_tokens: int
    correct: Tuple[bool, ...]

    @property
    def probability(self) -> float:
        return normalised_probability(self.avg_nll)

    @property
    def exact_memorisation(self) -> float:
        return exact_memorisation(self.correct)

    @property
    def extraction_strength(self) -> float:
        return extraction_strength(self.correct)


def model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def logits_of(output):
    return output.logits if hasattr(output, "logits") else output[0]


def _check_pairs(pairs) -> None:
    for i, pair in enumerate(pairs):
        if len(pair) != 2:
            raise ValueError(f"pairs[{i}]: expected (prompt_ids, answer_ids), got {pair!r}")
        prompt, answer = pair
        if len(prompt) == 0:
            raise ValueError(
                f"pairs[{i}]: expected a non-empty prompt (the first answer token needs a "
                "position that predicts it), got an empty prompt")
        if len(answer) == 0:
            raise ValueError(f"pairs[{i}]: expected a non-empty answer, got an empty answer")


def sequence_token_scores(logits: torch.Tensor, input_ids: torch.Tensor,
                          prompt_lens: Sequence[int], answer_lens: Sequence[int]
                          ) -> List[TokenScores]:
    """:class:`TokenScores` of each row of a right-padded batch from its logits.

    ``logits`` ``[B, T, V]`` from a causal LM on ``input_ids`` ``[B, T]``; row ``b`` holds
    ``prompt_lens[b]`` prompt tokens then ``answer_lens[b]`` answer tokens, then padding.
    Position ``t`` predicts token ``t + 1`` (the causal shift); computed in fp32 one sequence
    at a time, so memory stays at one ``T x V`` fp32 block.
    """
    out = []
    for b, (m, n) in enumerate(zip(prompt_lens, answer_lens)):
        rows = logits[b, m - 1:m + n - 1].float()
        target = input_ids[b, m:m + n].to(rows.device)
        nll = torch.logsumexp(rows, dim=-1) - rows.gather(-1, target[:, None]).squeeze(-1)
        pred = rows.argmax(dim=-1)  # ties: first maximal index (deterministic)
        out.append(TokenScores(avg_nll=float(nll.double().mean()), n_tokens=int(n),
                               correct=tuple(bool(c) for c in (pred == target).tolist())))
    return out


def progress_iter(iterable, desc, total, enabled):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)


def index_batches(order: List[int], batch_size: int):
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


def check_batch_size(batch_size) -> None:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")


@torch.no_grad()
def score_answers(model, pairs: Sequence[Tuple[Sequence[int], Sequence[int]]], *,
                  pad_token_id: int, batch_size: int = 8, desc: str = "scoring",
                  progress: bool = True) -> List[TokenScores]:
    """Teacher-forced :class:`TokenScores` of each ``(prompt_ids, answer_ids)`` pair.

    Sequences are sorted by length, right-padded with ``pad_token_id`` (masked out by the
    attention mask) and run ``batch_size`` at a time; results come back in input order.
    ``model(input_ids=..., attention_mask=...)`` must return an object with ``.logits``
    (any Hugging Face causal LM does).
    """
    check_batch_size(batch_size)
    _check_pairs(pairs)
    device = model_device(model)
    lengths = [len(p) + len(a) for p, a in pairs]
    order = sorted(range(len(pairs)), key=lambda i: (-lengths[i], i))
    results: List[Optional[TokenScores]] = [None] * len(pairs)
    n_batches = (len(order) + batch_size - 1) // batch_size
    for idx in progress_iter(index_batches(order, batch_size), desc, n_batches, progress):
        width = max(lengths[i] for i in idx)
        ids = torch.full((len(idx), width), int(pad_token_id), dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            seq = list(pairs[i][0]) + list(pairs[i][1])
            ids[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, :len(seq)] = 1
        ids, mask = ids.to(device), mask.to(device)
        logits = logits_of(model(input_ids=ids, attention_mask=mask))
        scores = sequence_token_scores(logits, ids, [len(pairs[i][0]) for i in idx],
                                       [len(pairs[i][1]) for i in idx])
        for i, s in zip(idx, scores):
            results[i] = s
    return results  # type: ignore[return-value]


@torch.no_grad()
def generate_greedy(model, prompts: Sequence[Sequence[int]], *, pad_token_id: int,
                    eos_token_id, max_new_tokens: int = 200, batch_size: int = 8,
                    desc: str = "generating", progress: bool = True) -> List[List[int]]:
    """Greedy continuations (token ids, EOS and what follows removed) of each prompt.

    Prompts are left-padded (so every row ends where generation starts) and batched by
    length; ``model.generate`` runs with ``do_sample=False``. ``eos_token_id``: an int or a
    list of ints, any of which ends a continuation.
    """
    from transformers import GenerationConfig

    check_batch_size(batch_size)
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens: expected a positive integer, got {max_new_tokens!r}")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompts[{i}]: expected a non-empty prompt, got an empty one")
    eos_ids = ([] if eos_token_id is None else
               [int(eos_token_id)] if isinstance(eos_token_id, int) else
               [int(e) for e in eos_token_id])
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                              pad_token_id=int(pad_token_id),
                              eos_token_id=eos_ids if eos_ids else None)
    device = model_device(model)
    order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))
    results: List[Optional[List[int]]] = [None] * len(prompts)
    n_batches = (len(order) + batch_size - 1) // batch_size
    for idx in progress_iter(index_batches(order, batch_size), desc, n_batches, progress):
        width = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), width), int(pad_token_id), dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            p = list(prompts[i])
            ids[row, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[row, width - len(p):] = 1
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                             generation_config=config)
        for row, i in enumerate(idx):
            new = out[row, width:].tolist()
            for j, tok in enumerate(new):
                if tok in eos_ids:
                    new = new[:j]
                    break
            results[i] = new
    return results  # type: ignore[return-value]


