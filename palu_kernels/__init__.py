"""palu_kernels: fused kernels for PALU (Prefix-Aware Localized Unlearning)."""

from ._validation import set_value_checks
from .fused_linear import palu_fused_linear_loss
from .loss import PALULoss, palu_local_entropy_loss
from .masks import initiating_mask, mean_row_weights

__version__ = "0.1.0"

__all__ = [
    "PALULoss",
    "initiating_mask",
    "mean_row_weights",
    "palu_fused_linear_loss",
    "palu_local_entropy_loss",
    "set_value_checks",
    "topk_threshold",
]


def __getattr__(name):
    # Triton-backed entry points import triton lazily, so the torch backend works without it.
    if name == "topk_threshold":
        from .backends.triton_topk import topk_threshold

        return topk_threshold
    raise AttributeError(f"module 'palu_kernels' has no attribute {name!r}")
