"""Checks of an :class:`~palu_kernels.train.job.UnlearningJob` that run before any model is
loaded (:func:`~palu_kernels.train.job.check_job` calls them): every number finite and in
range, the model files present and complete, the output directory safe to write, the
checkpoint to resume complete. Each failure is one
:class:`~palu_kernels.errors.UsageError` naming the job's field (``palu-unlearn`` prints the
flag; ``docs/reliability.md``).

:func:`all_or_count` is the one place where "every sensitive row" (``first_n``) and "the
whole vocabulary" (``k``) are spelled: ``None``, ``-1`` or ``"all"`` (and the text ``"-1"``),
everywhere (the API, every command line, the demo); it returns ``None`` for them."""

from __future__ import annotations

import math
import numbers
import os
import re
from typing import Optional

from ..errors import UsageError
from ..outputs import (LOCK, checkpoint_problem, in_use_error, is_within,
                       latest_complete_checkpoint, lock_owner, result_problem)
from .registry import check_knobs

TARGETS = ("mean", "mean_detached", "topk_mean")
KLS = (None, "reverse", "forward")
BACKENDS = ("auto", "torch", "triton")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json",
                   "spiece.model")


ALL = "all"
"""The word for "every sensitive row" (``first_n``) and "the whole vocabulary" (``k``)."""
ALL_MEANS = {"first_n": "every sensitive row", "k": "the whole vocabulary"}


def all_or_count(option: str, value) -> Optional[int]:
    """``first_n`` / ``k`` in the one vocabulary: ``None``, ``-1``, ``"all"`` (any case) and
    ``"-1"`` mean all and give ``None``; an integer >= 1 (or its decimal text) gives that
    integer; anything else (0, -2, 1.5, ``True``, ``"some"``) is a
    :class:`~palu_kernels.errors.UsageError` naming ``option``."""
    if value is None:
        return None
    n = None
    if isinstance(value, str):
        text = value.strip().lower()
        if text in (ALL, "-1"):
            return None
        n = int(text) if re.fullmatch(r"[0-9]+", text) else None
    elif isinstance(value, numbers.Integral) and not isinstance(value, bool):
        n = int(value)
    if n == -1:
        return None
    expected = f"an integer >= 1, or {ALL} (or -1) for {ALL_MEANS.get(option, 'all')}"
    if n == 0 and option == "first_n":
        raise UsageError(option, "0 selects no initiating row: the PALU local term never "
                                 f"applies and the run would not unlearn; expected {expected}")
    if n is None or n < 1:
        raise UsageError(option, f"must be {expected}, got {value!r}")
    return n


def fail(option: str, message: str) -> UsageError:
    """The :class:`~palu_kernels.errors.UsageError` of the job field ``option``."""
    return UsageError(option, message)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_real(option: str, value, *, low=None, low_open=False, high=None, optional=False):
    """A finite number with ``value >= low`` (``> low`` with ``low_open``) and ``<= high``."""
    if value is None and optional:
        return
    if not _is_number(value):
        raise fail(option, f"must be a number, got {value!r}")
    if not math.isfinite(value):
        raise fail(option, f"must be a finite number, got {value}")
    if low is not None and (value <= low if low_open else value < low):
        raise fail(option, f"must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and value > high:
        raise fail(option, f"must be <= {high}, got {value}")


def check_int(option: str, value, *, low=None, high=None, optional=False, also=()):
    """An integer ``low <= value <= high`` (or one of ``also``)."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise fail(option, f"must be an integer, got {value!r}")
    if value in also:
        return
    if (low is not None and value < low) or (high is not None and value > high):
        rng = (f">= {low}" if high is None else f"in [{low}, {high}]")
        extra = f" (or {', '.join(map(str, also))})" if also else ""
        raise fail(option, f"must be {rng}{extra}, got {value}")


def check_values(job) -> None:
    """Every number and choice of ``job`` (finite, in range); a
    :class:`~palu_kernels.errors.UsageError` naming the field."""
    m, d, me, tr, o = job.model, job.data, job.method, job.training, job.output
    check_int("lora_r", m.lora_r, low=0)
    check_int("train_layers", m.train_layers, low=1, optional=True)
    if m.train_layers is not None and m.lora_r > 0:
        raise fail("train_layers", "cannot be combined with `lora_r` (LoRA already chooses "
                   "what trains); pass one of them")
    check_real("lora_alpha", m.lora_alpha, low=0, low_open=True, optional=True)
    check_int("max_length", d.max_length, low=1)
    all_or_count("first_n", d.first_n)
    check_int("eval_retain", d.eval_retain, low=0)
    check_int("eval_forget", d.eval_forget, low=1, optional=True)
    all_or_count("k", me.k)
    if not (me.target in TARGETS or (_is_number(me.target) and math.isfinite(me.target))):
        raise fail("target", f"must be one of {', '.join(TARGETS)} or a finite number, "
                               f"got {me.target!r}")
    if me.kl not in KLS:
        raise fail("kl", f"must be reverse, forward or none, got {me.kl!r}")
    check_knobs(me.name, me.knobs)  # each method setting against its declaration
    if me.backend not in BACKENDS:
        raise fail("backend", f"must be one of {BACKENDS}, got {me.backend!r}")
    if me.backend == "triton":
        import torch

        if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1":
            raise fail("backend", "triton needs a CUDA GPU (none is available here; "
                                    "TRITON_INTERPRET=1 runs it interpreted); use "
                                    "`backend=torch` or `backend=auto`")
    check_real("lr", tr.lr, low=0, low_open=True)
    check_real("weight_decay", tr.weight_decay, low=0)
    check_real("epochs", tr.epochs, low=0)
    check_int("max_steps", tr.max_steps, low=1, also=(-1,))
    if tr.max_steps == -1 and tr.epochs == 0:
        raise fail("epochs", "0 (and no `max_steps`) makes no optimizer step: the model "
                             "would be saved unchanged")
    check_real("warmup_epochs", tr.warmup_epochs, low=0)
    check_int("batch_size", tr.batch_size, low=1)
    check_int("grad_accum", tr.grad_accum, low=1)
    check_int("seed", tr.seed, low=0, high=2**32 - 1)
    check_int("logging_steps", tr.logging_steps, low=1)
    from transformers.training_args import OptimizerNames

    names = [n.value for n in OptimizerNames]
    if tr.optim not in names:
        raise fail("optim", f"{tr.optim!r} is not an optimizer name of transformers' "
                              "OptimizerNames (e.g. adamw_torch, sgd, adafactor)")
    check_int("save_steps", o.save_steps, low=0)
    check_int("save_total_limit", o.save_total_limit, low=1)


def check_model_files(source) -> None:
    """The model directory (or ``.gguf`` file) of ``source`` looks loadable: config,
    complete weights, a tokenizer; not an unfinished ``palu-unlearn`` run."""
    if source.gguf_file:
        path = os.path.join(source.directory, source.gguf_file)
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic != b"GGUF":
            raise fail("model", f"{path!r} is not a GGUF file (it does not start with 'GGUF')")
        return
    problem = result_problem(source.directory)
    if problem:
        raise fail("model", f"{source.directory!r}: {problem}")
    if not any(os.path.isfile(os.path.join(source.directory, n)) for n in TOKENIZER_FILES):
        raise fail("model", f"{source.directory!r} has no tokenizer (none of "
                              f"{', '.join(TOKENIZER_FILES)}); save the tokenizer with the model")


def check_output(job, source) -> None:
    """The output directory is not the model, does not hold it, is not inside it and is not
    in use by another run (:func:`palu_kernels.outputs.lock_owner`); a ``resume``
    checkpoint is complete and belongs to a run of the same model, data and settings
    (:func:`palu_kernels.train.identity.check_resume`)."""
    from .identity import IDENTITY, check_resume

    out, o = job.output.output_dir, job.output
    model_path = (os.path.join(source.directory, source.gguf_file) if source.gguf_file
                  else source.directory)
    if os.path.exists(out) and not os.path.isdir(out):
        raise fail("output_dir", f"{out!r} exists and is not a directory")
    if is_within(out, source.directory) and not source.gguf_file:
        raise fail("output_dir", f"{out!r} is inside the input model directory "
                                   f"{source.directory!r}; choose another directory")
    if is_within(model_path, out):
        raise fail("output_dir", f"{out!r} contains the input model {job.model.path!r}; "
                                   "writing (or `overwrite=True`) there could destroy it; choose "
                                   "another directory")
    # only the process that writes checks the lock: under torchrun the other ranks would see
    # their own rank 0's lock when it got there first
    main = int(os.environ.get("RANK", "0")) == 0
    owner = lock_owner(out) if main and os.path.isdir(out) else None
    if owner is not None:
        raise in_use_error(out, owner)
    # a killed run's lock file and identity alone (no checkpoint yet) hold nothing to keep
    if os.path.isdir(out) and [n for n in os.listdir(out) if n not in (LOCK, IDENTITY)]:
        if not (o.resume or o.overwrite):
            raise fail("output_dir", f"{out!r} is not empty; pass `resume=True` to continue its "
                                     "run or `overwrite=True` to replace it")
    if isinstance(o.resume, str):
        problem = checkpoint_problem(o.resume)
        if problem:
            raise fail("resume", f"{o.resume!r} is not a complete checkpoint: {problem}")
        check_resume(job, o.resume)
    elif o.resume is True:
        ckpt, skipped = latest_complete_checkpoint(out)
        if ckpt is None:
            why = "; ".join(f"{os.path.basename(p)}: {w}" for p, w in skipped)
            raise fail("resume", f"no complete checkpoint-* in {out!r}"
                                   + (f" ({why})" if why else ""))
        check_resume(job, ckpt)
    elif o.resume not in (None, False):
        raise fail("resume", f"must be a checkpoint path or True, got {o.resume!r}")
