"""GPU check of palu-unlearn under FSDP2 through accelerate (``bench/gpu.sh`` step 4).

accelerate applies an FSDP config to GPU processes only, so this cannot run in the CPU test
suite (tests/test_fsdp.py covers the sharded fused loss with ``fully_shard`` directly). Here
the Trainer-level run: ``accelerate launch --config_file docs/accelerate_fsdp2.yaml
--num_processes N`` (N = the visible GPUs) on a tiny Llama and the synthetic benchmark, with
and without ``--fused-linear`` (triton backend), then the same job on one process without
FSDP. Checks: the summary says engine fsdp2, the saved weights are whole (the shapes of the
input model) and close to the single-process run's. Prints one line per check and exits 1
on any failure. Usage: ``python bench/fsdp_check.py [--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="fsdp_check")
    p.add_argument("--out", default=None, help="where to keep the runs (default: a temp dir)")
    a = p.parse_args(argv)
    import torch
    from safetensors.torch import load_file

    from palu_kernels.demo.synth import generate_benchmark
    from palu_kernels.tiny import save_tiny_model, tofu_texts

    if not torch.cuda.is_available():
        print("fsdp_check: skipped: no GPU (accelerate runs FSDP on GPUs only)")
        return 0
    ngpu = torch.cuda.device_count()
    root = a.out or tempfile.mkdtemp(prefix="fsdp_check_")
    data = generate_benchmark(os.path.join(root, "data"), n_people=20, questions_per_person=8,
                              forget_fraction=0.1, seed=0)
    model = os.path.join(root, "model")
    save_tiny_model(model, tofu_texts(str(data["full"])), vocab_size=640)
    base = ["--model", model, "--forget", str(data["forget_spans"]), "--retain",
            str(data["retain"]), "--k", "50", "--max-steps", "3", "--optim", "sgd", "--lr", "0.5",
            "--warmup-epochs", "0", "--batch-size", str(4 // min(ngpu, 4)), "--eval-retain", "8",
            "--seed", "0", "--backend", "triton", "--save-steps", "1000000"]
    config = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs",
                          "accelerate_fsdp2.yaml")
    env = {**os.environ, "TQDM_DISABLE": "1"}
    ok = True
    single = {}
    for fused in ([], ["--fused-linear"]):
        tag = "fused" if fused else "logits"
        ref_out = os.path.join(root, f"single_{tag}")
        cmd1 = [sys.executable, "-m", "palu_kernels.cli.unlearn", *base, *fused,
                "--batch-size", "4", "--output-dir", ref_out]
        out = os.path.join(root, f"fsdp_{tag}")
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config,
               "--num_processes", str(ngpu), "-m", "palu_kernels.cli.unlearn", *base, *fused,
               "--output-dir", out]
        for name, c in (("single", cmd1), ("fsdp2", cmd)):
            proc = subprocess.run(c, capture_output=True, text=True, env=env, timeout=600)
            print(f"fsdp_check: {tag} {name}: exit {proc.returncode}")
            if proc.returncode:
                print(proc.stderr[-3000:])
                ok = False
        if not ok:
            continue
        summary = json.load(open(os.path.join(out, "run_summary.json")))
        engine_ok = summary.get("engine") == "fsdp2"
        print(f"fsdp_check: {tag}: engine {summary.get('engine')!r} "
              f"({'ok' if engine_ok else 'FAILED: expected fsdp2'})")
        a_w = load_file(os.path.join(out, "model.safetensors"))
        b_w = load_file(os.path.join(ref_out, "model.safetensors"))
        m_w = load_file(os.path.join(model, "model.safetensors"))
        shapes_ok = all(a_w[k].shape == m_w[k].shape for k in m_w) and set(a_w) == set(m_w)
        diff = max((a_w[k].float() - b_w[k].float()).abs().max().item() for k in b_w)
        moved = max((m_w[k].float() - b_w[k].float()).abs().max().item() for k in b_w)
        close = diff <= 1e-3 * max(moved, 1e-12) + 1e-5
        print(f"fsdp_check: {tag}: whole weights {'ok' if shapes_ok else 'FAILED'}; max |fsdp2 - "
              f"single| {diff:.3g} against a training step of {moved:.3g} "
              f"({'ok' if close else 'FAILED'})")
        ok &= engine_ok and shapes_ok and close
        single[tag] = diff
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
