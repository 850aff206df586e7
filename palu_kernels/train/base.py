"""``UnlearningTrainer``: the ``transformers.Trainer`` every unlearning method runs on.

Batches come from :class:`~palu_kernels.io.data.PALUCollator`: a forget part (with the
PALU masks I and C) and, optionally, a retain part travel together. One optimisation step on
an effective batch (all micro-batches of a gradient-accumulation window, on all processes)
minimises

    forget objective  +  alpha * sum NLL_retain / n_retain

with every count taken over the whole effective batch (:meth:`UnlearningTrainer.
get_batch_samples`), so the gradient does not depend on how the batch is split into
micro-batches or processes (``docs/spec.md``). The base holds what all methods share:
the window counts, the frozen reference (a deep copy, or the model with its LoRA adapter
disabled), the retain NLL, the logging of the separate terms and :meth:`UnlearningTrainer.
measure`. A method (one file in :mod:`palu_kernels.train.methods`, one line in
:mod:`palu_kernels.train.registry`) overrides :meth:`UnlearningTrainer.forget_loss` only, and
declares its settings as the :func:`~palu_kernels.train.knobs.knob` fields of a small
dataclass (``config_class``), the one declaration everything else derives from.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import asdict, dataclass, is_dataclass

import torch
from transformers import Trainer, TrainerCallback

from ..constants import IGNORE_INDEX
from ..loss import palu_local_entropy_loss
from .distributed import check_engine, engine_of, is_fsdp2, shard_reference
from .heads import FusedLinearError, is_peft_model
from .knobs import MethodConfig, knobs_of, weight_knob


@dataclass
class PALUConfig(MethodConfig):
    """Options of the PALU objective (see ``palu_local_entropy_loss``).

    ``PALUTrainer`` minimises this loss; every other method uses only ``k``, ``target``,
    ``kl`` and ``backend``, for the PALU terms :meth:`UnlearningTrainer.measure` reports.

    ``fused_linear``: compute the forget loss from the last hidden states and the ``lm_head``
    weight (:func:`~palu_kernels.fused_linear.palu_fused_linear_loss`), so the forget batch's
    ``[B, T, V]`` logits are never materialised; PALU only, for models whose output
    projection is a plain ``torch.nn.Linear`` (see :func:`~palu_kernels.train.heads.
    fused_head`). ``chunk_rows``: rows projected at once on that path (None: chosen from V and
    the hidden size). ``gamma`` and ``alpha`` are the ``palu`` method's settings
    (:func:`~palu_kernels.train.knobs.knob` fields); the others are options of the PALU terms
    every method measures.
    """

    k: int | None = 5000
    target: object = "mean"
    kl: str | None = "reverse"
    gamma: float = weight_knob(1.0, "local term")
    alpha: float = weight_knob(1.0, "KL and retain terms")
    backend: str = "auto"
    fused_linear: bool = False
    chunk_rows: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_config(config_class: type, given, method: str = ""):
    """The ``config_class`` instance of ``given``: a ``config_class`` instance (kept), a mapping
    of setting overrides (``{"beta": 0.2}``; a name ``config_class`` does not declare is a
    ``TypeError``) or ``None`` (the defaults)."""
    if isinstance(given, config_class):
        return given
    if given is None:
        return config_class()
    owner = method or config_class.__name__
    if not isinstance(given, Mapping):
        raise TypeError(f"{owner}: the settings (baseline=) must be a {config_class.__name__} "
                        f"or a dict of its settings, got {type(given).__name__}")
    own = knobs_of(config_class)
    unknown = sorted(set(given) - set(own))
    if unknown:
        raise TypeError(f"{owner} has no setting(s) {unknown}; its settings: "
                        f"{', '.join(own) or 'none'}")
    return config_class(**{k: v for k, v in given.items() if v is not None})


def forget_counts(inputs: dict) -> torch.Tensor:
    """``[forget answer tokens, forget sequences]`` of one collated batch (fp64)."""
    lab = inputs["forget_labels"]
    return torch.tensor([float((lab[:, 1:] != IGNORE_INDEX).sum()), float(lab.shape[0])],
                        dtype=torch.float64)


def batch_counts(inputs: dict) -> torch.Tensor:
    """The counts of one collated batch (fp64, CPU): ``[|I|, |C|, retain target tokens,
    forget answer tokens, forget sequences]``."""
    n_i = inputs["forget_initiating_mask"].sum()
    n_c = inputs["forget_common_mask"].sum()
    n_r = ((inputs["retain_labels"][:, 1:] != IGNORE_INDEX).sum() if "retain_labels" in inputs
           else 0)
    return torch.cat([torch.tensor([float(n_i), float(n_c), float(n_r)], dtype=torch.float64),
                      forget_counts(inputs)])


N_COUNTS = 5


class NonFiniteLossError(RuntimeError):
    """The training loss (or, at a checkpoint, a weight) is not finite: the run stops before
    the optimizer applies it (``docs/reliability.md``)."""


def nonfinite_parameters(model) -> list[str]:
    """Names of the parameters of ``model`` that hold a NaN or an infinity (of this process's
    shard, for a model sharded by FSDP2: no collective)."""
    out = []
    for name, p in model.named_parameters():
        t = p.detach()
        t = t.to_local() if hasattr(t, "to_local") else t
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            out.append(name)
    return out


class UnlearningTrainer(Trainer):
    """Base trainer of the unlearning methods (batches of :class:`~palu_kernels.io.data.
    PALUCollator`).

    Args:
        palu: a :class:`PALUConfig`; the settings of the PALU terms :meth:`measure` reports
            (and, for ``PALUTrainer``, of its loss).
        ref_model: the frozen reference. Default: for a PEFT model, the same model with its
            adapter disabled (no second copy of the weights); otherwise a deep copy of
            ``model`` made here, in eval mode, without gradients.
        baseline: the method's settings: an instance of its ``config_class`` or a dict of
            overrides (``{"beta": 0.2}``; ``None``: the defaults); refused by a method without
            a ``config_class``.
        All other arguments go to ``transformers.Trainer`` (use
        ``remove_unused_columns=False`` in the ``TrainingArguments``).

    A subclass sets ``method`` (its registry name), ``config_class`` (a
    :class:`~palu_kernels.train.knobs.MethodConfig` dataclass declaring its settings with
    :func:`~palu_kernels.train.knobs.knob`, available as ``self.method_config``;
    ``gamma``/``alpha`` fields weight its forget loss and the retain NLL), ``uses_retain`` and
    overrides :meth:`forget_loss`.
    Logged next to ``loss``: the raw terms :meth:`forget_loss` returns, ``retain_nll`` (mean
    retain NLL per token), ``n_initiating``, ``n_common``, averaged over the optimizer steps
    since the previous log.
    """

    method = ""
    config_class: type | None = None
    uses_retain = True
    uses_spans = False  # the loss reads the sensitive spans (else span-less data is accepted)
    supports_fused_linear = False
    loss_function = None  # the method's loss on per-sequence values, when it has one

    # compute_loss divides by the counts of the whole effective batch itself.
    loss_is_scaled_for_ga = True

    def __init__(self, *args, palu: PALUConfig | None = None, ref_model=None, baseline=None,
                 **kwargs):
        if self.config_class is not None:
            self.method_config = resolve_config(self.config_class, baseline, self.method)
        elif baseline is not None:
            raise TypeError(f"{type(self).__name__} takes no baseline= settings")
        else:
            self.method_config = None
        super().__init__(*args, **kwargs)
        self.palu = palu or PALUConfig()
        self._use_adapter_ref = ref_model is None and is_peft_model(self.model)
        if ref_model is None and not self._use_adapter_ref:
            ref_model = copy.deepcopy(self.model)
        if ref_model is not None:
            ref_model.eval().requires_grad_(False)
        self.ref_model = ref_model
        self.engine = engine_of(self.accelerator)
        check_engine(self.engine, fused_linear=self.palu.fused_linear,
                     lora=is_peft_model(self.model))
        self._metric_sums: dict[str, torch.Tensor] = {}
        self._metric_windows = 0  # optimizer steps since the last log
        self.add_callback(_FiniteCheckpoints(self))
        if self.palu.fused_linear and not self.supports_fused_linear:
            raise FusedLinearError(
                f"fused_linear applies to the PALU loss only; {type(self).__name__} has its "
                "own forget objective (forget_loss), which needs full logits")

    @classmethod
    def settings_class(cls) -> type | None:
        """The dataclass whose :func:`~palu_kernels.train.knobs.knob` fields are this method's
        settings (the registry reads them): ``config_class``."""
        return cls.config_class

    @property
    def hparams(self) -> dict:
        """The method's hyper-parameters (``{}`` for a method without a ``config_class``)."""
        cfg = self.method_config
        return asdict(cfg) if is_dataclass(cfg) else {}

    @property
    def retain_weight(self) -> float:
        """Weight of the retain NLL: the method's ``alpha``."""
        return float(self.method_config.alpha)

    # ------------------------------------------------------------------ counts over the window
    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """Collect a gradient-accumulation window and count over it.

        Returns the samples and a fp64 tensor (:func:`batch_counts`: ``[|I|, |C|, n_retain,
        forget answer tokens, forget sequences]``) summed over the window and over all
        processes; :meth:`compute_loss` receives it as ``num_items_in_batch``.
        """
        samples = []
        for _ in range(num_batches):
            try:
                samples.append(next(epoch_iterator))
            except StopIteration:
                break
        counts = torch.zeros(N_COUNTS, dtype=torch.float64)
        for batch in samples:
            counts += batch_counts(batch)
        counts = counts.to(device)
        self._metric_windows += 1
        if self.accelerator.num_processes > 1:
            counts = self.accelerator.reduce(counts, reduction="sum")
        return samples, counts

    # ------------------------------------------------------------------ pieces of the loss
    def reference_logits(self, model, input_ids, attention_mask) -> torch.Tensor:
        """Logits of the frozen reference on a batch (no gradient)."""
        with torch.no_grad():
            if self._use_adapter_ref:
                base = self.accelerator.unwrap_model(model)
                was_training = base.training
                base.eval()
                try:
                    with base.disable_adapter():
                        return base(input_ids=input_ids, attention_mask=attention_mask).logits
                finally:
                    base.train(was_training)
            ref = self.ref_model
            if is_fsdp2(model):  # sharded like the trainee, over the same processes
                ref = shard_reference(ref, model)
            p = next(ref.parameters())
            if p.device != input_ids.device:
                ref.to(input_ids.device)
            return ref(input_ids=input_ids, attention_mask=attention_mask).logits

    def forget_loss(self, model, inputs, counts):
        """The forget objective of one micro-batch, normalised by the window ``counts``
        (:func:`batch_counts`, on the batch's device); returns ``(loss, logs)``, ``logs`` the
        detached raw terms to log. Every method overrides it."""
        raise NotImplementedError

    def retain_loss(self, model, inputs, counts):
        """Summed retain NLL of the micro-batch divided by the window's retain token count
        (``None`` without a retain part, or for a method with ``uses_retain = False``)."""
        if not self.uses_retain or "retain_input_ids" not in inputs:
            return None
        out = model(input_ids=inputs["retain_input_ids"],
                    attention_mask=inputs["retain_attention_mask"])
        logits = out.logits[:, :-1]
        labels = inputs["retain_labels"][:, 1:]
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
            ignore_index=IGNORE_INDEX, reduction="sum",
        )
        return nll / counts[2].clamp(min=1).to(nll.dtype)

    # ------------------------------------------------------------------ Trainer hooks
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """forget_loss + alpha * retain NLL, normalised over the gradient-accumulation window.

        ``num_items_in_batch`` is the count tensor from :meth:`get_batch_samples`; when it is
        missing (e.g. called directly), the micro-batch's own counts are used.
        """
        counts = num_items_in_batch
        scale = 1.0
        if not (torch.is_tensor(counts) and counts.shape == (N_COUNTS,)):
            counts = batch_counts(inputs)
            # Not normalised over the window by the counts: divide by the number of micro-batches.
            if model.training:
                scale = 1.0 / max(1, getattr(self, "current_gradient_accumulation_steps", 1))
        else:
            # DDP averages gradients over processes; the counts are global sums, so undo it.
            scale = float(self.accelerator.num_processes)
        device = inputs["forget_input_ids"].device
        counts = counts.to(device)
        loss, logs = self.forget_loss(model, inputs, counts)
        retain = self.retain_loss(model, inputs, counts)
        if retain is not None:
            loss = loss + self.retain_weight * retain
            logs["retain_nll"] = retain.detach()
        if model.training:
            self._record(logs, counts)
        if scale != 1.0:  # (exactly 1 keeps grad_output at 1: the fused backward is free)
            loss = loss * scale
        return (loss, {"loss": loss.detach()}) if return_outputs else loss

    def _any_process(self, flag: bool) -> bool:
        """``flag`` or-ed over the processes (every process takes the same branch)."""
        if self.accelerator.num_processes <= 1:
            return flag
        t = torch.tensor([float(flag)], device=self.args.device)
        return bool(self.accelerator.reduce(t, reduction="sum").item() > 0)

    def training_step(self, model, inputs, num_items_in_batch=None):
        """``Trainer.training_step`` (forward and backward), then the loss must be finite: a
        NaN or infinity raises :class:`NonFiniteLossError` before the optimizer uses the
        gradient (``transformers`` would otherwise log the previous mean and step on)."""
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self._any_process(not bool(torch.isfinite(loss.detach()).all())):
            bad = [n for n, v in self._metric_sums.items() if not bool(torch.isfinite(v).all())]
            raise NonFiniteLossError(
                f"the training loss is not finite ({loss.detach().float().mean().item()}) at "
                f"optimizer step {self.state.global_step + 1}"
                + (f" (non-finite terms: {', '.join(sorted(bad))})" if bad else ""))
        return loss

    def _get_grad_norm(self, model, grad_norm=None):
        """``Trainer._get_grad_norm`` (the norm before clipping, computed just before the
        optimizer step), which must be finite: an infinite or NaN norm (a finite loss whose
        gradient overflows) would turn the weights into NaN at this step."""
        norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        value = float(norm.item() if torch.is_tensor(norm) else norm) if norm is not None else 0.0
        if not torch.isfinite(torch.tensor(value)):
            raise NonFiniteLossError(f"the gradient norm is not finite ({value}) at optimizer "
                                     f"step {self.state.global_step + 1}")
        return norm

    def check_finite_weights(self) -> None:
        """:class:`NonFiniteLossError` when a weight of the model holds a NaN or infinity."""
        bad = nonfinite_parameters(self.accelerator.unwrap_model(self.model))
        if self._any_process(bool(bad)):
            raise NonFiniteLossError(
                f"the weights are not finite after optimizer step {self.state.global_step}"
                + (f" ({len(bad)} tensors, e.g. {bad[0]})" if bad else ""))

    def _record(self, logs: dict, counts: torch.Tensor) -> None:
        for name, value in logs.items():
            v = value.detach().double().reshape(())
            self._metric_sums[name] = self._metric_sums.get(name, 0) + v
        self._metric_last_counts = counts.detach().double()

    def log(self, logs: dict, start_time=None) -> None:
        """Adds the separate loss terms (averaged over steps since the last log)."""
        if self._metric_sums and "loss" in logs:
            names = sorted(self._metric_sums)
            vals = torch.stack([self._metric_sums[n].to(self.args.device) for n in names])
            if self.accelerator.num_processes > 1:
                vals = self.accelerator.reduce(vals, reduction="sum")
            steps = max(1, self._metric_windows)
            for n, v in zip(names, vals.tolist()):
                logs[n] = round(v / steps, 6)
            counts = getattr(self, "_metric_last_counts", None)
            if counts is not None:
                logs["n_initiating"], logs["n_common"] = int(counts[0]), int(counts[1])
            self._metric_sums = {}
            self._metric_windows = 0
        super().log(logs, start_time)

    # ------------------------------------------------------------------ measurements
    @torch.no_grad()
    def measure(self, items: list[dict], batch_size: int = 8, desc: str = "measure") -> dict:
        """Mean losses of the current model on collated ``items`` (no training, no gradient),
        the same for every method.

        Returns ``forget_nll`` (mean NLL per forget answer token, EOS included),
        ``forget_local`` (mean PALU local term over I), ``forget_kl`` (mean KL over C, against
        the reference; both with ``self.palu``'s k, target, kl and backend) and, when the items
        have a retain part, ``retain_nll``.
        """
        from tqdm.auto import tqdm

        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        sums = torch.zeros(5, dtype=torch.float64)  # nll, local, kl, retain nll, retain tokens
        n_answer, n_i, n_c = 0, 0, 0
        cfg = self.palu
        try:
            for s in tqdm(range(0, len(items), batch_size), desc=desc, leave=False,
                          disable=not self.is_world_process_zero()):
                batch = {k: v.to(device) for k, v in self.data_collator(items[s:s + batch_size]).items()}
                ids, att = batch["forget_input_ids"], batch["forget_attention_mask"]
                logits = model(input_ids=ids, attention_mask=att).logits
                ref = self.reference_logits(model, ids, att)
                lab = batch["forget_labels"][:, 1:]
                sums[0] += torch.nn.functional.cross_entropy(
                    logits[:, :-1].reshape(-1, logits.shape[-1]).float(), lab.reshape(-1),
                    ignore_index=IGNORE_INDEX, reduction="sum").item()
                n_answer += int((lab != IGNORE_INDEX).sum())
                imask, cmask = batch["forget_initiating_mask"], batch["forget_common_mask"]
                rows = palu_local_entropy_loss(logits, ref, imask, cmask, k=cfg.k, target=cfg.target,
                                               kl=cfg.kl, reduction="none", backend=cfg.backend)
                sums[1] += rows[imask].sum().item()
                sums[2] += rows[cmask].sum().item()
                n_i, n_c = n_i + int(imask.sum()), n_c + int(cmask.sum())
                if "retain_input_ids" in batch:
                    rl = model(input_ids=batch["retain_input_ids"],
                               attention_mask=batch["retain_attention_mask"]).logits
                    rlab = batch["retain_labels"][:, 1:]
                    sums[3] += torch.nn.functional.cross_entropy(
                        rl[:, :-1].reshape(-1, rl.shape[-1]).float(), rlab.reshape(-1),
                        ignore_index=IGNORE_INDEX, reduction="sum").item()
                    sums[4] += int((rlab != IGNORE_INDEX).sum())
        finally:
            model.train(was_training)
        out = {"forget_nll": sums[0].item() / max(1, n_answer),
               "forget_local": sums[1].item() / max(1, n_i),
               "forget_kl": sums[2].item() / max(1, n_c)}
        if sums[4] > 0:
            out["retain_nll"] = sums[3].item() / sums[4].item()
        return out


class _FiniteCheckpoints(TrainerCallback):
    """Before a checkpoint is written (``on_step_end`` runs after ``DefaultFlowCallback`` set
    ``should_save``), the weights must be finite: no checkpoint holds a ruined model, so the
    last checkpoint on disk is the last good one."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kw):
        if control.should_save:
            self.trainer.check_finite_weights()


__all__ = ["NonFiniteLossError", "PALUConfig", "UnlearningTrainer", "batch_counts",
           "forget_counts", "nonfinite_parameters", "resolve_config"]
