"""Helpers of the Triton kernels: the dtypes they take, whether Triton runs through its
interpreter, the width of the selection keys and the device a launch runs on.

Standard library and torch only: the argument checks (``palu_kernels._validation``) use them
without importing triton.
"""

from __future__ import annotations

import contextlib
import os

import torch

# The logits dtypes the kernels read (fp64 goes to the torch backend).
KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def interpreting() -> bool:
    """True when Triton runs through its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def key_bits(dtype: torch.dtype) -> int:
    """Width of the order-preserving key: the float's own width (32 fp32, 16 bf16 / fp16)."""
    return 32 if dtype == torch.float32 else 16


def device_guard(t: torch.Tensor):
    """Context that makes ``t``'s GPU the current one while kernels launch on it (a no-op on
    the CPU), so that tensors on ``cuda:1`` work whatever the current device is."""
    if t.device.type == "cuda":
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()
