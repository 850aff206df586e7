"""Command-line options shared by ``palu-unlearn`` and ``palu-compare``: the baselines'
hyper-parameters (``--beta``, ``--delta``, ``--idk-file``) and how parsed options become the
trainer's ``baseline=`` argument (:func:`palu_kernels.train.registry.method_config`)."""

from __future__ import annotations

from dataclasses import fields

from ..train.base import BaselineConfig
from ..train.registry import defaults_of, method_config

__all__ = ["FIRST_N_HELP", "K_HELP", "add_method_arguments", "method_kwargs"]

K_HELP = "top-K set size: an integer >= 1, or all (or -1) for the whole vocabulary"
FIRST_N_HELP = ("initiating rows per sensitive run: an integer >= 1, or all (or -1) for every "
                "sensitive row")
"""The help of ``--k`` and ``--first-n`` on every command line: one vocabulary for "all"
(:func:`palu_kernels.train.checks.all_or_count` reads the values)."""


def add_method_arguments(parser) -> None:
    """Add ``--beta``, ``--delta`` and ``--idk-file`` (the baselines' options) to ``parser``."""
    parser.add_argument("--beta", type=float, default=None,
                        help=f"inverse temperature (defaults: {defaults_of('beta')})")
    parser.add_argument("--delta", type=float, default=None,
                        help=f"margin (defaults: {defaults_of('delta')})")
    parser.add_argument("--idk-file", default=None,
                        help="idkdpo refusal answers, one per line (e.g. "
                             "../shared/data/tofu/idontknow.jsonl; default: a built-in list)")


def method_kwargs(args) -> dict:
    """The trainer keyword arguments of ``args.method`` from parsed options: ``{"baseline":
    BaselineConfig(...)}`` with the options present (``None`` = the method's default), ``{}``
    for a method without a ``config_class`` (``palu``)."""
    config = method_config(args.method, **{f.name: getattr(args, f.name, None)
                                           for f in fields(BaselineConfig)})
    return {} if config is None else {"baseline": config}
