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
"""

from __future__ import annotations

import copy
import sys
from dataclasses import asdict, dataclass

import torch
from transformers import Trainer

from ..loss import palu_local_entropy_loss


@dataclass
class PALUConfig:
    """Options of the PALU objective (see ``palu_local_entropy_loss``)."""

    k: int | None = 5000
    target: object = "mean"
    kl: str | None = "reverse"
    gamma: float = 1.0
    alpha: float = 1.0
    backend: str = "auto"

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

    def forget_loss(self, model, inputs, counts):
        """PALU forget loss of one micro-batch, normalised by the window counts.

        Returns ``(loss, sums)``: ``loss`` = gamma * sum_I L_local / |I| + alpha * sum_C KL / |C|
        (counts of the whole window), ``sums`` the raw per-term sums to log
        (``{"forget_local": ..., "forget_kl": ...}``, divided by the same counts).
        Override in a subclass for another forget objective.
        """
        ids, att = inputs["forget_input_ids"], inputs["forget_attention_mask"]
        imask, cmask = inputs["forget_initiating_mask"], inputs["forget_common_mask"]
        ref = self.reference_logits(model, ids, att)
        logits = model(input_ids=ids, attention_mask=att).logits
        cfg = self.palu
        # Rows are already shifted (row t predicts token t+1; the last row is in neither mask),
        # so the full [B, T, V] logits go in without a sliced copy.
        rows = palu_local_entropy_loss(
            logits, ref, imask, cmask, k=cfg.k, target=cfg.target, kl=cfg.kl, gamma=1.0,
            alpha=1.0, reduction="none", backend=cfg.backend,
        )
        n_i = counts[0].clamp(min=1).to(rows.dtype)
        n_c = counts[1].clamp(min=1).to(rows.dtype)
        local = rows[imask].sum() / n_i
        kl = rows[cmask].sum() / n_c
        loss = cfg.gamma * local + cfg.alpha * kl
        return loss, {"forget_local": local.detach(), "forget_kl": kl.detach()}

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
