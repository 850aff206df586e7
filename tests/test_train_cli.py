"""palu-unlearn end to end on a tiny Llama (CPU): outputs, refusals, resume, LoRA, torchrun."""

import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("transformers")

from safetensors.torch import load_file  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from palu_kernels.cli import unlearn as cli  # noqa: E402

from helpers import needs_tofu, write_tofu_subset  # noqa: E402

pytestmark = [needs_tofu, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_tofu_subset(tmp_path_factory.mktemp("palu_cli"), 6, 8)


def argv(files, out, *extra):
    return ["--model", files["model"], "--forget", files["forget"], "--retain", files["retain"],
            "--output-dir", str(out), "--k", "50", "--lr", "1e-3", "--batch-size", "2",
            "--epochs", "2", "--seed", "3", "--warmup-epochs", "0.5", "--eval-retain", "4", *extra]


class _Interrupt(TrainerCallback):
    def on_step_begin(self, args, state, control, **kw):
        if state.global_step == 5:
            raise KeyboardInterrupt("simulated interruption")


def test_resume_after_interruption_matches_uninterrupted_run(files, tmp_path):
    full = cli.unlearn(argv(files, tmp_path / "a", "--save-steps", "4"))
    assert full["steps"] == 6  # 6 records / batch 2 = 3 steps per epoch, 2 epochs
    out = tmp_path / "b"
    args = cli.build_parser().parse_args(argv(files, out, "--save-steps", "4"))
    with pytest.raises(KeyboardInterrupt):
        cli.run(args, callbacks=[_Interrupt()])
    assert (out / "checkpoint-4").is_dir() and not (out / "model.safetensors").exists()
    with pytest.raises(SystemExit, match="not empty"):
        cli.main(argv(files, out))
    resumed = cli.unlearn(argv(files, out, "--save-steps", "4", "--resume"))
    assert resumed["steps"] == 6
    a, b = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)
    curve_a = {h["step"]: h["loss"] for h in full["loss_curve"]}
    curve_b = {h["step"]: h["loss"] for h in resumed["loss_curve"]}
    for step in (5, 6):  # the steps after the checkpoint: same batches, same retain pairs
        assert curve_b[step] == pytest.approx(curve_a[step], rel=1e-5)
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["arguments"]["k"] == 50 and "torch" in summary["versions"]
    assert set(summary["before"]) == {"forget_nll", "forget_local", "forget_kl", "retain_nll"}
    assert summary["before"]["forget_kl"] == 0.0 and summary["after"]["forget_kl"] > 0.0
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert AutoTokenizer.from_pretrained(str(out)).eos_token == "<|eos|>"
    torch.testing.assert_close(model.lm_head.weight, b["lm_head.weight"])


def test_lora_run_writes_a_merged_model(files, tmp_path):
    out = tmp_path / "lora"
    s = cli.unlearn(argv(files, out, "--lora-r", "2", "--max-steps", "2", "--lr", "1e-2"))
    assert s["steps"] == 2 and (out / "adapter" / "adapter_config.json").exists()
    merged = load_file(str(out / "model.safetensors"))
    base = load_file(os.path.join(files["model"], "model.safetensors"))
    assert merged.keys() == base.keys()  # a plain model: no lora_ tensors
    assert not torch.equal(merged["model.layers.0.self_attn.q_proj.weight"],
                           base["model.layers.0.self_attn.q_proj.weight"])


def test_refusals(files, tmp_path):
    with pytest.raises(SystemExit, match="inside the input model directory"):
        cli.main(argv(files, os.path.join(files["model"], "out")))
    with pytest.raises(SystemExit, match="does not exist"):
        cli.main(argv(files, tmp_path / "o") + ["--model", str(tmp_path / "nope")])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "Basil", "target_words": '
                   '[{"word": "Basel", "start": 0, "end": 5}]}\n')
    with pytest.raises(SystemExit, match=r"bad\.jsonl:1: target_words\[0\]: answer\[0:5\] is 'Basil'"):
        cli.main(argv(files, tmp_path / "o") + ["--forget", str(bad)])
    with pytest.raises(SystemExit):  # argparse: not a method of baselines.METHODS
        cli.main(argv(files, tmp_path / "o") + ["--method", "rmu"])
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep")
    with pytest.raises(SystemExit, match="--resume .* or --overwrite"):
        cli.main(argv(files, tmp_path / "full"))
    assert not os.path.exists(tmp_path / "o")


def test_torchrun_two_processes(files, tmp_path):
    out = tmp_path / "ddp"
    sgd = ["--max-steps", "2", "--optim", "sgd", "--lr", "0.5", "--warmup-epochs", "0"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "-m", "palu_kernels.cli.unlearn", *argv(files, out, *sgd, "--batch-size", "1")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 2
    assert "palu-unlearn summary" in proc.stdout
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(out))
    base = load_file(os.path.join(files["model"], "model.safetensors"))
    assert not torch.equal(model.lm_head.weight, base["lm_head.weight"])
    # 2 processes x batch 1 take the same two records per step as 1 process x batch 2, and
    # the loss is normalised over both: plain SGD ends with the same weights.
    single = tmp_path / "single"
    cli.main(argv(files, single, *sgd, "--batch-size", "2"))
    a, b = load_file(str(out / "model.safetensors")), load_file(str(single / "model.safetensors"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-6, msg=name)


def test_gguf_model_file(files, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from palu_kernels.tiny import save_tiny_gguf

    model = AutoModelForCausalLM.from_pretrained(files["model"])
    (tmp_path / "g").mkdir()
    gguf = save_tiny_gguf(str(tmp_path / "g" / "tiny.gguf"), model, AutoTokenizer.from_pretrained(files["model"]))
    out = tmp_path / "from_gguf"
    s = cli.unlearn(argv(files, out, "--max-steps", "1", "--warmup-epochs", "0") + ["--model", gguf])
    assert s["steps"] == 1 and sorted(os.listdir(tmp_path / "g")) == ["tiny.gguf"]
    # the GGUF holds the same weights: the losses before unlearning match the directory model's
    ref = cli.unlearn(argv(files, tmp_path / "from_dir", "--max-steps", "1", "--warmup-epochs", "0"))
    for key in ("forget_nll", "retain_nll", "forget_local"):
        assert s["before"][key] == pytest.approx(ref["before"][key], rel=1e-5)
    assert AutoModelForCausalLM.from_pretrained(str(out)).config.model_type == "llama"
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
