"""The one registry of unlearning methods: ``--method`` name -> trainer class.

Every trainer is a :class:`~palu_kernels.train.base.UnlearningTrainer` subclass in its own
file of :mod:`palu_kernels.train.methods`; its hyper-parameters and their defaults are the
dataclass ``config_class`` in that file (``PALUTrainer``: :class:`~palu_kernels.train.base.
PALUConfig`). ``palu-unlearn --method``, ``palu-compare --methods`` and the demo read
:data:`METHODS`; :func:`method_config` turns baseline options into the trainer's
``baseline=`` argument (the command lines' options are in :mod:`palu_kernels.cli.options`).
A new method is one file in ``methods/`` plus one line in :data:`METHODS`.
"""

from __future__ import annotations

from dataclasses import asdict, fields

from .base import BaselineConfig, PALUConfig
from .methods.ga import GATrainer
from .methods.graddiff import GradDiffTrainer
from .methods.idkdpo import IdkDPOTrainer
from .methods.npo import NPOTrainer
from .methods.palu import PALUTrainer
from .methods.simnpo import SimNPOTrainer
from .methods.tpo import TPOTrainer

METHODS: dict[str, type] = {
    "palu": PALUTrainer,
    "ga": GATrainer,
    "graddiff": GradDiffTrainer,
    "npo": NPOTrainer,
    "simnpo": SimNPOTrainer,
    "idkdpo": IdkDPOTrainer,
    "tpo": TPOTrainer,
}
"""``--method`` name -> trainer class (the first is the default)."""

for _name, _cls in METHODS.items():
    assert _cls.method == _name, (_name, _cls)

LOSSES = {name: cls.loss_function for name, cls in METHODS.items()
          if cls.loss_function is not None}
"""Baseline name -> its loss function (on per-sequence log-probabilities; tpo's on logits and
its U / G row masks)."""


def trainer_class(method: str) -> type:
    """The trainer class of ``method`` (a key of :data:`METHODS`)."""
    try:
        return METHODS[method]
    except (KeyError, TypeError):
        raise ValueError(f"unknown method {method!r}; expected one of {tuple(METHODS)}") from None


def method_defaults(method: str) -> dict:
    """The default hyper-parameters of ``method`` (its ``config_class``; palu: PALUConfig)."""
    cls = trainer_class(method)
    return asdict(cls.config_class() if cls.config_class is not None else PALUConfig())


def method_config(method: str, **values):
    """The baseline options of ``method`` as the trainer's ``baseline=`` argument: a
    :class:`~palu_kernels.train.base.BaselineConfig` of ``values`` (``None`` = the method's
    default; unknown names are refused), or ``None`` for a method without a ``config_class``
    (``palu``: its options go in ``palu=``)."""
    if trainer_class(method).config_class is None:
        return None
    names = {f.name for f in fields(BaselineConfig)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown baseline option(s) {unknown}; expected some of {sorted(names)}")
    return BaselineConfig(**values)


def defaults_of(field: str) -> str:
    """``"npo 0.1, simnpo 4.5, ..."``: the methods that have ``field`` and its default."""
    out = []
    for name, cls in METHODS.items():
        if cls.config_class is not None and field in {f.name for f in fields(cls.config_class)}:
            out.append(f"{name} {method_defaults(name)[field]}")
    return ", ".join(out)


__all__ = ["LOSSES", "METHODS", "defaults_of", "method_config", "method_defaults",
           "trainer_class"]
