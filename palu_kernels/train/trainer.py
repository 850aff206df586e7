"""``PALUTrainer``: a ``transformers.Trainer`` whose loss is the PALU forget loss plus retain NLL.

One optimisation step on an effective batch (all micro-batches of a gradient-accumulation
window, on all processes) minimises

    gamma * sum_I L_local / |I|  +  alpha * sum_C KL / |C|  +  alpha * sum NLL_retain / n_retain

where the three counts are taken over the whole effective batch (see
:meth:`PALUTrainer.get_batch_samples`), so the gradient does not depend on how the batch is
split into micro-batches or processes (``docs/palu_loss.md``; the released code uses the same
``alpha`` for the KL and the retain term).

Subclasses implement other forget objectives by overriding :meth:`PALUTrainer.forget_loss`
(it returns the summed loss of the micro-batch and the raw sums it wants logged).

With ``PALUConfig(fused_linear=True)`` (``palu-unlearn --fused-linear``) the forget batch never
produces its ``[B, T, V]`` logits: both models run their decoder body to the last hidden states
and :func:`palu_kernels.fused_linear.palu_fused_linear_loss` projects only the rows in ``I``
and ``C``, a chunk at a time, with each model's ``lm_head`` weight (see
:func:`fused_head`). The retain NLL and :meth:`PALUTrainer.measure` still use full logits.
"""

from __future__ import annotations

import copy
import inspect
import sys
from dataclasses import asdict, dataclass

import torch
from transformers import Trainer

from ..fused_linear import palu_fused_linear_loss
from ..loss import palu_local_entropy_loss


@dataclass
class PALUConfig:
    """Options of the PALU objective (see ``palu_local_entropy_loss``).

    ``fused_linear``: compute the forget loss from the last hidden states and the ``lm_head``
    weight (:func:`~palu_kernels.fused_linear.palu_fused_linear_loss`), so the forget batch's
    ``[B, T, V]`` logits are never materialised; PALU only, for models whose output
    projection is a plain ``torch.nn.Linear`` (see :func:`fused_head`). ``chunk_rows``: rows
    projected at once on that path (None: chosen from V and the hidden size).
    """

    k: int | None = 5000
    target: object = "mean"
    kl: str | None = "reverse"
    gamma: float = 1.0
    alpha: float = 1.0
    backend: str = "auto"
    fused_linear: bool = False
    chunk_rows: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def is_peft_model(model) -> bool:
    """Whether ``model`` is a PEFT model (without importing peft when nobody did)."""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def batch_counts(inputs: dict) -> torch.Tensor:
    """``[|I|, |C|, retain target tokens]`` of one collated batch (fp64, CPU)."""
    n_i = inputs["forget_initiating_mask"].sum()
    n_c = inputs["forget_common_mask"].sum()
    n_r = (inputs["retain_labels"][:, 1:] != -100).sum() if "retain_labels" in inputs else 0
    return torch.tensor([float(n_i), float(n_c), float(n_r)], dtype=torch.float64)


# ----------------------------------------------------------------------------- fused lm_head
class FusedLinearError(ValueError):
    """The model cannot use ``fused_linear`` (``--fused-linear``); the message says why."""


# Config fields that transform the logits after the output projection: (name, what it does,
# values that leave the logits alone). The fused loss would silently drop the transform.
_HEAD_TRANSFORMS = (
    ("final_logit_softcapping", "soft-caps the logits (tanh) after the lm_head", (None, 0, 0.0)),
    ("logit_softcapping", "soft-caps the logits (tanh) after the lm_head", (None, 0, 0.0)),
    ("logit_scale", "multiplies the logits by a scale", (None, 1, 1.0)),
    ("logits_scaling", "divides the logits by a scale", (None, 1, 1.0)),
    ("lm_head_multiplier", "multiplies the logits by a scale", (None, 1, 1.0)),
)
_KEEP_KWARGS = ("logits_to_keep", "num_logits_to_keep")


@dataclass(frozen=True)
class FusedHead:
    """What the fused path needs of a causal LM: its decoder body (whose output is the last,
    normalised hidden state), its plain ``lm_head`` and the forward keyword that limits the
    positions the model itself projects (``logits_to_keep``)."""

    decoder: torch.nn.Module
    linear: torch.nn.Linear
    keep_kwarg: str


def fused_head(model, *, check=True) -> FusedHead:
    """The :class:`FusedHead` of a causal LM (a PEFT model: of its base model), or a
    :class:`FusedLinearError` naming why the fused PALU loss cannot replace its logits.

    Supported: models whose logits are ``lm_head(decoder(...).last_hidden_state)`` with
    ``get_output_embeddings()`` a plain ``torch.nn.Linear`` (Llama, Qwen2/3, SmolLM, Mistral,
    Phi-3, Gemma 1, ...; tied embeddings included: the weight is the shared parameter) and a
    forward that takes ``logits_to_keep``. Refused: a head that is not a plain ``nn.Linear``
    (a subclass, a quantized or LoRA-wrapped layer), a config that soft-caps or scales the
    logits (:data:`_HEAD_TRANSFORMS`, e.g. Gemma 2's ``final_logit_softcapping``), PEFT
    prompt-learning adapters. With ``check=True`` the model also runs once on 8 tokens (eval
    mode, no gradient) and the projected hidden states must reproduce its logits, which
    catches transforms no config field announces.
    """
    base = model
    name = type(model).__name__
    if is_peft_model(model):
        cfg = model.peft_config.get(model.active_adapter) if hasattr(model, "peft_config") else None
        if getattr(cfg, "is_prompt_learning", False):
            raise FusedLinearError(
                f"--fused-linear: the PEFT adapter of {name} is a prompt-learning method "
                f"({getattr(cfg, 'peft_type', '?')}) that feeds virtual tokens through the "
                "PEFT forward; use LoRA-style adapters or drop --fused-linear")
        base = model.get_base_model()
        name = type(base).__name__
    get_head = getattr(base, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if type(head) is not torch.nn.Linear:
        raise FusedLinearError(
            f"--fused-linear needs an output projection that is a plain torch.nn.Linear "
            f"(model.get_output_embeddings()); {name} has "
            f"{'none' if head is None else type(head).__module__ + '.' + type(head).__qualname__}"
            " (a subclass, quantized or adapter-wrapped layer may compute something else)")
    config = getattr(base, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    for field, what, neutral in _HEAD_TRANSFORMS:
        value = getattr(config, field, None)
        if value not in neutral:
            raise FusedLinearError(
                f"--fused-linear: {name} sets config.{field}={value!r}, which {what}; the fused "
                "loss projects hidden states with the lm_head weight only, so it would train "
                "on different logits. Drop --fused-linear for this model")
    params = inspect.signature(base.forward).parameters
    keep = next((k for k in _KEEP_KWARGS if k in params), None)
    if keep is None:
        raise FusedLinearError(
            f"--fused-linear: {name}.forward takes no logits_to_keep argument, so its logits "
            "could not be skipped; drop --fused-linear for this model")
    get_decoder = getattr(base, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else None
    if not isinstance(decoder, torch.nn.Module) or decoder is base:
        raise FusedLinearError(
            f"--fused-linear: cannot find the decoder body of {name} (get_decoder())")
    out = FusedHead(decoder=decoder, linear=head, keep_kwarg=keep)
    if check:
        _check_projection(model, out, name)
    return out


def last_hidden_states(model, head: FusedHead, input_ids, attention_mask) -> torch.Tensor:
    """``[B, T, H]`` last hidden states of ``model`` (row t predicts token t+1).

    Calls ``model`` itself (so a DDP or PEFT wrapper runs its forward) with
    ``logits_to_keep=1``: the model projects one position per sequence, and the decoder's
    output is taken with a forward hook.
    """
    captured = []

    def hook(module, args, output):
        captured.append(output.last_hidden_state if hasattr(output, "last_hidden_state")
                        else output[0])

    handle = head.decoder.register_forward_hook(hook)
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
              **{head.keep_kwarg: 1})
    finally:
        handle.remove()
    if len(captured) != 1:
        raise FusedLinearError(f"--fused-linear: the decoder body ran {len(captured)} times in "
                               "one forward; expected once")
    return captured[0]


@torch.no_grad()
def _check_projection(model, head: FusedHead, name: str) -> None:
    """Run ``model`` on 8 tokens: ``lm_head(last hidden states)`` must equal its logits."""
    p = next(model.parameters())
    ids = (torch.arange(1, 9, device=p.device) % head.linear.weight.shape[0])[None]
    att = torch.ones_like(ids)
    was_training = model.training
    model.eval()
    try:
        logits = model(input_ids=ids, attention_mask=att, use_cache=False).logits.float()
        hidden = last_hidden_states(model, head, ids, att)
        proj = torch.nn.functional.linear(hidden, head.linear.weight, head.linear.bias).float()
    finally:
        model.train(was_training)
    if proj.shape != logits.shape:
        raise FusedLinearError(
            f"--fused-linear: lm_head(last hidden states) of {name} has shape "
            f"{list(proj.shape)}, its logits {list(logits.shape)}")
    err = (proj - logits).abs().max().item()
    scale = logits.abs().max().item()
    if not err <= 1e-3 * scale + 1e-6:
        raise FusedLinearError(
            f"--fused-linear: the logits of {name} are not lm_head(last hidden states): they "
            f"differ by up to {err:.3g} (logits up to {scale:.3g}), so the model transforms "
            "them after the output projection (scaling, soft-capping, ...); drop --fused-linear")


class PALUTrainer(Trainer):
    """Trainer for PALU unlearning on batches from :class:`~palu_kernels.train.data.PALUCollator`.

    Args:
        palu: a :class:`PALUConfig` (k, target, kl, gamma, alpha, backend).
        ref_model: the frozen reference. Default: for a PEFT model, the same model with its
            adapter disabled (no second copy of the weights); otherwise a deep copy of
            ``model`` made here, in eval mode, without gradients.
        All other arguments go to ``transformers.Trainer`` (use
        ``remove_unused_columns=False`` in the ``TrainingArguments``).

    Logged next to ``loss``: ``forget_local`` (mean local term over I), ``forget_kl`` (mean KL
    over C), ``retain_nll`` (mean retain NLL per token), ``n_initiating``, ``n_common``, all
    unweighted and averaged over the optimizer steps since the previous log.
    """

    # compute_loss divides by the counts of the whole effective batch itself.
    loss_is_scaled_for_ga = True

    def __init__(self, *args, palu: PALUConfig | None = None, ref_model=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.palu = palu or PALUConfig()
        self._use_adapter_ref = ref_model is None and is_peft_model(self.model)
        if ref_model is None and not self._use_adapter_ref:
            ref_model = copy.deepcopy(self.model)
        if ref_model is not None:
            ref_model.eval().requires_grad_(False)
        self.ref_model = ref_model
        self._metric_sums: dict[str, torch.Tensor] = {}
        self._metric_windows = 0  # optimizer steps since the last log
        self._fused_heads: dict[int, FusedHead] = {}
        if self.palu.fused_linear:
            if type(self).forget_loss is not PALUTrainer.forget_loss:
                raise FusedLinearError(
                    f"--fused-linear applies to the PALU loss only; {type(self).__name__} "
                    "replaces the forget objective (forget_loss), which needs full logits")
            self._fused_head(self.model)  # refuse unsupported models before any training
            if self.ref_model is not None:
                self._fused_head(self.ref_model)

    # ------------------------------------------------------------------ counts over the window
    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """Collect a gradient-accumulation window and count I, C and retain tokens over it.

        Returns the samples and a fp64 tensor ``[|I|, |C|, n_retain]`` summed over the window
        and over all processes; :meth:`compute_loss` receives it as ``num_items_in_batch``.
        """
        samples = []
        for _ in range(num_batches):
            try:
                samples.append(next(epoch_iterator))
            except StopIteration:
                break
        counts = torch.zeros(3, dtype=torch.float64)
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
            p = next(ref.parameters())
            if p.device != input_ids.device:
                ref.to(input_ids.device)
            return ref(input_ids=input_ids, attention_mask=attention_mask).logits

    def _fused_head(self, model) -> FusedHead:
        """:func:`fused_head` of ``model`` (checked once, then cached)."""
        head = self._fused_heads.get(id(model))
        if head is None:
            head = self._fused_heads[id(model)] = fused_head(model)
        return head

    def reference_hidden(self, model, input_ids, attention_mask):
        """Last hidden states of the frozen reference and its output projection, for the fused
        path: ``(hidden [B, T, H], weight [V, H], bias or None)``, no gradient."""
        with torch.no_grad():
            if self._use_adapter_ref:
                base = self.accelerator.unwrap_model(model)
                head = self._fused_head(base)
                was_training = base.training
                base.eval()
                try:
                    with base.disable_adapter():
                        hidden = last_hidden_states(base, head, input_ids, attention_mask)
                finally:
                    base.train(was_training)
            else:
                ref = self.ref_model
                if next(ref.parameters()).device != input_ids.device:
                    ref.to(input_ids.device)
                head = self._fused_head(ref)
                hidden = last_hidden_states(ref, head, input_ids, attention_mask)
        return hidden, head.linear.weight.detach(), head.linear.bias

    def _fused_dtype(self, device_type: str, weight_dtype: torch.dtype) -> torch.dtype:
        """The one dtype of the fused call: the one the lm_head runs in on the logits path.

        That is autocast's when the call site is under autocast, else the mixed-precision
        dtype (accelerate runs the model's forward under autocast: ``--bf16``), else the
        weight's. The loss arithmetic itself is fp32 in any case.
        """
        if torch.is_autocast_enabled(device_type):
            return torch.get_autocast_dtype(device_type)
        mixed = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(
            str(getattr(self.accelerator, "mixed_precision", "no")))
        return mixed if mixed is not None and weight_dtype == torch.float32 else weight_dtype

    def fused_forget_rows(self, model, inputs) -> torch.Tensor:
        """Per-row PALU values ``[B, T]`` (gamma = alpha = 1) of the forget batch, from the
        last hidden states and ``lm_head`` weights of both models
        (:func:`~palu_kernels.fused_linear.palu_fused_linear_loss`); no ``[B, T, V]`` logits.

        Differentiable with respect to the model's hidden states, ``lm_head`` weight and bias
        (a tied weight is the embedding parameter itself, so both uses add to its gradient).
        The per-row output makes the fused function recompute each chunk's logits in backward
        (weighted by ``gamma / |I|`` and ``alpha / |C|``), with one weight-sized gradient buffer.
        """
        ids, att = inputs["forget_input_ids"], inputs["forget_attention_mask"]
        imask, cmask = inputs["forget_initiating_mask"], inputs["forget_common_mask"]
        cfg = self.palu
        ref_hidden, ref_w, ref_b = self.reference_hidden(model, ids, att)
        head = self._fused_head(self.accelerator.unwrap_model(model))
        hidden = last_hidden_states(model, head, ids, att)
        w, b = head.linear.weight, head.linear.bias
        dev = hidden.device.type
        dtype = self._fused_dtype(dev, w.dtype)
        cast = (lambda t: None if t is None else t.to(dtype))  # noqa: E731
        with torch.autocast(device_type=dev, enabled=False):
            # Rows are already shifted (row t predicts token t+1), as for the logits path.
            return palu_fused_linear_loss(
                cast(hidden), cast(w), cast(ref_hidden), cast(ref_w), imask,
                cmask if cfg.kl is not None else None, bias=cast(b), ref_bias=cast(ref_b),
                chunk_rows=cfg.chunk_rows, k=cfg.k, target=cfg.target, kl=cfg.kl, gamma=1.0,
                alpha=1.0, reduction="none", backend=cfg.backend,
            )

    def forget_loss(self, model, inputs, counts):
        """PALU forget loss of one micro-batch, normalised by the window counts.

        Returns ``(loss, sums)``: ``loss`` = gamma * sum_I L_local / |I| + alpha * sum_C KL / |C|
        (counts of the whole window), ``sums`` the raw per-term sums to log
        (``{"forget_local": ..., "forget_kl": ...}``, divided by the same counts).
        Override in a subclass for another forget objective.
        """
        ids, att = inputs["forget_input_ids"], inputs["forget_attention_mask"]
        imask, cmask = inputs["forget_initiating_mask"], inputs["forget_common_mask"]
        cfg = self.palu
        n_i = counts[0].clamp(min=1)
        n_c = counts[1].clamp(min=1)
        if cfg.fused_linear:
            rows = self.fused_forget_rows(model, inputs)
            local = rows[imask].sum() / n_i.to(rows.dtype)
            kl = rows[cmask].sum() / n_c.to(rows.dtype)
            loss = cfg.gamma * local + cfg.alpha * kl
            logs = {"forget_local": local.detach(), "forget_kl": kl.detach()}
            return loss, {k: v for k, v in logs.items()
                          if (cfg.gamma if k == "forget_local" else cfg.alpha)}
        ref = self.reference_logits(model, ids, att)
        logits = model(input_ids=ids, attention_mask=att).logits
        # The window normalisation goes in as per-row weights (1/|I| on I rows, 1/|C| on C
        # rows), so the rows come back already weighted and their plain sum is the loss:
        # the kernel's gradient is complete after the forward, and the backward has nothing
        # to do (grad_output is exactly 1), with no N x V tensor in the backward. Rows are
        # already shifted (row t predicts token t+1; the last row is in neither mask), so
        # the full [B, T, V] logits go in without a sliced copy.
        w = (imask / n_i.to(torch.float32) + cmask / n_c.to(torch.float32)).to(torch.float32)
        rows = palu_local_entropy_loss(
            logits, ref, imask, cmask, k=cfg.k, target=cfg.target, kl=cfg.kl, gamma=cfg.gamma,
            alpha=cfg.alpha, reduction="none", weights=w, backend=cfg.backend,
        )
        loss = rows.sum()
        logs = {}
        with torch.no_grad():  # the separate terms, for the logs (gamma, alpha taken out);
            # a term with weight 0 is not computed into the rows, so it is not logged
            if cfg.gamma:
                logs["forget_local"] = rows[imask].sum() / cfg.gamma
            if cfg.alpha:  # (0 when kl is None: no common row carries a term)
                logs["forget_kl"] = rows[cmask].sum() / cfg.alpha
        return loss, logs

    def retain_loss(self, model, inputs, counts):
        """Summed retain NLL of the micro-batch divided by the window's retain token count."""
        if "retain_input_ids" not in inputs:
            return None
        out = model(input_ids=inputs["retain_input_ids"],
                    attention_mask=inputs["retain_attention_mask"])
        logits = out.logits[:, :-1]
        labels = inputs["retain_labels"][:, 1:]
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
            ignore_index=-100, reduction="sum",
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
        if not (torch.is_tensor(counts) and counts.shape == (3,)):
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
            loss = loss + self.palu.alpha * retain
            logs["retain_nll"] = retain.detach()
        if model.training:
            self._record(logs, counts)
        if scale != 1.0:  # (exactly 1 keeps grad_output at 1: the fused backward is free)
            loss = loss * scale
        return (loss, {"loss": loss.detach()}) if return_outputs else loss

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
        """Mean losses of the current model on collated ``items`` (no training, no gradient).

        Returns ``forget_nll`` (mean NLL per forget answer token, EOS included),
        ``forget_local`` (mean local term over I), ``forget_kl`` (mean KL over C, against the
        reference) and, when the items have a retain part, ``retain_nll``.
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
                    ignore_index=-100, reduction="sum").item()
                n_answer += int((lab != -100).sum())
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
                        ignore_index=-100, reduction="sum").item()
                    sums[4] += int((rlab != -100).sum())
        finally:
            model.train(was_training)
        out = {"forget_nll": sums[0].item() / max(1, n_answer),
               "forget_local": sums[1].item() / max(1, n_i),
               "forget_kl": sums[2].item() / max(1, n_c)}
        if sums[4] > 0:
            out["retain_nll"] = sums[3].item() / sums[4].item()
        return out
