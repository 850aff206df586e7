"""TPO, targeted preference optimisation ("Not All Tokens Are Meant to Be Forgotten"; the
released ``tpo_grad_diff``), on the span masks of ``docs/spec.md``.

On the forget batch the sensitive answer tokens (the spans) are the unwanted words U and the
other answer tokens, EOS included, are the general words G. With ``z`` the raw logits (not
log-probabilities) at the label token ``y`` of each row::

    L_forget = -(2/beta) * log sigmoid(beta * (mean_b mean_U z_ref[y] - mean_b mean_U z[y]))
               + mean_b mean_G NLL
    L = gamma * L_forget + alpha * NLL_retain

each ``mean_U`` / ``mean_G`` taken over one sequence's rows, then ``mean_b`` over the
sequences of the batch (as the released code: the batch mean sits inside the log-sigmoid).
Defaults: ``beta`` 0.3, ``gamma`` 1, ``alpha`` 1.

Sequences without U rows (no span, e.g. "No information is available"): they have no
unwanted-word margin, so they are left out of the preference term's batch mean (they still
count in the NLL_G mean); when no sequence of the batch has a U row the preference term is 0.
A sequence without G rows (only when truncation cut its EOS) adds 0 to the NLL_G sum, which is
still divided by all sequences.

In the trainer the NLL_G sum is divided by the forget sequences of the whole effective batch
(like the other methods, independent of the micro-batch split); the preference term, not
linear in the sequences, is computed per micro-batch and weighted by that micro-batch's share
of the window's sequences (exact for one micro-batch per step, the default).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...constants import IGNORE_INDEX
from ..base import UnlearningTrainer
from ..knobs import MethodConfig, knob, weight_knob
from .sequence import check_beta, forget_window, sequence_logprob, sequence_logs


def _label_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``z[b, t] = logits[b, t, labels[b, t+1]]`` for rows ``t < T-1`` (fp32, 0 on ignored
    labels)."""
    lab = labels[:, 1:]
    safe = lab.masked_fill(lab == IGNORE_INDEX, 0)
    return logits[:, :-1].float().gather(-1, safe.unsqueeze(-1)).squeeze(-1)


def tpo_terms(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor,
              unwanted: torch.Tensor, general: torch.Tensor, beta: float = 0.3):
    """The TPO forget terms of one batch.

    Args:
        logits, ref_logits: ``[B, T, V]`` of the trained model and the frozen reference.
        labels: ``[B, T]`` token ids, ``IGNORE_INDEX`` where nothing is scored.
        unwanted, general: bool ``[B, T]`` row masks, shifted like the PALU masks (row ``t``
            refers to token ``t+1``): the U rows and the G rows.
        beta: inverse temperature (> 0).

    Returns:
        ``(pref, nll_g_per_seq, margin, has_u)``: the preference term (a scalar, 0 without any
        U row), the per-sequence mean NLL over G ``[B]`` (0 without G rows), the batch-mean
        margin ``mean_b mean_U (z_ref - z)`` (detached; 0 without U) and ``[B]`` bool.
    """
    beta = check_beta(beta)
    if logits.shape != ref_logits.shape or logits.dim() != 3:
        raise ValueError(f"logits and ref_logits must be [B, T, V] of one shape, got "
                         f"{tuple(logits.shape)} and {tuple(ref_logits.shape)}")
    for name, t in (("labels", labels), ("unwanted", unwanted), ("general", general)):
        if t.shape != logits.shape[:2]:
            raise ValueError(f"{name} must be [B, T] = {tuple(logits.shape[:2])}, got "
                             f"{tuple(t.shape)}")
    z = _label_logits(logits, labels)
    z_ref = _label_logits(ref_logits.detach(), labels)
    valid = labels[:, 1:] != IGNORE_INDEX
    u = (unwanted[:, :-1] & valid).float()
    g = (general[:, :-1] & valid).float()
    n_u, n_g = u.sum(-1), g.sum(-1)
    has_u = n_u > 0
    seq_margin = ((z_ref - z) * u).sum(-1) / n_u.clamp(min=1)
    if bool(has_u.any()):
        margin = seq_margin[has_u].mean()
        pref = -(2.0 / beta) * F.logsigmoid(beta * margin)
    else:
        margin = z.sum() * 0.0
        pref = margin
    lab = labels[:, 1:].masked_fill(labels[:, 1:] == IGNORE_INDEX, 0)
    nll = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), lab.reshape(-1),
                          reduction="none").view(lab.shape)
    nll_g = (nll * g).sum(-1) / n_g.clamp(min=1)
    return pref, nll_g, margin.detach(), has_u


def tpo_loss(logits, ref_logits, labels, unwanted, general, beta: float = 0.3) -> torch.Tensor:
    """The TPO forget loss of one batch: preference term + the batch mean of the
    per-sequence mean NLL over G (see the module docstring)."""
    pref, nll_g, _, _ = tpo_terms(logits, ref_logits, labels, unwanted, general, beta)
    return pref + nll_g.mean()


def span_rows(inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """``(U rows, G rows)`` of a collated forget batch: G = the common rows (non-sensitive
    answer tokens, EOS included), U = the other answer rows (every sensitive token)."""
    lab = inputs["forget_labels"]
    common = inputs["forget_common_mask"]
    answer = torch.zeros_like(common)
    answer[:, :-1] = lab[:, 1:] != IGNORE_INDEX
    return answer & ~common, common & answer


@dataclass
class TPOConfig(MethodConfig):
    """TPO's settings."""

    beta: float = knob(0.3, "inverse temperature of the preference term", gt=0)
    gamma: float = weight_knob(1.0, "forget objective (preference term + NLL_G)")
    alpha: float = weight_knob(1.0, "retain NLL")


class TPOTrainer(UnlearningTrainer):
    """TPO: ``L = gamma * (-(2/beta) log sigmoid(beta (mean_U z_ref - mean_U z)) + NLL_G)
    + alpha * NLL_retain`` (beta 0.3). Logged: ``forget_loss`` (L_forget), ``forget_nll`` (mean
    NLL per forget answer token), ``forget_pref``, ``forget_nll_g``, ``forget_margin``."""

    method = "tpo"
    uses_spans = True
    config_class = TPOConfig
    loss_function = staticmethod(tpo_loss)  # on logits and the U / G row masks, not log-probs

    def forget_loss(self, model, inputs, counts):
        cfg = self.method_config
        ids, att = inputs["forget_input_ids"], inputs["forget_attention_mask"]
        logits = model(input_ids=ids, attention_mask=att).logits
        ref = self.reference_logits(model, ids, att)
        u, g = span_rows(inputs)
        pref, nll_g, margin, _ = tpo_terms(logits, ref, inputs["forget_labels"], u, g, cfg.beta)
        n_tok_window, n_seq_window = forget_window(counts)
        share = ids.shape[0] / n_seq_window
        nll_term = nll_g.sum() / n_seq_window
        forget = share * pref + nll_term
        with torch.no_grad():
            logp, _ = sequence_logprob(logits.detach(), inputs["forget_labels"])
        logs = sequence_logs(forget, logp, n_tok_window)
        logs.update(forget_pref=(share * pref).detach(), forget_nll_g=nll_term.detach(),
                    forget_margin=margin)
        return cfg.gamma * forget, logs


__all__ = ["TPOConfig", "TPOTrainer", "span_rows", "tpo_loss", "tpo_terms"]
