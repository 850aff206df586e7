"""PALU: the PALU forget loss plus retain NLL, on :class:`~palu_kernels.train.base.UnlearningTrainer`.

One optimisation step on an effective batch minimises

    gamma * sum_I L_local / |I|  +  alpha * sum_C KL / |C|  +  alpha * sum NLL_retain / n_retain

with the counts of the whole effective batch (``docs/spec.md``; the released code uses
the same ``alpha`` for the KL and the retain term).

With ``PALUConfig(fused_linear=True)`` (``palu-unlearn --fused-linear``) the forget batch never
produces its ``[B, T, V]`` logits: both models run their decoder body to the last hidden states
and :func:`palu_kernels.fused_linear.palu_fused_linear_loss` projects only the rows in ``I``
and ``C``, a chunk at a time, with each model's ``lm_head`` weight (see
:func:`palu_kernels.train.heads.fused_head`). The retain NLL and
:meth:`~palu_kernels.train.base.UnlearningTrainer.measure` still use full logits.
"""

from __future__ import annotations

import torch

from ...fused_linear import palu_fused_linear_loss
from ...loss import palu_local_entropy_loss
from ...masks import mean_row_weights
from ..base import PALUConfig, UnlearningTrainer
from ..distributed import EngineError, fsdp_call, is_fsdp2, is_sharded, shard_reference
from ..heads import FusedHead, fused_head, last_hidden_states


class PALUTrainer(UnlearningTrainer):
    """Trainer for PALU unlearning on batches from :class:`~palu_kernels.io.data.PALUCollator`.

    Args:
        palu: a :class:`~palu_kernels.train.base.PALUConfig` (k, target, kl, gamma, alpha,
            backend, fused_linear, chunk_rows).
        ref_model: the frozen reference (see :class:`~palu_kernels.train.base.UnlearningTrainer`).
        All other arguments go to ``transformers.Trainer`` (use
        ``remove_unused_columns=False`` in the ``TrainingArguments``).

    Logged next to ``loss``: ``forget_local`` (mean local term over I), ``forget_kl`` (mean KL
    over C), ``retain_nll`` (mean retain NLL per token), ``n_initiating``, ``n_common``, all
    unweighted and averaged over the optimizer steps since the previous log.
    """

    method = "palu"
    uses_spans = True
    supports_fused_linear = True

    @classmethod
    def settings_class(cls) -> type:
        """PALU's settings are :class:`~palu_kernels.train.base.PALUConfig`'s ``gamma`` and
        ``alpha`` (given in ``palu=``, which every method also reads for the PALU terms it
        measures)."""
        return PALUConfig

    def __init__(self, *args, palu: PALUConfig | None = None, ref_model=None, **kwargs):
        super().__init__(*args, palu=palu, ref_model=ref_model, **kwargs)
        self._fused_heads: dict[int, FusedHead] = {}
        if self.palu.fused_linear:
            self._fused_head(self.model)  # refuse unsupported models before any training
            if self.ref_model is not None:
                self._fused_head(self.ref_model)

    @property
    def retain_weight(self) -> float:
        """Weight of the retain NLL: ``PALUConfig.alpha`` (the KL's weight too)."""
        return self.palu.alpha

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
        if is_fsdp2(model):
            return self._fused_rows_fsdp2(model, ids, att, imask, cmask)
        ref_hidden, ref_w, ref_b = self.reference_hidden(model, ids, att)
        head = self._fused_head(self.accelerator.unwrap_model(model))
        hidden = last_hidden_states(model, head, ids, att)
        return self._fused_rows(hidden, head.linear.weight, head.linear.bias, ref_hidden, ref_w,
                                ref_b, imask, cmask)

    def _fused_rows_fsdp2(self, model, ids, att, imask, cmask) -> torch.Tensor:
        """:meth:`fused_forget_rows` under FSDP2: each model's decoder and projection run as a
        forward method of its sharded root (:func:`~palu_kernels.train.distributed.fsdp_call`),
        so ``lm_head.weight`` is whole, not this process's shard, in the forward and in the
        backward of the fused loss."""
        ref = shard_reference(self.ref_model, model)
        ref_head, head = self._fused_head(ref), self._fused_head(model)

        def reference(ids, att):
            with torch.no_grad():
                h = ref_head.decoder(input_ids=ids, attention_mask=att,
                                     use_cache=False).last_hidden_state
            return h, ref_head.linear.weight.detach(), ref_head.linear.bias

        ref_hidden, ref_w, ref_b = fsdp_call(ref, reference, ids, att)

        def trained(ids, att):
            h = head.decoder(input_ids=ids, attention_mask=att, use_cache=False).last_hidden_state
            return self._fused_rows(h, head.linear.weight, head.linear.bias, ref_hidden, ref_w,
                                    ref_b, imask, cmask)

        return fsdp_call(model, trained, ids, att)

    def _fused_rows(self, hidden, w, b, ref_hidden, ref_w, ref_b, imask, cmask) -> torch.Tensor:
        for name, t in (("lm_head weight", w), ("reference lm_head weight", ref_w)):
            if is_sharded(t):  # the kernels read raw memory: a shard would be read as the whole
                raise EngineError(
                    f"`fused_linear`: the {name} is an FSDP shard (DTensor) here, not the whole "
                    "[V, H] matrix; the fused loss must run inside the engine's forward of the "
                    "head (palu_kernels.train.distributed.fsdp_call)")
        cfg = self.palu
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
        w = mean_row_weights(imask, cmask, counts=(n_i, n_c))
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


__all__ = ["PALUConfig", "PALUTrainer"]
