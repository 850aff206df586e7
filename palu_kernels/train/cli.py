"""``palu-unlearn``: PALU unlearning of a Hugging Face causal LM from the command line.

Example (CPU, tiny model built with ``palu_kernels.tiny.save_tiny_model``)::

    palu-unlearn --model /tmp/tiny-llama \\
        --forget ../shared/data/tofu/forget01_spans.jsonl \\
        --retain ../shared/data/tofu/retain99.json \\
        --epochs 1 --batch-size 4 --output-dir /tmp/tiny-unlearned --skip-bad-records

Add ``--fused-linear`` to compute the PALU forget loss from the last hidden states and the
``lm_head`` weight in row chunks, so the forget batch's ``[batch, length, vocab]`` logits are
never built (large vocabularies; models with a plain ``nn.Linear`` output projection).

Several processes: ``torchrun --nproc_per_node 2 -m palu_kernels.train.cli ...`` or
``accelerate launch -m palu_kernels.train.cli ...`` (same arguments). From Python:
``palu_kernels.train.cli.main([...])`` runs it (returns 0) and ``unlearn([...])`` returns the run
summary (a dict, also written to ``<output-dir>/run_summary.json``).
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import platform
import shutil
import sys
import time

from .models import ModelSource, load_model, load_tokenizer, resolve_model_path
from .registry import METHODS as _REGISTRY
from .registry import add_method_arguments, method_defaults, method_kwargs, trainer_class

METHODS = tuple(_REGISTRY)
"""``--method`` choices: the keys of :data:`palu_kernels.train.registry.METHODS`."""


def _target(value: str):
    if value in ("mean", "mean_detached", "topk_mean"):
        return value
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--target must be mean, mean_detached, topk_mean or a number, got {value!r}") from None


def _k(value: str):
    if value.lower() in ("none", "all"):
        return None
    k = int(value)
    if k < 1:
        raise argparse.ArgumentTypeError(f"--k must be >= 1 or 'all', got {value!r}")
    return k


def _first_n(value: str):
    n = int(value)
    if n < -1:
        raise argparse.ArgumentTypeError(f"--first-n must be >= 0 or -1 (every row), got {value!r}")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="palu-unlearn",
        description="Unlearn span-annotated facts from a causal LM with the PALU loss "
                    "(local entropy on the first tokens of sensitive spans, KL elsewhere, "
                    "NLL on a retain set).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", required=True,
                   help="local model directory, or a .gguf file (loaded with gguf_file=)")
    p.add_argument("--forget", required=True,
                   help="forget records, JSON / JSON lines {question, answer, target_words}")
    p.add_argument("--retain", default=None,
                   help="retain records, JSON / JSON lines {question, answer} (optional)")
    p.add_argument("--output-dir", required=True, help="where the unlearned model goes")
    p.add_argument("--method", default="palu", choices=METHODS, help="forget objective")
    p.add_argument("--k", type=_k, default=5000, help="top-K set size ('all' = whole vocabulary)")
    p.add_argument("--first-n", type=_first_n, default=3,
                   help="initiating rows per sensitive run (-1 = every sensitive row)")
    p.add_argument("--target", type=_target, default="mean",
                   help="local target: mean, mean_detached, topk_mean or a float")
    p.add_argument("--kl", default="reverse", choices=["reverse", "forward", "none"],
                   help="KL on common rows")
    p.add_argument("--gamma", type=float, default=None,
                   help="weight of the local term (baselines: of the forget loss); defaults: "
                        + ", ".join(f"{m} {method_defaults(m)['gamma']}" for m in METHODS))
    p.add_argument("--alpha", type=float, default=1.0,
                   help="weight of the KL and retain terms (baselines: of the retain NLL)")
    add_method_arguments(p)  # --beta, --delta, --idk-file
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "triton"])
    p.add_argument("--fused-linear", action="store_true",
                   help="palu only: compute the forget loss from the last hidden states and the "
                        "lm_head weight in row chunks, never the batch x length x vocab logits "
                        "(models with a plain Linear output projection: Llama, Qwen, SmolLM, ...)")
    p.add_argument("--chunk-rows", type=int, default=None,
                   help="rows projected at once with --fused-linear (default: chosen from the "
                        "vocabulary and hidden sizes)")
    p.add_argument("--lr", type=float, default=1e-5, help="peak learning rate (AdamW)")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--optim", default="adamw_torch",
                   help="optimizer name of transformers.TrainingArguments (e.g. adamw_torch, sgd)")
    p.add_argument("--epochs", type=float, default=10)
    p.add_argument("--max-steps", type=int, default=-1, help="stop after this many optimizer steps")
    p.add_argument("--warmup-epochs", type=float, default=1.0, help="linear warm-up length")
    p.add_argument("--batch-size", type=int, default=4, help="per-process micro-batch size")
    p.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps")
    p.add_argument("--max-length", type=int, default=512, help="longest tokenised example")
    p.add_argument("--lora-r", type=int, default=0, help="LoRA rank; 0 = full fine-tuning")
    p.add_argument("--lora-alpha", type=float, default=None, help="LoRA alpha (default 2 * r)")
    p.add_argument("--bf16", action="store_true", help="bf16 mixed precision")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--save-steps", type=int, default=0,
                   help="checkpoint every N optimizer steps (0 = at the end of each epoch)")
    p.add_argument("--save-total-limit", type=int, default=2, help="checkpoints kept")
    p.add_argument("--logging-steps", type=int, default=1)
    p.add_argument("--eval-retain", type=int, default=100,
                   help="retain records used for the before/after retain loss")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="CHECKPOINT",
                   help="resume from the last checkpoint in --output-dir (or from CHECKPOINT)")
    p.add_argument("--overwrite", action="store_true",
                   help="allow a non-empty --output-dir (its old checkpoint-* are removed)")
    p.add_argument("--skip-bad-records", action="store_true",
                   help="skip (and report) bad data records instead of failing")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow code from the model directory (off by default)")
    return p


def _is_within(path: str, parent: str) -> bool:
    path, parent = os.path.realpath(path), os.path.realpath(parent)
    return path == parent or path.startswith(parent.rstrip(os.sep) + os.sep)


def check_paths(args) -> tuple[str, str | None]:
    """Validate model/output paths; returns ``(model_dir, gguf_file_or_None)``."""
    try:
        source = resolve_model_path(args.model)
    except ValueError as e:
        raise SystemExit(f"palu-unlearn: --model {e}") from None
    model_dir, gguf = source.directory, source.gguf_file
    for flag, path in (("--forget", args.forget), ("--retain", args.retain)):
        if path is not None and not os.path.isfile(path):
            raise SystemExit(f"palu-unlearn: {flag} {path!r} is not a file")
    if _is_within(args.output_dir, model_dir):
        raise SystemExit(f"palu-unlearn: --output-dir {args.output_dir!r} is inside the input model "
                         f"directory {model_dir!r}; choose another directory")
    if os.path.isdir(args.output_dir) and os.listdir(args.output_dir):
        if not (args.resume or args.overwrite):
            raise SystemExit(f"palu-unlearn: --output-dir {args.output_dir!r} is not empty; pass "
                             "--resume to continue its run or --overwrite to replace it")
    elif os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        raise SystemExit(f"palu-unlearn: --output-dir {args.output_dir!r} exists and is not a directory")
    for flag in ("batch_size", "grad_accum", "max_length"):
        if getattr(args, flag) < 1:
            raise SystemExit(f"palu-unlearn: --{flag.replace('_', '-')} must be >= 1, "
                             f"got {getattr(args, flag)}")
    if args.lora_r < 0:
        raise SystemExit(f"palu-unlearn: --lora-r must be >= 0, got {args.lora_r}")
    if getattr(args, "fused_linear", False) and args.method != "palu":
        raise SystemExit(f"palu-unlearn: --fused-linear applies to --method palu only (the PALU "
                         f"loss from hidden states); --method {args.method} needs full logits")
    chunk_rows = getattr(args, "chunk_rows", None)
    if chunk_rows is not None and chunk_rows < 1:
        raise SystemExit(f"palu-unlearn: --chunk-rows must be >= 1, got {chunk_rows}")
    return model_dir, gguf


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


def run(args, callbacks=None, trainer_cls=None, trainer_kwargs=None) -> dict:
    """Run one unlearning job from parsed arguments; returns the run summary.

    ``callbacks`` are extra ``TrainerCallback`` objects; ``trainer_cls`` (default
    ``trainer_class(args.method)``) and ``trainer_kwargs`` (extra constructor arguments) let a
    caller run another :class:`~palu_kernels.train.base.UnlearningTrainer` subclass.
    """
    import torch
    from accelerate import PartialState
    from transformers import TrainerCallback, TrainingArguments, set_seed

    from .data import PALUCollator, PALUDataset, load_records
    from .base import PALUConfig
    from .heads import FusedLinearError, is_peft_model

    t0 = time.time()
    model_dir, gguf = check_paths(args)
    set_seed(args.seed)

    try:
        forget, forget_report = load_records(args.forget, spans="required",
                                             skip_bad=args.skip_bad_records)
        retain, retain_report = (None, None)
        if args.retain:
            retain, retain_report = load_records(args.retain, spans="ignore",
                                                 skip_bad=args.skip_bad_records)
    except ValueError as e:
        raise SystemExit(f"palu-unlearn: {e}") from None

    source = ModelSource(model_dir, gguf)
    tokenizer = load_tokenizer(source, trust_remote_code=args.trust_remote_code)
    model = load_model(source, trust_remote_code=args.trust_remote_code,
                       upcast_half_on_cpu=True,  # half precision training on the CPU is slow
                       lora_r=args.lora_r, lora_alpha=args.lora_alpha)

    dataset = PALUDataset(tokenizer, forget, retain, max_length=args.max_length,
                          first_n=args.first_n, seed=args.seed)
    collator = PALUCollator(tokenizer.pad_token_id)

    world = int(os.environ.get("WORLD_SIZE", "1"))
    steps_per_epoch = math.ceil(math.ceil(len(dataset) / (args.batch_size * world)) / args.grad_accum)
    warmup = int(round(args.warmup_epochs * steps_per_epoch))
    targs = TrainingArguments(
        output_dir=args.output_dir, per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum, learning_rate=args.lr,
        weight_decay=args.weight_decay, optim=args.optim, num_train_epochs=args.epochs, max_steps=args.max_steps,
        warmup_steps=warmup, lr_scheduler_type="linear", logging_steps=args.logging_steps,
        save_strategy="steps" if args.save_steps > 0 else "epoch",
        save_steps=args.save_steps if args.save_steps > 0 else 500,
        save_total_limit=args.save_total_limit, seed=args.seed, data_seed=args.seed,
        bf16=args.bf16, report_to="none", remove_unused_columns=False,
        dataloader_num_workers=0, dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=False, ddp_find_unused_parameters=False,
        # accelerate treats several CPU processes (torchrun) as distributed, with gloo, only
        # when use_cpu is set
        use_cpu=not torch.cuda.is_available(),
    )
    _ = targs.device  # joins the process group: every process has checked the paths above
    state = PartialState()
    if state.is_main_process and args.overwrite and not args.resume:
        for old in glob.glob(os.path.join(args.output_dir, "checkpoint-*")):
            shutil.rmtree(old)
    state.wait_for_everyone()
    resume = args.resume
    if resume is True:
        if not glob.glob(os.path.join(args.output_dir, "checkpoint-*")):
            raise SystemExit(f"palu-unlearn: --resume: no checkpoint-* in {args.output_dir!r}")

    class _Epoch(TrainerCallback):
        def on_epoch_begin(self, a, st, control, **kw):
            dataset.set_epoch(int((st.epoch or 0) + 1e-6))

    palu = PALUConfig(k=args.k, target=args.target, kl=None if args.kl == "none" else args.kl,
                      gamma=1.0 if args.gamma is None else args.gamma, alpha=args.alpha,
                      backend=args.backend, fused_linear=getattr(args, "fused_linear", False),
                      chunk_rows=getattr(args, "chunk_rows", None))
    kwargs = method_kwargs(args) if trainer_cls is None else {}  # BaselineConfig from --beta ...
    try:
        trainer = (trainer_cls or trainer_class(args.method))(
            model=model, args=targs, train_dataset=dataset, data_collator=collator, palu=palu,
            processing_class=tokenizer, callbacks=[_Epoch(), *(callbacks or [])],
            **{**kwargs, **(trainer_kwargs or {})})
    except FusedLinearError as e:  # the model cannot take --fused-linear: say why, no traceback
        raise SystemExit(f"palu-unlearn: {e}") from None

    # Fixed measurement set: every forget record, each paired with a retain record.
    eval_items = [dataset[i] for i in range(len(dataset))]
    if retain:
        n_eval = min(args.eval_retain, len(retain))
        for i, item in enumerate(eval_items):
            if n_eval:
                item["retain"] = dataset.encoded_retain(dataset._perm[i % n_eval])
            else:
                item.pop("retain", None)
    before = trainer.measure(eval_items, batch_size=args.batch_size, desc="losses before")
    train_out = trainer.train(resume_from_checkpoint=resume)
    after = trainer.measure(eval_items, batch_size=args.batch_size, desc="losses after")

    summary = {
        "command": "palu-unlearn " + " ".join(getattr(args, "_argv", []) or []),
        "arguments": {k: v for k, v in vars(args).items() if not k.startswith("_")},
        "versions": _versions(),
        "world_size": state.num_processes,
        "data": {"forget": forget_report.describe(),
                 "forget_skipped": [f"{args.forget}:{ln}: {why}" for ln, why in forget_report.skipped],
                 "retain": retain_report.describe() if retain_report else None,
                 "retain_skipped": ([f"{args.retain}:{ln}: {why}" for ln, why in retain_report.skipped]
                                    if retain_report else []),
                 "truncated_forget": sum(e["truncated"] for e in dataset.forget),
                 "truncated_retain": dataset.n_truncated_retain},
        "palu": palu.to_dict(),
        "method": {"name": args.method, **getattr(trainer, "hparams", {})},
        "steps": trainer.state.global_step,
        "train_runtime_s": round(time.time() - t0, 2),
        "loss_curve": [{k: v for k, v in h.items()} for h in trainer.state.log_history if "loss" in h],
        "before": before,
        "after": after,
        "output_dir": os.path.abspath(args.output_dir),
    }
    summary["train_loss"] = getattr(train_out, "training_loss", None)

    final = trainer.accelerator.unwrap_model(trainer.model)
    if state.is_main_process:
        if is_peft_model(final):
            final.save_pretrained(os.path.join(args.output_dir, "adapter"))
            final = final.merge_and_unload()
        final.save_pretrained(args.output_dir, safe_serialization=True)
        tokenizer.save_pretrained(args.output_dir)
        with open(os.path.join(args.output_dir, "run_summary.json"), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2, default=str)
        _print_summary(summary)
    state.wait_for_everyone()
    return summary


def _print_summary(s: dict) -> None:
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


def unlearn(argv=None) -> dict:
    """Parse ``argv`` (a list of CLI arguments) and run; returns the run summary dict."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args._argv = argv
    return run(args)


def main(argv=None) -> int:
    """Entry point of ``palu-unlearn``; ``main([...])`` works from Python too (returns 0; use
    :func:`unlearn` for the summary dict). ``palu-unlearn demo ...`` runs the demo
    (:mod:`palu_kernels.demo.run`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["demo"]:
        from ..demo.run import main as demo_main

        return demo_main(argv[1:])
    unlearn(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
