"""One experiment run's options (:class:`RunSpec`) and the dict its cache key hashes.

The method settings of a run (``gamma``, ``beta``, ...) are not declared here: ``RunSpec``
takes any setting of the registered methods as a keyword
(:func:`palu_kernels.train.registry.all_knobs`) and keeps the given ones in ``knobs``. The
key of a cached run (:meth:`palu_kernels.experiments.harness.Harness.run_key`) hashes
:func:`spec_dict`, the flat dict ``asdict(RunSpec)`` was when ``RunSpec`` declared
``gamma``, ``alpha``, ``beta`` and ``delta`` as its own fields: those four are always in it,
with the defaults they had then (:data:`LEGACY_KNOBS`), and any other setting only when set,
so the runs cached before and after a method with a new setting was added keep their keys.
The per-run variants of the harness's options (``train_layers``, ``evaluation``:
:data:`VARIANTS`) are in it, and so in the key, only when set, for the same reason.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Optional, Tuple

if TYPE_CHECKING:
    from ..train.job import MethodSpec

__all__ = ["FULL", "LEGACY_KNOBS", "RunSpec", "VARIANTS", "spec_dict"]

LEGACY_KNOBS = {"gamma": None, "alpha": 1.0, "beta": None, "delta": None}
"""The settings ``RunSpec`` once declared itself, with the defaults it gave them (``None``:
the method's default): always in :func:`spec_dict`, so that cached runs keep their keys."""

FULL = "full"
"""``RunSpec.evaluation``: every question of every split scored and generated."""
VARIANTS = ("train_layers", "evaluation")
"""The fields that change the harness's options for one run; ``None``: the harness's (and
then not in :func:`spec_dict`)."""


def _is_default(name: str, value) -> bool:
    default = LEGACY_KNOBS.get(name)
    return value is default or (type(value) is type(default) and value == default)


@dataclass(frozen=True, init=False)
class RunSpec:
    """One unlearning job's options (the start model and data come from the seed's setup).

    ``k`` ``None``: the whole vocabulary. Method settings are keywords
    (``RunSpec(method="npo", beta=0.2)``; ``None``: the method's default; ``alpha``: 1 unless
    given) held in ``knobs`` and read as attributes (``spec.beta``). ``forget_file``: another
    span-annotated forget file instead of the setup's (its content is hashed into the run's
    key). ``synth``: generator overrides (a different setup). ``trace_every``: record the
    mean forget answer probability every that many steps.

    Variants of the harness's options for this run alone (the start models stay the setup's):
    ``train_layers``: the unlearning trains the last that many decoder layers, or
    ``"all"`` every layer (``None``: the harness's ``train_layers``); ``evaluation``
    ``"full"`` (:data:`FULL`): no question cut (every question scored and generated, the
    harness's generation limit kept; Forget Quality against the retain model evaluated the
    same way), ``None``: the harness's evaluation.
    """

    method: str = "palu"
    lr: float = 1e-3
    epochs: float = 10
    batch_size: int = 4
    k: Optional[int] = 1
    target: object = "mean"
    kl: Optional[str] = "reverse"
    first_n: Optional[int] = 3
    knobs: Tuple[Tuple[str, object], ...] = ()
    warmup_epochs: float = 1.0
    forget_file: Optional[str] = None
    synth: Tuple[Tuple[str, object], ...] = ()
    trace_every: int = 0
    train_layers: object = None
    evaluation: Optional[str] = None

    def __init__(self, method: str = "palu", *, knobs=(), **options):
        for f in fields(self):
            if f.name not in ("method", "knobs"):
                object.__setattr__(self, f.name, options.pop(f.name, f.default))
        object.__setattr__(self, "method", method)
        _check_variants(self.train_layers, self.evaluation)
        from ..train.registry import knob_kwargs  # (lazy: the harness loads train when it runs)

        given = knob_kwargs("RunSpec", {**dict(knobs), **options})
        object.__setattr__(self, "knobs", tuple(sorted(
            (k, v) for k, v in given.items() if not _is_default(k, v))))

    def __getattr__(self, name: str):
        from ..train.registry import all_knobs

        if name.startswith("__") or name == "knobs" or name not in all_knobs():
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return dict(self.knobs).get(name, LEGACY_KNOBS.get(name))

    def knob_values(self) -> dict:
        """The method settings of this run: :data:`LEGACY_KNOBS` and the given ones."""
        return {**LEGACY_KNOBS, **dict(self.knobs)}

    def method_spec(self) -> MethodSpec:
        """The :class:`~palu_kernels.train.job.MethodSpec` of this run."""
        from ..train.job import MethodSpec

        return MethodSpec(name=self.method, k=self.k, target=self.target, kl=self.kl,
                          knobs=self.knob_values())


def _check_variants(train_layers, evaluation) -> None:
    from ..errors import UsageError

    if not (train_layers is None or train_layers == "all" or (
            isinstance(train_layers, int) and not isinstance(train_layers, bool)
            and train_layers >= 1)):
        raise UsageError("train_layers", f"expected None, 'all' or an integer >= 1, got "
                                         f"{train_layers!r}")
    if evaluation not in (None, FULL):
        raise UsageError("evaluation", f"expected None or {FULL!r}, got {evaluation!r}")


def spec_dict(spec: RunSpec) -> dict:
    """``spec`` as one flat dict: its fields and :meth:`RunSpec.knob_values` (see the module
    docstring: what a run's key hashes and its cached result records as ``"spec"``); the
    :data:`VARIANTS` only when set."""
    out = {}
    for f in fields(spec):
        if f.name == "knobs":
            out.update(spec.knob_values())
        elif f.name in VARIANTS and getattr(spec, f.name) is None:
            continue
        else:
            out[f.name] = getattr(spec, f.name)
    return out
