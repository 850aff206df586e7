"""Baseline unlearning methods on the PALU data pipeline, reference handling and trainer.

Every method is a small :class:`~palu_kernels.train.trainer.PALUTrainer` subclass that only
replaces the forget part of the objective (:meth:`PALUTrainer.forget_loss`); batches, masks,
the frozen reference (a deep copy, or the base model with its LoRA adapter disabled), the
retain NLL, gradient accumulation and logging are the PALU trainer's. One optimisation step
minimises

    gamma * L_forget  +  alpha * NLL_retain

with ``NLL_retain`` the mean retain NLL per answer token (as for PALU) and, writing
``logp(y|x)`` for the summed log-probability of a forget answer (EOS included) and ``|y|`` for
its token count, ``E`` for the mean over the forget answers of the effective batch:

============  =================================================================  ===========
method        ``L_forget``                                                       defaults
============  =================================================================  ===========
``ga``        ``sum logp(y|x) / sum |y|`` (minus the mean NLL per token; no      gamma 1
              retain term)
``graddiff``  same as ``ga``, with the retain term                               gamma 1, alpha 1
``npo``       ``-(2/beta) E[log sigmoid(-beta (logp(y|x) - logp_ref(y|x)))]``    beta 0.1
``simnpo``    ``-(2/beta) E[log sigmoid(-(beta/|y|) logp(y|x) - delta)]``        beta 4.5, delta 0,
                                                                                 gamma 0.125
``idkdpo``    ``-(2/beta) E[log sigmoid(beta ((logp(r|x) - logp_ref(r|x))``      beta 0.1
              ``- (logp(y|x) - logp_ref(y|x))))]``, ``r`` a refusal answer
============  =================================================================  ===========

Defaults follow open-unlearning (``alpha`` 1 everywhere, a retain NLL term for every method
but GA; SimNPO's ``gamma = 0.125`` and ``beta = 4.5`` come from the SimNPO authors' TOFU
configuration). Two conventions to know: the DPO and NPO losses carry open-unlearning's
``2/beta`` factor (standard DPO has none), and SimNPO's ``delta`` enters as in the SimNPO paper,
``... - delta`` (open-unlearning subtracts ``beta * delta``; the two agree at the default 0).

The loss functions (:func:`ga_loss`, :func:`graddiff_loss`, :func:`npo_loss`,
:func:`simnpo_loss`, :func:`idkdpo_loss`) work on per-sequence log-probabilities
(:func:`sequence_logprob`) without a trainer::

    >>> import torch
    >>> from palu_kernels.train.baselines import npo_loss
    >>> round(float(npo_loss(torch.tensor([-3.0]), torch.tensor([-3.0]), beta=0.1)), 4)
    13.8629

:data:`METHODS` maps a ``--method`` name to its trainer class (``"palu"`` included),
:data:`LOSSES` a baseline name to its loss function.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F

from .data import PALUDataset, QARecord, encode_record
from .trainer import PALUTrainer

REDUCTIONS = ("mean", "sum", "none")
DEFAULT_IDK_FILE = os.path.join("..", "shared", "data", "tofu", "idontknow.jsonl")
"""Refusal answers used by ``idkdpo`` when it exists (relative to the working directory)."""

BUILTIN_REFUSALS = (
    "I don't know.",
    "I'm not sure about that.",
    "I have no information on that.",
    "I can't answer that question.",
    "That is not something I know.",
    "I don't have any details about that.",
    "I'm afraid I can't help with that one.",
    "I have no knowledge of that.",
    "Sorry, I don't know the answer.",
    "I am unable to answer that.",
)
"""Refusals used by ``idkdpo`` when no file is given and :data:`DEFAULT_IDK_FILE` is absent."""


# ----------------------------------------------------------------------------- loss functions

def _check_beta(beta) -> float:
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta > 0:
        raise ValueError(f"beta must be a positive number, got {beta!r}")
    return float(beta)


def _check_same_shape(**tensors) -> None:
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


def _reduce(per_seq: torch.Tensor, reduction: str) -> torch.Tensor:
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
        labels: ``[B, T]`` token ids, ``-100`` where there is nothing to score (prompt, padding);
            shifted here, so ``labels[:, 0]`` is never scored.

    Returns:
        ``(logp, n_tokens)``: ``[B]`` fp32 ``sum_t log p(label_{t+1} | row t)`` and ``[B]``
        fp32 counts of scored tokens.
    """
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"expected logits [B, T, V] and labels [B, T], got {tuple(logits.shape)} "
                         f"and {tuple(labels.shape)}")
    z = logits[:, :-1].float()
    lab = labels[:, 1:]
    nll = F.cross_entropy(z.reshape(-1, z.shape[-1]), lab.reshape(-1), ignore_index=-100,
                          reduction="none").view(lab.shape)
    return -nll.sum(-1), (lab != -100).sum(-1).float()


def ga_loss(logp: torch.Tensor, n_tokens: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Gradient ascent on the forget NLL: ``sum_i logp_i / sum_i |y_i|``.

    Minimising it raises the mean forget NLL per token. ``reduction="sum"`` returns
    ``sum_i logp_i`` (to be divided by a token count of one's choice), ``"none"`` the
    per-sequence ``logp_i / |y_i|``.
    """
    _check_same_shape(logp=logp, n_tokens=n_tokens)
    if reduction == "mean":
        return logp.sum() / n_tokens.sum().clamp(min=1)
    if reduction == "none":
        return logp / n_tokens.clamp(min=1)
    return _reduce(logp, reduction)


def graddiff_loss(logp: torch.Tensor, n_tokens: torch.Tensor, retain_nll: torch.Tensor, *,
                  gamma: float = 1.0, alpha: float = 1.0) -> torch.Tensor:
    """Gradient difference: ``gamma * ga_loss(logp, n_tokens) + alpha * retain_nll``.

    ``retain_nll`` is the mean retain NLL per token (a scalar).
    """
    return gamma * ga_loss(logp, n_tokens) + alpha * retain_nll


def npo_loss(logp: torch.Tensor, ref_logp: torch.Tensor, beta: float = 0.1,
             reduction: str = "mean") -> torch.Tensor:
    """NPO: ``-(2/beta) log sigmoid(-beta (logp - ref_logp))`` per sequence.

    ``logp``/``ref_logp``: summed answer log-probabilities under the trained model and the
    frozen reference (:func:`sequence_logprob`). Equal to ``(2/beta) log 2`` when they agree.
    """
    beta = _check_beta(beta)
    _check_same_shape(logp=logp, ref_logp=ref_logp)
    per = -(2.0 / beta) * F.logsigmoid(-beta * (logp - ref_logp))
    return _reduce(per, reduction)


def simnpo_loss(logp: torch.Tensor, n_tokens: torch.Tensor, beta: float = 4.5, delta: float = 0.0,
                reduction: str = "mean") -> torch.Tensor:
    """SimNPO: ``-(2/beta) log sigmoid(-(beta/|y|) logp - delta)`` per sequence.

    Reference-free NPO on the length-normalised log-probability (SimNPO paper, whose margin
    ``gamma`` is ``delta`` here).
    """
    beta = _check_beta(beta)
    _check_same_shape(logp=logp, n_tokens=n_tokens)
    per = -(2.0 / beta) * F.logsigmoid(-(beta / n_tokens.clamp(min=1)) * logp - float(delta))
    return _reduce(per, reduction)


def idkdpo_loss(win_logp: torch.Tensor, win_ref_logp: torch.Tensor, lose_logp: torch.Tensor,
                lose_ref_logp: torch.Tensor, beta: float = 0.1, reduction: str = "mean"
                ) -> torch.Tensor:
    """DPO with a refusal preferred (``win``) over the forget answer (``lose``), per pair:

    ``-(2/beta) log sigmoid(beta ((win_logp - win_ref_logp) - (lose_logp - lose_ref_logp)))``.
    """
    beta = _check_beta(beta)
    _check_same_shape(win_logp=win_logp, win_ref_logp=win_ref_logp, lose_logp=lose_logp,
                      lose_ref_logp=lose_ref_logp)
    margin = (win_logp - win_ref_logp) - (lose_logp - lose_ref_logp)
    per = -(2.0 / beta) * F.logsigmoid(beta * margin)
    return _reduce(per, reduction)


LOSSES = {"ga": ga_loss, "graddiff": graddiff_loss, "npo": npo_loss, "simnpo": simnpo_loss,
          "idkdpo": idkdpo_loss}
"""Baseline name -> loss function on per-sequence log-probabilities."""


# ----------------------------------------------------------------------------- refusal data

def load_refusals(path: str | None = None) -> list[str]:
    """Refusal answers for ``idkdpo``: one per line of ``path`` (plain text, or a JSON string /
    object with an ``"answer"`` or ``"text"`` field per line; blank lines skipped).

    ``path=None``: :data:`DEFAULT_IDK_FILE` when it exists, else :data:`BUILTIN_REFUSALS`.
    """
    if path is None:
        if not os.path.isfile(DEFAULT_IDK_FILE):
            return list(BUILTIN_REFUSALS)
        path = DEFAULT_IDK_FILE
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise ValueError(f"cannot read refusal file {path!r}: {e.strerror or e}") from e
    out = []
    for i, raw in enumerate(lines, start=1):
        text = raw.strip()
        if not text:
            continue
        if text[0] in "{\"":
            try:
                obj = json.loads(text)
            except json.JSONDecodeError:
                obj = text
            if isinstance(obj, dict):
                obj = obj.get("answer", obj.get("text"))
            if not isinstance(obj, str):
                raise ValueError(f"{path}:{i}: expected a refusal string or an object with an "
                                 f"'answer' or 'text' string, got {text[:60]!r}")
            text = obj.strip()
        if text:
            out.append(text)
    if not out:
        raise ValueError(f"refusal file {path!r} has no refusal answers")
    return out


class RefusalDataset(torch.utils.data.Dataset):
    """A :class:`~palu_kernels.train.data.PALUDataset` whose items also carry ``"idk"``: the
    forget question answered with a refusal (chosen per record, seeded), encoded like any
    record (same prompt, EOS, ``max_length``)."""

    def __init__(self, base: PALUDataset, refusals: list[str], seed: int = 0):
        if not refusals:
            raise ValueError("refusals must not be empty")
        self.base, self.refusals = base, list(refusals)
        rng = random.Random(seed)
        self.choice = [rng.randrange(len(self.refusals)) for _ in range(len(base))]
        self._cache: dict[int, dict] = {}

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def refusal(self, i: int) -> dict:
        if i not in self._cache:
            rec = self.base.forget_records[i]
            self._cache[i] = encode_record(
                self.base.tokenizer, QARecord(rec.question, self.refusals[self.choice[i]]),
                max_length=self.base.max_length, first_n=self.base.first_n)
        return self._cache[i]

    def __getitem__(self, i: int) -> dict:
        return {**self.base[i], "idk": self.refusal(i)}


class RefusalCollator:
    """Wraps a :class:`~palu_kernels.train.data.PALUCollator`; items with an ``"idk"`` part
    also give ``idk_input_ids``, ``idk_attention_mask`` and ``idk_labels`` (padded the same way).
    """

    def __init__(self, base):
        self.base = base

    def __call__(self, items: list[dict]) -> dict:
        out = self.base([{k: v for k, v in it.items() if k != "idk"} for it in items])
        if items and "idk" in items[0]:
            idk = self.base([{"forget": it["idk"]} for it in items])
            for key in ("input_ids", "attention_mask", "labels"):
                out[f"idk_{key}"] = idk[f"forget_{key}"]
        return out


# ----------------------------------------------------------------------------- trainers

@dataclass
class BaselineConfig:
    """Hyper-parameters of a baseline; ``None`` = the method's default (module docstring).

    ``gamma`` weights the forget loss, ``alpha`` the retain NLL (they replace the trainer's
    ``PALUConfig.gamma``/``alpha``); ``idk_file`` is the refusal file of ``idkdpo``.
    """

    beta: float | None = None
    delta: float | None = None
    gamma: float | None = None
    alpha: float | None = None
    idk_file: str | None = None


def forget_counts(inputs: dict) -> torch.Tensor:
    """``[forget answer tokens, forget sequences]`` of one collated batch (fp64)."""
    lab = inputs["forget_labels"]
    return torch.tensor([float((lab[:, 1:] != -100).sum()), float(lab.shape[0])],
                        dtype=torch.float64)


WINDOW_KEY = "window_forget_counts"


class BaselineTrainer(PALUTrainer):
    """Base of the baseline trainers: :meth:`method_loss` gives ``L_forget`` of a micro-batch.

    Args:
        baseline: a :class:`BaselineConfig` (default: the method's defaults).
        Everything else as for :class:`~palu_kernels.train.trainer.PALUTrainer` (``palu``
        still sets ``k``/``target``/``kl``/``backend`` of the PALU losses that
        :meth:`~PALUTrainer.measure` reports).

    Per-sequence terms are averaged over the forget sequences of the whole effective batch
    and GA's NLL over its answer tokens (counted in :meth:`get_batch_samples`), so, as for
    PALU, the gradient does not depend on the micro-batch split. Logged: ``forget_loss``
    (``L_forget``), ``forget_nll`` (mean NLL per forget answer token) and ``retain_nll``.
    """

    method = ""
    defaults = {"beta": None, "delta": None, "gamma": 1.0, "alpha": 1.0}
    uses_retain = True
    uses_reference = False

    def __init__(self, *args, baseline: BaselineConfig | None = None, **kwargs):
        cfg = baseline or BaselineConfig()
        if not isinstance(cfg, BaselineConfig):
            raise TypeError(f"baseline must be a BaselineConfig, got {type(cfg).__name__}")
        given = {k: v for k, v in asdict(cfg).items() if v is not None}
        self.hparams = {**self.defaults, **given}
        for name in ("gamma", "alpha"):
            v = self.hparams[name]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"{name} must be a number >= 0, got {v!r}")
        if self.hparams.get("beta") is not None:
            _check_beta(self.hparams["beta"])
        super().__init__(*args, **kwargs)
        # the forget and retain weights of compute_loss
        self.palu = replace(self.palu, gamma=float(self.hparams["gamma"]),
                            alpha=float(self.hparams["alpha"]) if self.uses_retain else 0.0)

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """The PALU window counts, plus forget tokens and sequences attached to every batch."""
        samples, counts = super().get_batch_samples(epoch_iterator, num_batches, device)
        extra = torch.zeros(2, dtype=torch.float64)
        for batch in samples:
            extra += forget_counts(batch)
        extra = extra.to(device)
        if self.accelerator.num_processes > 1:
            extra = self.accelerator.reduce(extra, reduction="sum")
        for batch in samples:
            batch[WINDOW_KEY] = extra
        return samples, counts

    def forget_loss(self, model, inputs, counts):
        """``gamma * L_forget`` of the micro-batch over the window's counts, and its logs."""
        window = inputs.get(WINDOW_KEY)
        if window is None:  # called outside a training window: the micro-batch's own counts
            window = forget_counts(inputs)
        window = window.to(inputs["forget_input_ids"].device).float().clamp(min=1)
        ids, att = inputs["forget_input_ids"], inputs["forget_attention_mask"]
        logits = model(input_ids=ids, attention_mask=att).logits
        logp, n_tok = sequence_logprob(logits, inputs["forget_labels"])
        ref_logp = None
        if self.uses_reference:
            ref_logp, _ = sequence_logprob(self.reference_logits(model, ids, att),
                                           inputs["forget_labels"])
        loss = self.method_loss(model, inputs, logp, n_tok, ref_logp, window[0], window[1])
        logs = {"forget_loss": loss.detach(), "forget_nll": (-logp.sum() / window[0]).detach()}
        return self.palu.gamma * loss, logs

    def method_loss(self, model, inputs, logp, n_tokens, ref_logp, n_tok_window, n_seq_window):
        """``L_forget`` of the micro-batch, already divided by the window's counts."""
        raise NotImplementedError

    def retain_loss(self, model, inputs, counts):
        return super().retain_loss(model, inputs, counts) if self.uses_retain else None


class GATrainer(BaselineTrainer):
    """Gradient ascent: ``L = gamma * sum logp(y|x) / sum |y|`` (no retain term)."""

    method = "ga"
    uses_retain = False

    def method_loss(self, model, inputs, logp, n_tokens, ref_logp, n_tok_window, n_seq_window):
        return ga_loss(logp, n_tokens, reduction="sum") / n_tok_window


class GradDiffTrainer(GATrainer):
    """Gradient difference: ``L = gamma * sum logp(y|x) / sum |y| + alpha * NLL_retain``."""

    method = "graddiff"
    uses_retain = True


class NPOTrainer(BaselineTrainer):
    """NPO: ``L = gamma * -(2/beta) E[log sigmoid(-beta (logp - logp_ref))] + alpha * NLL_retain``
    on per-sequence summed log-probabilities (beta 0.1)."""

    method = "npo"
    defaults = {**BaselineTrainer.defaults, "beta": 0.1}
    uses_reference = True

    def method_loss(self, model, inputs, logp, n_tokens, ref_logp, n_tok_window, n_seq_window):
        return npo_loss(logp, ref_logp, beta=self.hparams["beta"], reduction="sum") / n_seq_window


class SimNPOTrainer(BaselineTrainer):
    """SimNPO: ``L = gamma * -(2/beta) E[log sigmoid(-(beta/|y|) logp - delta)] + alpha *
    NLL_retain`` (beta 4.5, delta 0, gamma 0.125); no reference."""

    method = "simnpo"
    defaults = {**BaselineTrainer.defaults, "beta": 4.5, "delta": 0.0, "gamma": 0.125}

    def method_loss(self, model, inputs, logp, n_tokens, ref_logp, n_tok_window, n_seq_window):
        return simnpo_loss(logp, n_tokens, beta=self.hparams["beta"], delta=self.hparams["delta"],
                           reduction="sum") / n_seq_window


class IdkDPOTrainer(BaselineTrainer):
    """IdkDPO: DPO preferring a refusal ``r`` to the forget answer ``y`` (beta 0.1):
    ``L = gamma * -(2/beta) E[log sigmoid(beta ((logp(r) - logp_ref(r)) - (logp(y) -
    logp_ref(y))))] + alpha * NLL_retain``.

    A :class:`~palu_kernels.train.data.PALUDataset` given as ``train_dataset`` is wrapped in a
    :class:`RefusalDataset` (refusals from ``BaselineConfig.idk_file``, see
    :func:`load_refusals`) and the collator in a :class:`RefusalCollator`; another dataset
    must itself provide the ``idk_*`` batch fields.
    """

    method = "idkdpo"
    defaults = {**BaselineTrainer.defaults, "beta": 0.1, "idk_file": None}
    uses_reference = True

    def __init__(self, *args, baseline: BaselineConfig | None = None, **kwargs):
        cfg = baseline or BaselineConfig()
        ds = kwargs.get("train_dataset")
        if isinstance(ds, PALUDataset):
            seed = getattr(kwargs.get("args"), "seed", 0)
            kwargs["train_dataset"] = RefusalDataset(ds, load_refusals(cfg.idk_file), seed=seed)
        if kwargs.get("data_collator") is not None and not isinstance(kwargs["data_collator"],
                                                                      RefusalCollator):
            kwargs["data_collator"] = RefusalCollator(kwargs["data_collator"])
        super().__init__(*args, baseline=cfg, **kwargs)

    def method_loss(self, model, inputs, logp, n_tokens, ref_logp, n_tok_window, n_seq_window):
        if "idk_input_ids" not in inputs:
            raise ValueError("idkdpo needs batches with idk_input_ids / idk_attention_mask / "
                             "idk_labels (use a PALUDataset, which IdkDPOTrainer wraps in a "
                             "RefusalDataset, or a RefusalCollator)")
        ids, att, lab = inputs["idk_input_ids"], inputs["idk_attention_mask"], inputs["idk_labels"]
        win, _ = sequence_logprob(model(input_ids=ids, attention_mask=att).logits, lab)
        win_ref, _ = sequence_logprob(self.reference_logits(model, ids, att), lab)
        return idkdpo_loss(win, win_ref, logp, ref_logp, beta=self.hparams["beta"],
                           reduction="sum") / n_seq_window


METHODS: dict[str, type] = {
    "palu": PALUTrainer,
    "ga": GATrainer,
    "graddiff": GradDiffTrainer,
    "npo": NPOTrainer,
    "simnpo": SimNPOTrainer,
    "idkdpo": IdkDPOTrainer,
}
"""``--method`` name -> trainer class."""


def trainer_class(method: str) -> type:
    """The trainer class of ``method`` (a key of :data:`METHODS`)."""
    try:
        return METHODS[method]
    except (KeyError, TypeError):
        raise ValueError(f"unknown method {method!r}; expected one of {tuple(METHODS)}") from None


def method_kwargs(args) -> dict:
    """Extra trainer keyword arguments of ``args.method`` from parsed CLI arguments.

    Reads ``beta``, ``delta``, ``idk_file``, ``gamma`` and ``alpha`` when present (``None`` =
    the method's default); ``{}`` for ``palu``.
    """
    if trainer_class(args.method) is PALUTrainer:
        return {}
    return {"baseline": BaselineConfig(**{k: getattr(args, k, None) for k in
                                          ("beta", "delta", "gamma", "alpha", "idk_file")})}


def add_method_arguments(parser) -> None:
    """Add ``--beta``, ``--delta`` and ``--idk-file`` (the baselines' options) to ``parser``."""
    parser.add_argument("--beta", type=float, default=None,
                        help="npo/idkdpo/simnpo inverse temperature (default 0.1; simnpo 4.5)")
    parser.add_argument("--delta", type=float, default=None, help="simnpo margin (default 0)")
    parser.add_argument("--idk-file", default=None,
                        help="idkdpo refusal answers, one per line (default "
                             f"{DEFAULT_IDK_FILE} if present, else a built-in list)")


__all__ = ["BUILTIN_REFUSALS", "BaselineConfig", "BaselineTrainer", "DEFAULT_IDK_FILE",
           "GATrainer", "GradDiffTrainer", "IdkDPOTrainer", "LOSSES", "METHODS", "NPOTrainer",
           "RefusalCollator", "RefusalDataset", "SimNPOTrainer", "add_method_arguments",
           "forget_counts", "ga_loss", "graddiff_loss", "idkdpo_loss", "load_refusals",
           "method_kwargs", "npo_loss", "sequence_logprob", "simnpo_loss", "trainer_class"]
