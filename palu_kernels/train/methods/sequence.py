"""What the sequence-level baselines (GA, GradDiff, NPO, SimNPO, IdkDPO) share.

They score whole forget answers: ``logp(y|x)``, the summed log-probability of an answer (EOS
included, :func:`sequence_logprob`), and ``|y|``, its token count. Per-sequence terms are
averaged over the forget sequences of the whole effective batch and token terms over its
answer tokens (the window counts of :func:`palu_kernels.train.base.batch_counts`), so, as for
PALU, the gradient does not depend on the micro-batch split. Logged: ``forget_loss``
(``L_forget``), ``forget_nll`` (mean NLL per forget answer token) and ``retain_nll``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...constants import IGNORE_INDEX

REDUCTIONS = ("mean", "sum", "none")


def check_beta(beta) -> float:
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta > 0:
        raise ValueError(f"beta must be a positive number, got {beta!r}")
    return float(beta)


def check_same_shape(**tensors) -> None:
    names = list(tensors)
    for n in names:
        if not torch.is_tensor(tensors[n]):
            raise TypeError(f"{n} must be a torch.Tensor, got {type(tensors[n]).__name__}")
        if tensors[n].dim() != 1:
            raise ValueError(f"{n} must be 1-D (one value per sequence), got shape "
                             f"{tuple(tensors[n].shape)}")
    first = names[0]
    for n in names[1:]:
        if tensors[n].shape != tensors[first].shape:
            raise ValueError(f"{n} has shape {tuple(tensors[n].shape)}, expected the shape of "
                             f"{first} {tuple(tensors[first].shape)}")


def reduce(per_seq: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_seq.mean()
    if reduction == "sum":
        return per_seq.sum()
    if reduction == "none":
        return per_seq
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability of the labelled tokens of each sequence, and their count.

    Args:
        logits: ``[B, T, V]`` model logits (row ``t`` predicts token ``t+1``).
        labels: ``[B, T]`` token ids, ``IGNORE_INDEX`` where there is nothing to score
            (prompt, padding); shifted here, so ``labels[:, 0]`` is never scored.

    Returns:
        ``(logp, n_tokens)``: ``[B]`` fp32 ``sum_t log p(label_{t+1} | row t)`` and ``[B]``
        fp32 counts of scored tokens.
    """
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"expected logits [B, T, V] and labels [B, T], got {tuple(logits.shape)} "
                         f"and {tuple(labels.shape)}")
    z = logits[:, :-1].float()
    lab = labels[:, 1:]
    nll = F.cross_entropy(z.reshape(-1, z.shape[-1]), lab.reshape(-1),
                          ignore_index=IGNORE_INDEX,
                          reduction="none").view(lab.shape)
    return -nll.sum(-1), (lab != IGNORE_INDEX).sum(-1).float()


def forget_logprobs(trainer, model, inputs, reference: bool = False):
    """``(logp, n_tokens, ref_logp)`` of the forget answers of a micro-batch under ``model``
    and, with ``reference=True``, under the trainer's frozen reference (else ``None``)."""
    ids, att = inputs["forget_input_ids"], inputs["forget_attention_mask"]
    logits = model(input_ids=ids, attention_mask=att).logits
    logp, n_tok = sequence_logprob(logits, inputs["forget_labels"])
    ref_logp = None
    if reference:
        ref_logp, _ = sequence_logprob(trainer.reference_logits(model, ids, att),
                                       inputs["forget_labels"])
    return logp, n_tok, ref_logp


def forget_window(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(forget answer tokens, forget sequences)`` of the window counts (fp32, at least 1)."""
    window = counts[3:5].float().clamp(min=1)
    return window[0], window[1]


def sequence_logs(loss: torch.Tensor, logp: torch.Tensor, n_tok_window: torch.Tensor) -> dict:
    """The logged terms: ``forget_loss`` (``L_forget``) and ``forget_nll`` (mean NLL per forget
    answer token of the window)."""
    return {"forget_loss": loss.detach(), "forget_nll": (-logp.sum() / n_tok_window).detach()}


__all__ = ["REDUCTIONS", "check_beta", "check_same_shape", "forget_logprobs", "forget_window",
           "reduce", "sequence_logprob", "sequence_logs"]
