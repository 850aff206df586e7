"""The one registry of unlearning methods: ``--method`` name -> trainer class.

Every trainer is a :class:`~palu_kernels.train.base.UnlearningTrainer` subclass in its own
file of :mod:`palu_kernels.train.methods`; its settings (name, type, default, range, help) are
declared once, as the :func:`~palu_kernels.train.knobs.knob` fields of its config dataclass
(``config_class``; ``palu``: the ``gamma`` / ``alpha`` of
:class:`~palu_kernels.train.base.PALUConfig`). Everything else reads them from here: the
command-line flags (:mod:`palu_kernels.cli.options`, the union of all methods' settings), the
checks (:func:`check_knobs`), :class:`~palu_kernels.train.spec.MethodSpec` and the trainer's
keyword arguments (:func:`trainer_kwargs`), the experiments' ``RunSpec``.

A new method is one file in ``methods/`` plus one line in :data:`METHODS`
(``docs/adding_a_method.md``). A setting a method does not declare is ignored by it (one
``palu-compare --beta 0.2`` applies to every method that has a ``beta``); its value is still
checked, against the first declaration.
"""

from __future__ import annotations

from dataclasses import asdict
from importlib import import_module
from typing import Dict, Mapping

from ..errors import UsageError
from .base import PALUConfig
from .knobs import Knob, check_knob, knobs_of


def _trainer(where: str) -> type:
    """The trainer class ``"<module>.<Class>"`` of :mod:`palu_kernels.train.methods`."""
    module, name = where.rsplit(".", 1)
    return getattr(import_module(f"{__package__}.methods.{module}"), name)


METHODS: dict[str, type] = {name: _trainer(where) for name, where in {
    "palu": "palu.PALUTrainer",
    "ga": "ga.GATrainer",
    "graddiff": "graddiff.GradDiffTrainer",
    "npo": "npo.NPOTrainer",
    "simnpo": "simnpo.SimNPOTrainer",
    "idkdpo": "idkdpo.IdkDPOTrainer",
    "tpo": "tpo.TPOTrainer",
}.items()}
"""``--method`` name -> trainer class (the first is the default): one line per method, its
file in :mod:`palu_kernels.train.methods` and its trainer class."""

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


def method_knobs(method: str) -> Dict[str, Knob]:
    """The settings ``method`` declares (name -> :class:`~palu_kernels.train.knobs.Knob`)."""
    cls = trainer_class(method).settings_class()
    return {} if cls is None else knobs_of(cls)


def all_knobs() -> Dict[str, Dict[str, Knob]]:
    """Every setting of the registered methods: name -> {method: its declaration}, in
    registry order. One name has one type in every method that declares it (``TypeError``
    otherwise)."""
    out: Dict[str, Dict[str, Knob]] = {}
    for method in METHODS:
        for name, k in method_knobs(method).items():
            decl = out.setdefault(name, {})
            first = next(iter(decl.values()), k)
            if (k.type, k.file) != (first.type, first.file):
                raise TypeError(f"setting {name!r}: {method} declares it as "
                                f"{k.type.__name__}, {next(iter(decl))} as "
                                f"{first.type.__name__}; one name, one type")
            decl[method] = k
    return out


def knob_kwargs(owner: str, options: Mapping) -> dict:
    """``options`` (keyword arguments of ``owner``) as method settings; a name that no method
    declares is a ``TypeError``, as for any unknown keyword argument."""
    names = all_knobs()
    unknown = [n for n in options if n not in names]
    if unknown:
        raise TypeError(f"{owner} got an unexpected keyword argument {unknown[0]!r} (method "
                        f"settings: {', '.join(names)})")
    return dict(options)


def check_knobs(method: str, values: Mapping) -> None:
    """Check each given value (``None``: the method's default) against the declaration of
    ``method`` or, for a setting ``method`` does not have (and ignores), the first method's
    that declares it (:class:`~palu_kernels.errors.UsageError` naming the setting)."""
    union, own = all_knobs(), method_knobs(method)
    for name, value in values.items():
        if value is None:
            continue
        if name not in union:
            raise UsageError(name, f"is not a setting of any method (settings: "
                                   f"{', '.join(union)})")
        check_knob(own.get(name) or next(iter(union[name].values())), value)


def method_defaults(method: str) -> dict:
    """The default settings of ``method`` (its ``config_class``; palu: PALUConfig)."""
    return asdict(trainer_class(method).settings_class()())


def method_config(method: str, **values):
    """The trainer's ``baseline=`` argument for ``method``: its ``config_class`` with the
    given ``values`` (``None``: the method's default; a setting of another method: ignored;
    a name no method declares: :class:`~palu_kernels.errors.UsageError`), or ``None`` for a
    method without a ``config_class`` (``palu``: its settings go in ``palu=``)."""
    check_knobs(method, values)
    cls = trainer_class(method).config_class
    if cls is None:
        return None
    own = knobs_of(cls)
    return cls(**{k: v for k, v in values.items() if v is not None and k in own})


def trainer_kwargs(method: str, palu: PALUConfig, values: Mapping) -> dict:
    """The keyword arguments of ``method``'s trainer: ``palu=`` and, for a method with a
    ``config_class``, ``baseline=`` (:func:`method_config` of ``values``)."""
    kw = {"palu": palu}
    if trainer_class(method).config_class is not None:
        kw["baseline"] = method_config(method, **values)
    return kw


def defaults_of(name: str) -> str:
    """``"npo 0.1, simnpo 4.5, ..."``: the methods that declare setting ``name`` and their
    defaults."""
    return ", ".join(f"{m} {k.default}" for m, k in all_knobs().get(name, {}).items())


def palu_settings(values: Mapping) -> dict:
    """The given ``values`` that are :class:`~palu_kernels.train.base.PALUConfig` settings
    (``gamma``, ``alpha``)."""
    own = knobs_of(PALUConfig)
    return {k: v for k, v in values.items() if v is not None and k in own}


__all__ = ["LOSSES", "METHODS", "all_knobs", "check_knobs", "defaults_of", "knob_kwargs",
           "method_config", "method_defaults", "method_knobs", "palu_settings",
           "trainer_class", "trainer_kwargs"]
