"""The typed unlearning job: what :func:`palu_kernels.train.job.run_unlearning` runs.

An :class:`UnlearningJob` is the model (:class:`ModelSpec`), the data (:class:`DataSpec`), the
method and its hyper-parameters (:class:`MethodSpec`), the optimizer and schedule
(:class:`TrainingOptions`) and the output (:class:`OutputSpec`); :func:`check_job` validates
it before any model loads (a :class:`~palu_kernels.errors.UsageError` naming the field; the
command line prints its flag). Every name here is also importable from
:mod:`palu_kernels.train.job`.

``first_n`` (initiating rows per sensitive run) and ``k`` (the top-K set size) take ``None``,
``-1`` or ``"all"`` for every sensitive row / the whole vocabulary, stored as ``None``
(:func:`palu_kernels.train.checks.all_or_count`).
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field, fields
from typing import Dict, Optional

from ..errors import UsageError
from .base import PALUConfig
from .checks import ALL, all_or_count, check_model_files, check_output, check_values
from ..io.models import NAMED_MODELS, ModelSource, resolve_model_path
from .registry import all_knobs, knob_kwargs, palu_settings, trainer_class, trainer_kwargs

__all__ = ["DataSpec", "MethodSpec", "ModelSpec", "OutputSpec", "SPAN_SOURCES",
           "TrainingOptions", "UnlearningJob", "check_job"]


@dataclass
class ModelSpec:
    """The starting model: a directory or ``.gguf`` file; ``lora_r > 0``: train a LoRA adapter;
    ``train_layers``: train only the last that many decoder layers (and the final norm)."""

    path: str
    lora_r: int = 0
    train_layers: Optional[int] = None
    lora_alpha: Optional[float] = None
    trust_remote_code: bool = False


SPAN_SOURCES = ("given", "text", "predictability", "contrast")


@dataclass
class DataSpec:
    """Forget records (span-annotated JSON / JSON lines, or raw passages: a ``.txt``, JSON
    strings or ``{"text"}`` objects, cut into ``max_length``-token pieces) and optional retain
    records. ``spans``: ``"given"`` (the file's ``target_words``), or computed by
    :mod:`palu_kernels.spans`: ``"text"`` (no model), ``"predictability"`` (the words the
    pre-trained ``spans_reference`` does not predict) or ``"contrast"`` (the model to unlearn
    against ``spans_reference``). ``spans_reference``: a directory, a ``.gguf`` file or
    ``"smollm2"``. ``first_n``: initiating rows per sensitive run (``None``, ``-1`` or
    ``"all"``: every sensitive row; stored as ``None``)."""

    forget: str
    retain: Optional[str] = None
    max_length: int = 512
    first_n: Optional[int] = 3
    eval_retain: int = 100
    eval_forget: Optional[int] = None
    skip_bad_records: bool = False
    spans: str = "given"
    spans_reference: Optional[str] = None

    def __post_init__(self):
        self.first_n = all_or_count("first_n", self.first_n)


@dataclass(init=False)
class MethodSpec:
    """A method of :data:`palu_kernels.train.registry.METHODS` and its settings.

    ``knobs``: the method settings given (``MethodSpec("npo", beta=0.2)`` puts ``beta`` there;
    one not given, or ``None``, is the method's default), any setting a registered method
    declares (:func:`palu_kernels.train.registry.all_knobs`); a method ignores the ones it
    does not declare. Each also reads as an attribute (``spec.beta``, ``None`` when not
    given). The PALU options (``k``, ``target``, ``kl``, ``backend``) also set the PALU terms
    every method measures. ``k``: ``None``, ``-1`` or ``"all"`` for the whole vocabulary
    (stored as ``None``).
    """

    name: str = "palu"
    k: Optional[int] = 5000
    target: object = "mean"
    kl: Optional[str] = "reverse"
    knobs: Dict[str, object] = field(default_factory=dict)
    backend: str = "auto"
    fused_linear: bool = False
    chunk_rows: Optional[int] = None

    def __init__(self, name: str = "palu", *, knobs: Optional[dict] = None, **options):
        for f in fields(self):
            if f.name not in ("name", "knobs"):
                object.__setattr__(self, f.name, options.pop(f.name, f.default))
        self.name = name
        self.k = all_or_count("k", self.k)
        given = knob_kwargs("MethodSpec", {**(knobs or {}), **options})
        object.__setattr__(self, "knobs", {k: v for k, v in given.items() if v is not None})

    def __getattr__(self, name: str):
        if name.startswith("__") or name == "knobs" or name not in all_knobs():
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return self.knobs.get(name)

    def __setattr__(self, name: str, value) -> None:
        if name in self.__dataclass_fields__:
            object.__setattr__(self, name, value)
        else:  # a method setting
            self.knobs.update(knob_kwargs("MethodSpec", {name: value}))
            if value is None:
                del self.knobs[name]

    def knob_values(self) -> dict:
        """Every method setting (the registry's), ``None`` where not given."""
        return {**{name: None for name in all_knobs()}, **self.knobs}

    def palu_config(self) -> PALUConfig:
        return PALUConfig(k=self.k, target=self.target, kl=self.kl, backend=self.backend,
                          fused_linear=self.fused_linear, chunk_rows=self.chunk_rows,
                          **palu_settings(self.knobs))

    def trainer_kwargs(self) -> dict:
        """The trainer's keyword arguments for this method (``palu=`` and, for a method with a
        ``config_class``, ``baseline=``: :func:`palu_kernels.train.registry.trainer_kwargs`)."""
        return trainer_kwargs(self.name, self.palu_config(), self.knobs)


@dataclass
class TrainingOptions:
    """Optimizer, schedule and batch options (transformers ``TrainingArguments``)."""

    lr: float = 1e-5
    weight_decay: float = 0.01
    optim: str = "adamw_torch"
    epochs: float = 10
    max_steps: int = -1
    warmup_epochs: float = 1.0
    batch_size: int = 4
    grad_accum: int = 1
    bf16: bool = False
    seed: int = 42
    logging_steps: int = 1


@dataclass
class OutputSpec:
    """Where the unlearned model, its checkpoints and ``run_summary.json`` go."""

    output_dir: str
    save_steps: int = 0
    save_total_limit: int = 2
    resume: object = None  # None, True (the last checkpoint-*) or a checkpoint path
    overwrite: bool = False


@dataclass
class UnlearningJob:
    model: ModelSpec
    data: DataSpec
    output: OutputSpec
    method: MethodSpec = field(default_factory=MethodSpec)
    training: TrainingOptions = field(default_factory=TrainingOptions)

    def arguments(self) -> dict:
        """The job as one flat dict with ``palu-unlearn``'s option names (``model``,
        ``method``, ``k``, ``beta``, ``output_dir`` ...)."""
        out = {"model": self.model.path, "method": self.method.name}
        for part in (self.model, self.data, self.method, self.training, self.output):
            for f in fields(part):
                if f.name == "knobs":
                    out.update(part.knob_values())
                elif f.name not in ("path", "name"):
                    out[f.name] = getattr(part, f.name)
        out["kl"] = "none" if self.method.kl is None else self.method.kl
        return out

    def command(self) -> str:
        """A ``palu-unlearn`` command line that runs this job (options that differ from the
        defaults)."""
        defaults = UnlearningJob(ModelSpec(""), DataSpec(""), OutputSpec("")).arguments()
        argv = []
        for key, value in self.arguments().items():
            if key in ("model", "forget", "output_dir") or value != defaults[key]:
                flag = "--" + key.replace("_", "-")
                if key in ("k", "first_n") and value is None:
                    argv += [flag, ALL]
                elif value is True:
                    argv.append(flag)
                elif value is not False and value is not None:
                    argv += [flag, str(value)]
        return "palu-unlearn " + shlex.join(argv)


def check_job(job: UnlearningJob) -> ModelSource:
    """Validate the job before any work (a :class:`~palu_kernels.errors.UsageError` naming
    the field): paths, every number finite and in range (:mod:`palu_kernels.train.checks`),
    the model files, the output directory (not the model, not holding it, not inside it) and
    the checkpoint to resume; returns where the model is."""
    try:
        source = resolve_model_path(job.model.path)
    except ValueError as e:
        raise UsageError("model", str(e)) from None
    d = job.data
    for option, path in (("forget", d.forget), ("retain", d.retain)):
        if path is not None and not os.path.isfile(path):
            raise UsageError(option, f"{path!r} is not a file")
    if d.spans not in SPAN_SOURCES:
        raise UsageError("spans", f"must be one of {', '.join(SPAN_SOURCES)}, got {d.spans!r}")
    if (d.spans in ("contrast", "predictability")) != (d.spans_reference is not None):
        raise UsageError("spans", "contrast and predictability need `spans_reference` (a "
                                  "model that never saw the forget data), and "
                                  "`spans_reference` needs one of them")
    ref = d.spans_reference
    if ref is not None and not os.path.exists(ref) and ref not in NAMED_MODELS:
        raise UsageError("spans_reference", f"{ref!r} is not a model directory, a .gguf file "
                                            f"or one of {', '.join(NAMED_MODELS)}")
    try:
        trainer_class(job.method.name)
    except ValueError as e:
        raise UsageError("method", f"method: {e}") from None
    check_values(job)
    check_model_files(source)
    check_output(job, source)
    if job.method.fused_linear and job.method.name != "palu":
        raise UsageError("fused_linear", f"applies to `method=palu` only (the PALU loss from "
                                         f"hidden states); `method={job.method.name}` needs "
                                         "full logits")
    if job.method.chunk_rows is not None and job.method.chunk_rows < 1:
        raise UsageError("chunk_rows", f"must be >= 1, got {job.method.chunk_rows}")
    return source
