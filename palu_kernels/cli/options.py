"""Command-line options shared by ``palu-unlearn`` and ``palu-compare``: the methods' settings.

One flag per setting of the registered methods (the union of their config dataclasses'
:func:`~palu_kernels.train.knobs.knob` fields, :func:`palu_kernels.train.registry.all_knobs`),
generated with its type, help, the methods that have it with their defaults, and its range:
``--gamma``, ``--alpha``, ``--beta``, ``--delta``, ``--idk-file``, ... A flag not given is
each method's default; a method ignores a setting it does not declare (so one
``palu-compare --beta 0.2`` applies to every method with a ``beta``). The values are checked
against the declarations when the job is (:func:`palu_kernels.train.registry.check_knobs`).
"""

from __future__ import annotations

import argparse

from ..train.registry import all_knobs, method_config

__all__ = ["FIRST_N_HELP", "HelpFormatter", "K_HELP", "add_method_arguments", "knob_flags", "knob_values",
           "method_kwargs"]

K_HELP = "top-K set size: an integer >= 1, or all (or -1) for the whole vocabulary"
FIRST_N_HELP = ("initiating rows per sensitive run: an integer >= 1, or all (or -1) for every "
                "sensitive row")
"""The help of ``--k`` and ``--first-n`` on every command line: one vocabulary for "all"
(:func:`palu_kernels.train.checks.all_or_count` reads the values)."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" only where the help does not already state the default and there
    is one to state (every command line's help uses it)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text.lower() or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _grouped(per_method: dict, text) -> str:
    """``"a (m1, m2); b (m3)"``: ``text(knob)`` with the methods that share it (just ``a``
    when all share one)."""
    groups: dict = {}
    for method, k in per_method.items():
        groups.setdefault(text(k), []).append(method)
    if len(groups) == 1:
        return next(iter(groups))
    return "; ".join(f"{t} ({', '.join(ms)})" for t, ms in groups.items())


def knob_help(per_method: dict) -> str:
    """The help of one setting's flag, from its declarations (``{method: Knob}``)."""
    text = (_grouped(per_method, lambda k: k.help)
            + "; defaults: " + ", ".join(f"{m} {'none' if k.default is None else k.default}"
                                         for m, k in per_method.items()))
    ranges = _grouped(per_method, lambda k: k.describe_range())
    if ranges:
        text += f"; {ranges}"
    return text.replace("%", "%%")


def knob_flags() -> list:
    """The flags of the methods' settings (``["--gamma", "--alpha", ...]``)."""
    return [_flag(name) for name in all_knobs()]


def add_method_arguments(parser) -> None:
    """Add one flag per setting of the registered methods to ``parser`` (a group "method
    settings"); a flag not given leaves no attribute (:func:`knob_values`)."""
    group = parser.add_argument_group(
        "method settings", "declared by each method's config (palu_kernels/train/methods); a "
        "setting applies to the methods listed in its help and is ignored by the others; not "
        "given: each method's default")
    for name, per_method in all_knobs().items():
        first = next(iter(per_method.values()))
        kw = dict(dest=name, default=argparse.SUPPRESS, help=knob_help(per_method))
        if first.type is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw.update(type=first.type, metavar="FILE" if first.file else name.upper())
        group.add_argument(_flag(name), **kw)


def knob_values(args) -> dict:
    """The method settings given in parsed ``args`` (name -> value)."""
    return {name: getattr(args, name) for name in all_knobs() if hasattr(args, name)}


def method_kwargs(args) -> dict:
    """The trainer keyword arguments of ``args.method`` from parsed options: ``{"baseline":
    <its config>}`` with the settings given (the others: the method's defaults), ``{}`` for
    a method without a ``config_class`` (``palu``: its settings go in ``palu=``)."""
    config = method_config(args.method, **knob_values(args))
    return {} if config is None else {"baseline": config}
