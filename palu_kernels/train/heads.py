"""The ``lm_head`` surgery of the fused PALU path (``MethodSpec(fused_linear=True)``).

:func:`fused_head` finds a causal LM's decoder body and its plain ``nn.Linear`` output
projection (or says, with a :class:`FusedLinearError`, why the model cannot use the fused
loss); :func:`last_hidden_states` runs the model itself and returns the decoder's output, so
:class:`~palu_kernels.train.methods.palu.PALUTrainer` can hand hidden states and the
``lm_head`` weight to :func:`palu_kernels.fused_linear.palu_fused_linear_loss` instead of the
forget batch's ``[B, T, V]`` logits.
"""

from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass

import torch

from ..errors import UsageError


def is_peft_model(model) -> bool:
    """Whether ``model`` is a PEFT model (without importing peft when nobody did)."""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


class FusedLinearError(UsageError):
    """The model cannot use ``fused_linear`` (a :class:`~palu_kernels.errors.UsageError` of
    the option ``fused_linear``); the message says why."""

    def __init__(self, message: str):
        super().__init__("fused_linear", message)


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
                f"fused_linear: the PEFT adapter of {name} is a prompt-learning method "
                f"({getattr(cfg, 'peft_type', '?')}) that feeds virtual tokens through the "
                "PEFT forward; use LoRA-style adapters or drop `fused_linear`")
        base = model.get_base_model()
        name = type(base).__name__
    get_head = getattr(base, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if type(head) is not torch.nn.Linear:
        raise FusedLinearError(
            f"fused_linear needs an output projection that is a plain torch.nn.Linear "
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
                f"fused_linear: {name} sets config.{field}={value!r}, which {what}; the fused "
                "loss projects hidden states with the lm_head weight only, so it would train "
                "on different logits. Drop `fused_linear` for this model")
    params = inspect.signature(base.forward).parameters
    keep = next((k for k in _KEEP_KWARGS if k in params), None)
    if keep is None:
        raise FusedLinearError(
            f"fused_linear: {name}.forward takes no logits_to_keep argument, so its logits "
            "could not be skipped; drop `fused_linear` for this model")
    get_decoder = getattr(base, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else None
    if not isinstance(decoder, torch.nn.Module) or decoder is base:
        raise FusedLinearError(
            f"fused_linear: cannot find the decoder body of {name} (get_decoder())")
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
        raise FusedLinearError(f"fused_linear: the decoder body ran {len(captured)} times in "
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
            f"fused_linear: lm_head(last hidden states) of {name} has shape "
            f"{list(proj.shape)}, its logits {list(logits.shape)}")
    err = (proj - logits).abs().max().item()
    scale = logits.abs().max().item()
    if not err <= 1e-3 * scale + 1e-6:
        raise FusedLinearError(
            f"fused_linear: the logits of {name} are not lm_head(last hidden states): they "
            f"differ by up to {err:.3g} (logits up to {scale:.3g}), so the model transforms "
            "them after the output projection (scaling, soft-capping, ...); drop `fused_linear`")


__all__ = ["FusedHead", "FusedLinearError", "fused_head", "is_peft_model",
           "last_hidden_states"]
