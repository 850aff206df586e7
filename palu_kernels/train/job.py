"""A typed unlearning job (:mod:`palu_kernels.train.spec`, re-exported here) and
:func:`run_unlearning`, the one way to run one.

``palu-unlearn`` parses its command line into an :class:`UnlearningJob`; ``palu-compare`` and
the demo build jobs directly (:func:`dataclasses.replace` for one method after another). The
run summary is built from the job, never from a command line. A mistake (a bad value, file
or output directory; a run that would not unlearn) is a
:class:`~palu_kernels.errors.UsageError` naming the job's field::

    job = UnlearningJob(model=ModelSpec("/tmp/tiny"), data=DataSpec("forget.jsonl"),
                        output=OutputSpec("/tmp/out"), method=MethodSpec("npo", beta=0.2))
    summary = run_unlearning(job)

Several processes: ``torchrun --nproc_per_node 2 -m palu_kernels.cli.unlearn ...``.
"""

from __future__ import annotations

import contextlib
import glob
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Optional

from ..errors import UsageError
from ..outputs import (MARKER, OutputLock, atomic_write_json, latest_complete_checkpoint,
                       make_temp_sibling, publish_result)
from .base import NonFiniteLossError, nonfinite_parameters
from .identity import IDENTITY, check_resume, run_identity, write_identity
from ..io.models import (ModelSource, load_model, load_tokenizer, resolve_model_path,
                     train_last_layers)
from .registry import trainer_class
from .spec import (SPAN_SOURCES, DataSpec, MethodSpec, ModelSpec, OutputSpec, TrainingOptions,
                   UnlearningJob, check_job)

__all__ = ["DataSpec", "MethodSpec", "ModelSpec", "OutputSpec", "SPAN_SOURCES",
           "TrainingOptions", "UnlearningJob", "check_job", "check_unlearns", "print_summary",
           "run_unlearning", "save_result"]


def _find_spans(forget, d: DataSpec, source: ModelSource, tokenizer):
    """The forget records with spans computed by :mod:`palu_kernels.spans` (``d.spans``)."""
    from ..spans import SpanOptions, find_spans

    opts = SpanOptions(method=d.spans, model=source.directory, reference=d.spans_reference,
                       max_length=d.max_length)
    model = reference = None
    try:
        if d.spans == "contrast":
            model = load_model(source, float32=True, eval_mode=True)
            reference = load_model(resolve_model_path(d.spans_reference), float32=True,
                                   eval_mode=True)
        if d.spans == "predictability":  # the reference reads with its own tokenizer
            tokenizer = None
        return find_spans(forget, opts, model=model, reference=reference, tokenizer=tokenizer)
    except ValueError as e:
        raise UsageError("spans", f"spans {d.spans}: {e}") from None


def _versions() -> dict:
    import torch
    import transformers

    import palu_kernels

    out = {"python": platform.python_version(), "torch": torch.__version__,
           "transformers": transformers.__version__,
           "palu_kernels": getattr(palu_kernels, "__version__", "0.1.0")}
    for name in ("peft", "accelerate", "triton"):
        try:
            out[name] = __import__(name).__version__
        except Exception:  # optional
            pass
    return out


def run_unlearning(job: UnlearningJob, *, callbacks=None, trainer_cls=None,
                   trainer_kwargs=None, verbose: bool = True) -> dict:
    """Run one unlearning job; returns the run summary (also written to
    ``<output_dir>/run_summary.json``) and saves the unlearned model there.

    ``callbacks``: extra ``TrainerCallback`` objects; ``trainer_cls`` / ``trainer_kwargs``: run
    another :class:`~palu_kernels.train.base.UnlearningTrainer` subclass (default: the
    registry's class of ``job.method.name`` with :meth:`MethodSpec.trainer_kwargs`).
    A mistake is a :class:`~palu_kernels.errors.UsageError` naming the field, raised before
    any model loads where it can be seen then.
    """
    import torch

    from .distributed import check_launch

    t0 = time.time()
    # the launcher's environment first: nothing else matters if it cannot run (EngineError)
    check_launch(cuda=torch.cuda.is_available())
    source = check_job(job)
    o = job.output
    out_existed = os.path.isdir(o.output_dir)
    main = int(os.environ.get("RANK", "0")) == 0  # the process that writes the outputs
    lock = (OutputLock(o.output_dir, command=job.command()) if main
            else contextlib.nullcontext())
    try:
        with lock:  # the output directory belongs to this run until it returns or fails
            if main and lock.reclaimed:
                print(f"palu-unlearn: {o.output_dir}: reclaimed the lock of a run that ended "
                      f"without releasing it (pid {lock.reclaimed.get('pid')})", file=sys.stderr)
            return _run_locked(job, source, callbacks=callbacks, trainer_cls=trainer_cls,
                               trainer_kwargs=trainer_kwargs, verbose=verbose, t0=t0)
    except BaseException:
        # an output directory this run created and left without a checkpoint or result goes
        if main and not out_existed and os.path.isdir(o.output_dir):
            if os.listdir(o.output_dir) == [IDENTITY]:
                os.remove(os.path.join(o.output_dir, IDENTITY))
            try:
                os.rmdir(o.output_dir)
            except OSError:  # not empty: keep it
                pass
        raise


def _run_locked(job: UnlearningJob, source: ModelSource, *, callbacks, trainer_cls,
                trainer_kwargs, verbose: bool, t0: float) -> dict:
    """:func:`run_unlearning` once the output directory is locked: its steps in order."""
    from accelerate import PartialState
    from transformers import set_seed

    o = job.output
    identity = run_identity(job)
    if o.resume:  # checked by check_job; again now that no other run can change the directory
        check_resume(job, o.resume if isinstance(o.resume, str)
                     else latest_complete_checkpoint(o.output_dir)[0], identity)
    set_seed(job.training.seed)
    data = _load_data(job, source)
    model = _load_model(job, source)
    targs = _training_arguments(job, len(data.dataset))
    state = PartialState()
    resume = _prepare_output(o, state)
    trainer = _make_trainer(job, model, targs, data, callbacks=callbacks,
                            trainer_cls=trainer_cls, trainer_kwargs=trainer_kwargs)
    # Fixed measurement set: every forget record, each paired with a retain record.
    eval_items = data.dataset.measurement_items(job.data.eval_retain if data.retain else 0,
                                                job.data.eval_forget)
    bs = job.training.batch_size
    before = trainer.measure(eval_items, batch_size=bs, desc="losses before")
    if state.is_main_process:  # what resume checks the checkpoints against
        write_identity(o.output_dir, identity)
    train_out = _train(trainer, resume, o.output_dir)
    after = trainer.measure(eval_items, batch_size=bs, desc="losses after")
    summary = _summary(job, data, trainer, train_out, state, n_measured=len(eval_items),
                       before=before, after=after, identity=identity, t0=t0)
    _publish(trainer, data.tokenizer, summary, o.output_dir, state, verbose=verbose)
    return summary


@dataclass
class _Data:
    """What :func:`_load_data` read: the records, their load reports, the tokenizer and the
    dataset built from them."""

    forget: list
    forget_report: object
    retain: Optional[list]
    retain_report: object
    tokenizer: object
    dataset: object


def _load_data(job: UnlearningJob, source: ModelSource) -> _Data:
    """Forget and retain records (spans given, or computed), the tokenizer, the dataset."""
    from ..io.data import PALUDataset
    from ..io.records import chunk_passages, load_forget, load_records

    d, uses_spans = job.data, trainer_class(job.method.name).uses_spans
    try:
        # a method that ignores spans takes records without target_words (and raw passages)
        forget, forget_report = load_forget(
            d.forget, spans=("ignore" if d.spans != "given" else
                             "required" if uses_spans else "optional"),
            skip_bad=d.skip_bad_records)
        if (d.spans == "given" and uses_spans and forget[0].raw
                and not any(r.spans for r in forget)):
            raise ValueError(f"{d.forget}: the passages have no target_words; pass "
                             "`spans=text` or `spans=contrast` (or a palu-spans output file)")
        retain, retain_report = (None, None)
        if d.retain:
            retain, retain_report = load_records(d.retain, spans="ignore",
                                                 skip_bad=d.skip_bad_records)
    except UsageError:
        raise
    except ValueError as e:
        raise UsageError(None, str(e)) from None
    try:
        tokenizer = load_tokenizer(source, trust_remote_code=job.model.trust_remote_code)
    except ValueError as e:
        raise UsageError("model", str(e)) from None
    if d.spans != "given":
        forget = _find_spans(forget, d, source, tokenizer)
    forget = chunk_passages(tokenizer, forget, d.max_length)
    try:
        dataset = PALUDataset(tokenizer, forget, retain, max_length=d.max_length,
                              first_n=d.first_n, seed=job.training.seed,
                              skip_bad=d.skip_bad_records)
    except ValueError as e:
        hint = "" if d.skip_bad_records else " (`skip_bad_records=True` skips such records)"
        raise UsageError("max_length", f"{d.max_length}: {e}{hint}") from None
    if job.method.name == "palu":
        check_unlearns(dataset, d)
    return _Data(forget=forget, forget_report=forget_report, retain=retain,
                 retain_report=retain_report, tokenizer=tokenizer, dataset=dataset)


def _load_model(job: UnlearningJob, source: ModelSource):
    """The model to train (LoRA-wrapped, or all but its last ``train_layers`` frozen)."""
    m = job.model
    try:
        model = load_model(source, trust_remote_code=m.trust_remote_code,
                           upcast_half_on_cpu=True,  # half precision training on the CPU is slow
                           lora_r=m.lora_r, lora_alpha=m.lora_alpha)
    except ValueError as e:
        raise UsageError("model", str(e)) from None
    if m.train_layers is not None:
        try:
            train_last_layers(model, m.train_layers)
        except ValueError as e:
            raise UsageError("train_layers", f"train_layers: {e}") from None
    return model


def _training_arguments(job: UnlearningJob, n_examples: int):
    """transformers ``TrainingArguments`` of the job (``n_examples``: the dataset's length,
    for the warm-up steps); joins the process group."""
    import torch
    from transformers import TrainingArguments

    tr, o = job.training, job.output
    world = int(os.environ.get("WORLD_SIZE", "1"))
    steps_per_epoch = math.ceil(math.ceil(n_examples / (tr.batch_size * world)) / tr.grad_accum)
    if tr.max_steps < 1 and math.ceil(tr.epochs * steps_per_epoch) < 1:
        raise UsageError("epochs", f"{tr.epochs} makes no optimizer step ({steps_per_epoch} per "
                                   "epoch): the model would be saved unchanged")
    targs = TrainingArguments(
        output_dir=o.output_dir, per_device_train_batch_size=tr.batch_size,
        gradient_accumulation_steps=tr.grad_accum, learning_rate=tr.lr,
        weight_decay=tr.weight_decay, optim=tr.optim, num_train_epochs=tr.epochs,
        max_steps=tr.max_steps, warmup_steps=int(round(tr.warmup_epochs * steps_per_epoch)),
        lr_scheduler_type="linear", logging_steps=tr.logging_steps,
        save_strategy="steps" if o.save_steps > 0 else "epoch",
        save_steps=o.save_steps if o.save_steps > 0 else 500,
        save_total_limit=o.save_total_limit, seed=tr.seed, data_seed=tr.seed,
        bf16=tr.bf16, report_to="none", remove_unused_columns=False,
        dataloader_num_workers=0, dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=False, ddp_find_unused_parameters=False,
        # accelerate treats several CPU processes (torchrun) as distributed, with gloo, only
        # when use_cpu is set
        use_cpu=not torch.cuda.is_available(),
    )
    _ = targs.device  # joins the process group: every process has checked the paths above
    return targs


def _siblings(output_dir: str, kind: str) -> list:
    """``.<output_dir>.<kind>-*`` next to ``output_dir`` (temporary and set-aside copies)."""
    out = os.path.abspath(output_dir)
    return glob.glob(os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.{kind}-*"))


def _prepare_output(o: OutputSpec, state):
    """Resume or overwrite: the checkpoint to resume from (``None``: start afresh). A killed
    final save's temporary copy goes; ``overwrite`` sets the old checkpoints aside (deleted
    only once the new result is published)."""
    resume = o.resume
    if state.is_main_process:
        for stale in _siblings(o.output_dir, "tmp"):
            shutil.rmtree(stale, ignore_errors=True)  # a final save that was killed
    if resume is True:
        resume, skipped = latest_complete_checkpoint(o.output_dir)
        if state.is_main_process:
            for path, why in skipped:
                print(f"palu-unlearn: resume: skipping {path}: {why}", file=sys.stderr)
            print(f"palu-unlearn: resuming from {resume}", file=sys.stderr)
    elif o.overwrite and not resume and state.is_main_process:
        # overwrite deletes nothing before the new result is complete: the old run's
        # checkpoints wait in a sibling directory (deleted after the new result is published)
        old = glob.glob(os.path.join(o.output_dir, "checkpoint-*"))
        if old:
            aside = make_temp_sibling(o.output_dir, "old")
            for path in old:
                os.replace(path, os.path.join(aside, os.path.basename(path)))
    state.wait_for_everyone()
    return resume


def _epoch_callback(dataset):
    """A ``TrainerCallback`` telling ``dataset`` the epoch (it reshuffles the retain pairs)."""
    from transformers import TrainerCallback

    class _Epoch(TrainerCallback):
        def on_epoch_begin(self, args, state, control, **kw):
            dataset.set_epoch(int((state.epoch or 0) + 1e-6))

    return _Epoch()


def _make_trainer(job: UnlearningJob, model, targs, data: _Data, *, callbacks, trainer_cls,
                  trainer_kwargs):
    """The method's trainer (``trainer_cls``: another one, with only the ``palu=`` config)."""
    from ..io.data import PALUCollator

    kwargs = (job.method.trainer_kwargs() if trainer_cls is None
              else {"palu": job.method.palu_config()})
    try:
        return (trainer_cls or trainer_class(job.method.name))(
            model=model, args=targs, train_dataset=data.dataset,
            data_collator=PALUCollator(data.tokenizer.pad_token_id),
            processing_class=data.tokenizer,
            callbacks=[_epoch_callback(data.dataset), *(callbacks or [])],
            **{**kwargs, **(trainer_kwargs or {})})
    except UsageError:  # e.g. no fused_linear for this model (FusedLinearError)
        raise
    except ValueError as e:
        raise UsageError(None, str(e)) from None


def _train(trainer, resume, output_dir: str):
    """Train (from the checkpoint ``resume``); a non-finite loss or weight stops the run."""
    try:
        train_out = trainer.train(resume_from_checkpoint=resume)
        trainer.check_finite_weights()
    except NonFiniteLossError as e:
        last, _ = latest_complete_checkpoint(output_dir)
        raise UsageError(None, f"{e}; stopped, nothing saved as the result"
                         + (f" (the last good checkpoint: {last})" if last else "")
                         + "; lower `lr` / `gamma` / `alpha` or check the data") from None
    return train_out


def _summary(job: UnlearningJob, data: _Data, trainer, train_out, state, *, n_measured: int,
             before: dict, after: dict, identity: dict, t0: float) -> dict:
    """The run summary (``run_summary.json``)."""
    d, ds = job.data, data.dataset
    fr, rr = data.forget_report, data.retain_report
    summary = {
        "command": job.command(),
        "arguments": job.arguments(),
        "versions": _versions(),
        "world_size": state.num_processes,
        "engine": trainer.engine,
        "data": {"forget": fr.describe(), "forget_pieces": len(data.forget),
                 "measured_forget": n_measured,
                 "forget_spans": sum(len(r.spans) for r in data.forget),
                 "forget_skipped": [f"{d.forget}:{ln}: {why}" for ln, why in fr.skipped]
                                   + ds.skipped_forget,
                 "retain": rr.describe() if rr else None,
                 "retain_skipped": ([f"{d.retain}:{ln}: {why}" for ln, why in rr.skipped]
                                    if rr else []) + ds.skipped_retain,
                 "truncated_forget": sum(e["truncated"] for e in ds.forget),
                 "truncated_retain": ds.n_truncated_retain,
                 "initiating_rows": ds.n_initiating,
                 "forget_without_spans": ds.n_without_spans},
        "palu": job.method.palu_config().to_dict(),
        "method": {"name": job.method.name, **getattr(trainer, "hparams", {})},
        "steps": trainer.state.global_step,
        "train_runtime_s": round(time.time() - t0, 2),
        "loss_curve": [dict(h) for h in trainer.state.log_history if "loss" in h],
        "before": before,
        "after": after,
        "output_dir": os.path.abspath(job.output.output_dir),
        "identity": identity,
    }
    summary["train_loss"] = getattr(train_out, "training_loss", None)
    return summary


def _publish(trainer, tokenizer, summary: dict, output_dir: str, state, *, verbose: bool):
    """Save the result (the main process; FSDP: every process gathers the whole weights),
    then delete the checkpoints ``overwrite`` set aside."""
    final = trainer.accelerator.unwrap_model(trainer.model)
    full_state = (trainer.accelerator.get_state_dict(trainer.model)
                  if trainer.engine == "fsdp2" else None)
    if state.is_main_process:
        save_result(final, tokenizer, summary, output_dir, state_dict=full_state)
        # the new result is complete: old checkpoints set aside by overwrite (this run's, and
        # those of an earlier overwrite run that was killed) go now
        for old in _siblings(output_dir, "old"):
            shutil.rmtree(old, ignore_errors=True)
        if verbose:
            print_summary(summary)
    state.wait_for_everyone()


def check_unlearns(dataset, d: DataSpec) -> None:
    """PALU unlearns through its initiating rows: none over the whole forget set is a
    :class:`~palu_kernels.errors.UsageError` (with the count of records without spans)."""
    if dataset.n_initiating > 0:
        return
    n = len(dataset.forget_records)
    first_n = "all" if d.first_n is None else d.first_n
    raise UsageError(
        "forget", f"{d.forget!r}: no initiating row in the whole forget set "
        f"({dataset.n_without_spans} of {n} records have no target_words span; "
        f"`first_n={first_n}`, `max_length={d.max_length}`): the PALU local term would never "
        "apply. Annotate spans, or use a method without spans (e.g. `method=npo`)")


def save_result(model, tokenizer, summary: dict, output_dir: str, *, state_dict=None) -> None:
    """Write the final model, its tokenizer and ``run_summary.json`` (last) into a temporary
    sibling of ``output_dir``, fsync, then move them in (:func:`palu_kernels.outputs.
    publish_result`). A model with a non-finite weight is refused (nothing is written).
    ``state_dict``: the whole weights to save instead of the model's own parameters (under
    FSDP the parameters are shards; every process helped gather this)."""
    import torch

    from .heads import is_peft_model

    if state_dict is not None:
        bad = [k for k, v in state_dict.items()
               if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]
    else:
        bad = nonfinite_parameters(model)
    if bad:
        raise UsageError(None, f"{len(bad)} weight tensors are not finite (e.g. {bad[0]}); "
                               "nothing saved as the result")
    tmp = make_temp_sibling(output_dir)
    try:
        if is_peft_model(model):
            model.save_pretrained(os.path.join(tmp, "adapter"))
            model = model.merge_and_unload()
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(os.path.join(tmp, MARKER), summary, indent=2, default=str)
        publish_result(tmp, output_dir)
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def print_summary(s: dict) -> None:
    print("\n=== palu-unlearn summary ===")
    print(f"data:    {s['data']['forget']}")
    if s["data"]["retain"]:
        print(f"         {s['data']['retain']}")
    for line in s["data"]["forget_skipped"] + s["data"]["retain_skipped"]:
        print(f"  skipped {line}")
    print(f"steps:   {s['steps']} on {s['world_size']} process(es), {s['train_runtime_s']} s")
    keys = [k for k in ("forget_nll", "forget_local", "forget_kl", "retain_nll") if k in s["before"]]
    print(f"{'':14s}{'before':>12s}{'after':>12s}")
    for k in keys:
        print(f"{k:14s}{s['before'][k]:12.4f}{s['after'][k]:12.4f}")
    print(f"model:   {s['output_dir']} (safetensors, tokenizer, run_summary.json)")
