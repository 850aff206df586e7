"""Constants shared by every layer."""

IGNORE_INDEX = -100
"""Label of a token that is not scored (prompt, padding): PyTorch's ``cross_entropy`` default."""

__all__ = ["IGNORE_INDEX"]
