"""IdkDPO: DPO preferring a refusal ``r`` ("I don't know.") to the forget answer ``y``:
``L = gamma * -(2/beta) E[log sigmoid(beta ((logp(r|x) - logp_ref(r|x)) - (logp(y|x) -
logp_ref(y|x))))] + alpha * NLL_retain`` (``beta`` 0.1, ``gamma`` 1, ``alpha`` 1; the ``2/beta``
factor is open-unlearning's, standard DPO has none).

The refusals come from a file (:func:`load_refusals`); :class:`RefusalDataset` and
:class:`RefusalCollator` add them to the PALU batches as ``idk_*`` fields.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..base import UnlearningTrainer, resolve_config
from ..knobs import MethodConfig, knob, weight_knob
from ...io.data import PALUDataset, encode_record
from ...io.records import QARecord
from .sequence import (check_beta, check_same_shape, forget_logprobs, forget_window, reduce,
                       sequence_logprob, sequence_logs)

DEFAULT_IDK_FILE = ""
"""No default refusal file: data paths are arguments (``--idk-file``, e.g. TOFU's
``idontknow.jsonl``); without one ``idkdpo`` uses :data:`BUILTIN_REFUSALS`. Kept (empty) for
callers that test ``os.path.isfile(DEFAULT_IDK_FILE)``."""

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
"""Refusals used by ``idkdpo`` when no file is given (``--idk-file``)."""


def idkdpo_loss(win_logp: torch.Tensor, win_ref_logp: torch.Tensor, lose_logp: torch.Tensor,
                lose_ref_logp: torch.Tensor, beta: float = 0.1, reduction: str = "mean"
                ) -> torch.Tensor:
    """DPO with a refusal preferred (``win``) over the forget answer (``lose``), per pair:

    ``-(2/beta) log sigmoid(beta ((win_logp - win_ref_logp) - (lose_logp - lose_ref_logp)))``.
    """
    beta = check_beta(beta)
    check_same_shape(win_logp=win_logp, win_ref_logp=win_ref_logp, lose_logp=lose_logp,
                     lose_ref_logp=lose_ref_logp)
    margin = (win_logp - win_ref_logp) - (lose_logp - lose_ref_logp)
    per = -(2.0 / beta) * F.logsigmoid(beta * margin)
    return reduce(per, reduction)


# ----------------------------------------------------------------------------- refusal data

def load_refusals(path: str | None = None) -> list[str]:
    """Refusal answers for ``idkdpo``: one per line of ``path`` (plain text, or a JSON string /
    object with an ``"answer"`` or ``"text"`` field per line; blank lines skipped).

    ``path=None``: :data:`BUILTIN_REFUSALS` (there is no default file).
    """
    if path is None:
        return list(BUILTIN_REFUSALS)
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
    """A :class:`~palu_kernels.io.data.PALUDataset` whose items also carry ``"idk"``: the
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
    """Wraps a :class:`~palu_kernels.io.data.PALUCollator`; items with an ``"idk"`` part
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


# ----------------------------------------------------------------------------- trainer

@dataclass
class IdkDPOConfig(MethodConfig):
    """IdkDPO's settings (``idk_file``: read by :func:`load_refusals`)."""

    beta: float = knob(0.1, "inverse temperature", gt=0)
    gamma: float = weight_knob(1.0, "forget loss")
    alpha: float = weight_knob(1.0, "retain NLL")
    idk_file: str | None = knob(None, "refusal answers, one per line (e.g. ../shared/data/tofu/"
                                      "idontknow.jsonl; default: a built-in list)", file=True)


class IdkDPOTrainer(UnlearningTrainer):
    """IdkDPO: DPO preferring a refusal ``r`` to the forget answer ``y`` (beta 0.1):
    ``L = gamma * -(2/beta) E[log sigmoid(beta ((logp(r) - logp_ref(r)) - (logp(y) -
    logp_ref(y))))] + alpha * NLL_retain``.

    A :class:`~palu_kernels.io.data.PALUDataset` given as ``train_dataset`` is wrapped in a
    :class:`RefusalDataset` (refusals from ``idk_file``, see :func:`load_refusals`) and the
    collator in a :class:`RefusalCollator`; another dataset must itself provide the ``idk_*``
    batch fields.
    """

    method = "idkdpo"
    config_class = IdkDPOConfig
    loss_function = staticmethod(idkdpo_loss)

    def __init__(self, *args, baseline=None, **kwargs):
        cfg = resolve_config(IdkDPOConfig, baseline, self.method)
        ds = kwargs.get("train_dataset")
        if isinstance(ds, PALUDataset):
            seed = getattr(kwargs.get("args"), "seed", 0)
            kwargs["train_dataset"] = RefusalDataset(ds, load_refusals(cfg.idk_file), seed=seed)
        if kwargs.get("data_collator") is not None and not isinstance(kwargs["data_collator"],
                                                                      RefusalCollator):
            kwargs["data_collator"] = RefusalCollator(kwargs["data_collator"])
        super().__init__(*args, baseline=cfg, **kwargs)

    def forget_loss(self, model, inputs, counts):
        if "idk_input_ids" not in inputs:
            raise ValueError("idkdpo needs batches with idk_input_ids / idk_attention_mask / "
                             "idk_labels (use a PALUDataset, which IdkDPOTrainer wraps in a "
                             "RefusalDataset, or a RefusalCollator)")
        cfg = self.method_config
        logp, _, ref_logp = forget_logprobs(self, model, inputs, reference=True)
        n_tok_window, n_seq_window = forget_window(counts)
        ids, att, lab = inputs["idk_input_ids"], inputs["idk_attention_mask"], inputs["idk_labels"]
        win, _ = sequence_logprob(model(input_ids=ids, attention_mask=att).logits, lab)
        win_ref, _ = sequence_logprob(self.reference_logits(model, ids, att), lab)
        loss = idkdpo_loss(win, win_ref, logp, ref_logp, beta=cfg.beta,
                           reduction="sum") / n_seq_window
        return cfg.gamma * loss, sequence_logs(loss, logp, n_tok_window)


__all__ = ["BUILTIN_REFUSALS", "DEFAULT_IDK_FILE", "IdkDPOConfig", "IdkDPOTrainer",
           "RefusalCollator", "RefusalDataset", "idkdpo_loss", "load_refusals"]
