"""The backends of the PALU loss, side by side.

* ``torch_rows.py``: ``"torch"``, the loss in plain PyTorch (any device, fp64 too).
* ``triton_loss.py``: ``"triton"``, the fused kernel (one program per row), its launcher and
  the in-place backward scale; ``triton_split.py``: the split-row kernel the launcher runs on
  CUDA for the KL and zero rows of long rows (each KL row read once); ``triton_topk.py``: the top-K selection it calls (and the public
  :func:`topk_threshold`); ``kernel_utils.py``: the kernels' helpers.
* ``function.py``: the one ``autograd.Function`` both backends run under in eager mode.
* ``compile_op.py``: the ``torch.library`` custom op a ``torch.compile`` trace goes through.

``palu_kernels.loss`` (the dispatcher) validates once (``palu_kernels._validation``) and hands
the backends validated arguments; they never check again. The math is ``docs/spec.md``, the
kernels' design ``docs/kernels.md``.
"""


def row_backend(name: str, **opts):
    """The :class:`~palu_kernels.backends.function.RowBackend` of ``name`` (``"torch"`` or
    ``"triton"``, as ``check_backend`` resolved it); ``opts`` override the Triton launch's tiles
    (tests, tuning). Triton is imported only for ``"triton"``."""
    if name == "triton":
        from .triton_loss import triton_backend

        return triton_backend(**opts)
    from .torch_rows import TORCH

    return TORCH
