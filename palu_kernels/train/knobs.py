"""Method settings ("knobs"), each declared once: a field of its method's config dataclass.

::

    @dataclass
    class NPOConfig(MethodConfig):
        beta: float = knob(0.1, "inverse temperature", gt=0)
        gamma: float = weight_knob(1.0, "forget loss")

The field holds the name, the type (its annotation; ``X | None`` when ``None`` is a value),
the default, the allowed range and a one-line help. Everything else derives from it through
the registry of methods (:mod:`palu_kernels.train.registry`): the command-line flags
(:mod:`palu_kernels.cli.options`), the checks (:func:`check_knob`, run on construction of
every :class:`MethodConfig` and on every job), :class:`~palu_kernels.train.spec.MethodSpec`
and the trainer's keyword arguments, and the experiments' ``RunSpec``.
"""

from __future__ import annotations

import math
import os
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, replace
from functools import lru_cache
from typing import Dict, Optional

from ..errors import UsageError

__all__ = ["FP32_MAX", "Knob", "MethodConfig", "check_knob", "knob", "knobs_of", "weight_knob"]

FP32_MAX = 3.4028234663852886e38  # the losses compute in fp32: a larger weight is inf there

_TYPES = (bool, int, float, str)


@dataclass(frozen=True)
class Knob:
    """One method setting: the ``metadata["knob"]`` of a config field (:func:`knob`), with
    ``name``, ``type``, ``optional`` and ``default`` filled in from the field by
    :func:`knobs_of`.

    ``gt`` / ``ge`` / ``le``: the allowed range of a number (``> gt``, ``>= ge``, ``<= le``);
    ``file``: a text setting naming a file that must exist.
    """

    help: str
    gt: Optional[float] = None
    ge: Optional[float] = None
    le: Optional[float] = None
    file: bool = False
    name: str = ""
    type: type = float
    optional: bool = False
    default: object = None

    def describe_range(self) -> str:
        """``"> 0"``, ``">= 0 and <= 3.4e+38"``, ``"an existing file"`` or ``""``."""
        parts = [f"> {self.gt:.3g}" if self.gt is not None else "",
                 f">= {self.ge:.3g}" if self.ge is not None else "",
                 f"<= {self.le:.3g}" if self.le is not None else ""]
        text = " and ".join(p for p in parts if p)
        return "an existing file" if self.file else text


def knob(default, help: str, *, gt=None, ge=None, le=None, file: bool = False):
    """A config field declaring a method setting (see the module docstring)."""
    return field(default=default, metadata={"knob": Knob(help, gt=gt, ge=ge, le=le, file=file)})


def weight_knob(default: float, of: str):
    """A loss weight: a finite number in ``[0, FP32_MAX]``, help ``"weight of the <of>"``."""
    return knob(default, f"weight of the {of}", ge=0, le=FP32_MAX)


def _base_type(annotation) -> tuple[type, bool]:
    """``(type, None allowed)`` of a field annotation (``float``, ``str | None``, ...)."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and len(args) == 2:
            return _base_type(rest[0])[0], True
    if annotation in _TYPES:
        return annotation, False
    raise TypeError(f"a knob's type must be one of {[t.__name__ for t in _TYPES]} (or with "
                    f"'| None'), got {annotation!r}")


@lru_cache(maxsize=None)
def knobs_of(config_class: type) -> Dict[str, Knob]:
    """The settings a config dataclass declares: its fields made with :func:`knob`, in field
    order (other fields, e.g. :class:`~palu_kernels.train.base.PALUConfig`'s ``k``, are not
    method settings)."""
    hints = typing.get_type_hints(config_class)
    out = {}
    for f in fields(config_class):
        meta = f.metadata.get("knob")
        if meta is None:
            continue
        typ, optional = _base_type(hints[f.name])
        default = f.default if f.default is not MISSING else None
        out[f.name] = replace(meta, name=f.name, type=typ, optional=optional or default is None,
                              default=default)
    return out


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_knob(k: Knob, value):
    """``value`` for setting ``k`` (an int given for a float setting becomes a float), or a
    :class:`~palu_kernels.errors.UsageError` naming the setting and saying what is expected."""
    if value is None:
        if k.optional:
            return None
        raise UsageError(k.name, f"must be a {k.type.__name__}, got None")
    if k.type is float:
        if not _is_number(value):
            raise UsageError(k.name, f"must be a number, got {value!r}")
        if not math.isfinite(value):
            raise UsageError(k.name, f"must be a finite number, got {value}")
        value = float(value)
    elif k.type is int and not (isinstance(value, int) and not isinstance(value, bool)):
        raise UsageError(k.name, f"must be an integer, got {value!r}")
    elif k.type in (str, bool) and not isinstance(value, k.type):
        raise UsageError(k.name, f"must be a {k.type.__name__}, got {value!r}")
    if k.gt is not None and not value > k.gt:
        raise UsageError(k.name, f"must be > {k.gt}, got {value}")
    if k.ge is not None and not value >= k.ge:
        raise UsageError(k.name, f"must be >= {k.ge}, got {value}")
    if k.le is not None and not value <= k.le:
        raise UsageError(k.name, f"must be <= {k.le}, got {value}")
    if k.file and not os.path.isfile(value):
        raise UsageError(k.name, f"{value!r} is not a file")
    return value


class MethodConfig:
    """Base of a method's config dataclass: on construction every setting declared with
    :func:`knob` is checked (:func:`check_knob`)."""

    def __post_init__(self):
        for name, k in knobs_of(type(self)).items():
            setattr(self, name, check_knob(k, getattr(self, name)))
