"""``palu-unlearn``: PALU unlearning of a Hugging Face causal LM from the command line.

Example (CPU, tiny model built with ``palu_kernels.tiny.save_tiny_model``)::

    palu-unlearn --model /tmp/tiny-llama \\
        --forget ../shared/data/tofu/forget01_spans.jsonl \\
        --retain ../shared/data/tofu/retain99.json \\
        --epochs 1 --batch-size 4 --output-dir /tmp/tiny-unlearned --skip-bad-records

Add ``--fused-linear`` to compute the PALU forget loss from the last hidden states and the
``lm_head`` weight in row chunks, so the forget batch's ``[batch, length, vocab]`` logits are
never built (large vocabularies; models with a plain ``nn.Linear`` output projection).

Several processes: ``torchrun --nproc_per_node 2 -m palu_kernels.cli.unlearn ...`` or
``accelerate launch -m palu_kernels.cli.unlearn ...`` (same arguments). The command line
becomes an :class:`~palu_kernels.train.job.UnlearningJob` (:func:`job_from_args`) run by
:func:`palu_kernels.train.job.run_unlearning`, which library code calls directly. From
Python: ``main([...])`` runs it (returns 0) and ``unlearn([...])`` returns the run summary (a
dict, also written to ``<output-dir>/run_summary.json``).
"""

from __future__ import annotations

import argparse
import math
import sys

from ..train.job import (SPAN_SOURCES, DataSpec, MethodSpec, ModelSpec, OutputSpec,
                         TrainingOptions, UnlearningJob, run_unlearning)
from ._errors import DEBUG_HELP, flags_in_errors, run_cli
from ..train.registry import METHODS as _REGISTRY
from ..train.registry import method_defaults, trainer_class  # noqa: F401
from .options import FIRST_N_HELP, K_HELP, HelpFormatter, add_method_arguments, knob_values

METHODS = tuple(_REGISTRY)
"""``--method`` choices: the keys of :data:`palu_kernels.train.registry.METHODS`."""


def _target(value: str):
    if value in ("mean", "mean_detached", "topk_mean"):
        return value
    try:
        t = float(value)
    except ValueError:
        t = float("nan")
    if not math.isfinite(t):
        raise argparse.ArgumentTypeError(
            f"--target must be mean, mean_detached, topk_mean or a finite number, got {value!r}")
    return t


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="palu-unlearn",
        description="Unlearn span-annotated facts from a causal LM with the PALU loss "
                    "(local entropy on the first tokens of sensitive spans, KL elsewhere, "
                    "NLL on a retain set). `palu-unlearn demo --help`: the demo (fine-tune, "
                    "unlearn with PALU and baselines, evaluate, one table).",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--model", required=True,
                   help="local model directory, or a .gguf file (loaded with gguf_file=)")
    p.add_argument("--forget", required=True,
                   help="forget records, JSON / JSON lines {question, answer, target_words}, or "
                        "raw passages (.txt with blank lines between passages, a JSON list of "
                        "strings, {text, target_words} objects): every token an answer token, "
                        "cut into --max-length pieces")
    p.add_argument("--spans", default="given", choices=SPAN_SOURCES,
                   help="sensitive spans: the file's target_words, or computed as palu-spans "
                        "does (text: no model; predictability: the words --spans-reference "
                        "does not predict; contrast: --model against --spans-reference, "
                        "capped at 25%% of each raw passage's words)")
    p.add_argument("--spans-reference", default=None,
                   help="--spans contrast / predictability: a model that never saw the forget "
                        "data (retain or pre-trained base model: a directory, a .gguf file, or "
                        "smollm2)")
    p.add_argument("--retain", default=None,
                   help="retain records, JSON / JSON lines {question, answer} (optional)")
    p.add_argument("--output-dir", required=True, help="where the unlearned model goes")
    p.add_argument("--method", default="palu", choices=tuple(_REGISTRY), help="forget objective")
    # --k / --first-n stay text here: the job reads them (all_or_count), as every CLI does
    p.add_argument("--k", default=5000, help=K_HELP)
    p.add_argument("--first-n", default=3, help=FIRST_N_HELP)
    p.add_argument("--target", type=_target, default="mean",
                   help="local target: mean, mean_detached, topk_mean or a float")
    p.add_argument("--kl", default="reverse", choices=["reverse", "forward", "none"],
                   help="KL on common rows")
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
    p.add_argument("--train-layers", type=int, default=None, metavar="L",
                   help="train only the last L decoder layers and the final norm (the rest, "
                        "embeddings and output layer included, stay frozen; cheap on a CPU); "
                        "default: every parameter")
    p.add_argument("--bf16", action="store_true", help="bf16 mixed precision")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--save-steps", type=int, default=0,
                   help="checkpoint every N optimizer steps (0 = at the end of each epoch)")
    p.add_argument("--save-total-limit", type=int, default=2, help="checkpoints kept")
    p.add_argument("--logging-steps", type=int, default=1)
    p.add_argument("--eval-retain", type=int, default=100,
                   help="retain records used for the before/after retain loss")
    p.add_argument("--eval-forget", type=int, default=None,
                   help="forget items (records, or passage pieces) used for the before/after "
                        "losses: the first N (default: all; a long passage file has thousands "
                        "of pieces)")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="CHECKPOINT",
                   help="resume from the latest complete checkpoint in --output-dir (or from "
                        "CHECKPOINT); unfinished checkpoints are skipped and named")
    p.add_argument("--overwrite", action="store_true",
                   help="allow a non-empty --output-dir: its result is replaced once the new "
                        "one is complete (its old checkpoint-* wait in a sibling until then)")
    p.add_argument("--skip-bad-records", action="store_true",
                   help="skip (and report) bad data records instead of failing")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow code from the model directory (off by default)")
    p.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    add_method_arguments(p)  # --gamma, --alpha, --beta, ...: every method's settings
    return p


def job_from_args(args) -> UnlearningJob:
    """The :class:`~palu_kernels.train.job.UnlearningJob` of parsed ``palu-unlearn`` arguments."""
    return UnlearningJob(
        model=ModelSpec(path=args.model, lora_r=args.lora_r, lora_alpha=args.lora_alpha,
                        train_layers=args.train_layers,
                        trust_remote_code=args.trust_remote_code),
        data=DataSpec(forget=args.forget, retain=args.retain, max_length=args.max_length,
                      first_n=args.first_n, eval_retain=args.eval_retain,
                      eval_forget=args.eval_forget,
                      skip_bad_records=args.skip_bad_records, spans=args.spans,
                      spans_reference=args.spans_reference),
        method=MethodSpec(name=args.method, k=args.k, target=args.target,
                          kl=None if args.kl == "none" else args.kl, backend=args.backend,
                          fused_linear=args.fused_linear, chunk_rows=args.chunk_rows,
                          knobs=knob_values(args)),
        training=TrainingOptions(lr=args.lr, weight_decay=args.weight_decay, optim=args.optim,
                                 epochs=args.epochs, max_steps=args.max_steps,
                                 warmup_epochs=args.warmup_epochs, batch_size=args.batch_size,
                                 grad_accum=args.grad_accum, bf16=args.bf16, seed=args.seed,
                                 logging_steps=args.logging_steps),
        output=OutputSpec(output_dir=args.output_dir, save_steps=args.save_steps,
                          save_total_limit=args.save_total_limit, resume=args.resume,
                          overwrite=args.overwrite))


def run(args, callbacks=None, trainer_cls=None, trainer_kwargs=None) -> dict:
    """Run one unlearning job from parsed arguments; returns the run summary
    (:func:`palu_kernels.train.job.run_unlearning` of :func:`job_from_args`). A mistake is a
    ``SystemExit`` with one line naming the flag (as on the command line)."""
    with flags_in_errors("palu-unlearn"):
        return run_unlearning(job_from_args(args), callbacks=callbacks,
                              trainer_cls=trainer_cls, trainer_kwargs=trainer_kwargs)


def unlearn(argv=None) -> dict:
    """Parse ``argv`` (a list of CLI arguments) and run; returns the run summary dict."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return run(build_parser().parse_args(argv))


def main(argv=None) -> int:
    """Entry point of ``palu-unlearn``; ``main([...])`` works from Python too (returns 0; use
    :func:`unlearn` for the summary dict). ``palu-unlearn demo ...`` runs the demo
    (:mod:`palu_kernels.cli.demo`). An ordinary error: one line on stderr and ``SystemExit``
    with status 2 (:func:`palu_kernels.cli._errors.run_cli`; ``--debug``: the traceback)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["demo"]:
        from .demo import main as demo_main

        return run_cli("palu-unlearn demo", demo_main, argv[1:],
                       interrupted=lambda: "--out holds what was finished so far (the demo "
                                           "keeps no cache); rerun the command to start over")
    def go(argv):
        unlearn(argv)
        return 0

    return run_cli("palu-unlearn", go, argv, interrupted=lambda: on_disk(argv))


def on_disk(argv) -> str:
    """What an interrupted ``palu-unlearn argv`` left in its output directory, and how to
    continue (the last line of an interrupt)."""
    import os
    import shlex

    from ..outputs import MARKER, latest_complete_checkpoint

    out = build_parser().parse_known_args(argv)[0].output_dir
    ckpt, skipped = latest_complete_checkpoint(out)
    if ckpt is not None:
        again = argv if "--resume" in argv else argv + ["--resume"]
        return (f"{out} holds {os.path.basename(ckpt)} (the last complete checkpoint; no "
                f"result yet); continue with: palu-unlearn {shlex.join(again)}")
    if os.path.isfile(os.path.join(out, MARKER)):
        return f"{out} holds the earlier result, unchanged; rerun the command to replace it"
    if skipped:  # interrupted while writing the first checkpoint
        again = argv if "--overwrite" in argv else argv + ["--overwrite"]
        return (f"{out} holds only an unfinished {os.path.basename(skipped[-1][0])} (no "
                f"complete checkpoint); start again with: palu-unlearn {shlex.join(again)}")
    return f"no checkpoint was saved in {out}; rerun the command to start again"


if __name__ == "__main__":
    sys.exit(main())
