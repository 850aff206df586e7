"""FSDP2 on the CPU (2 processes, gloo): the fused PALU loss with a sharded lm_head, and the
launcher/engine combinations that are refused with one line.

accelerate applies an FSDP config to GPU processes only, so the Trainer-level run
(``accelerate launch --config_file docs/accelerate_fsdp2.yaml -m palu_kernels.cli.unlearn``)
is in the GPU script (``bench/gpu.sh``); here ``fully_shard`` is applied directly, as
accelerate does, and the trainer's own fused path runs on the shards (tests/fsdp_worker.py).
"""

import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("transformers")

from palu_kernels.train.distributed import EngineError, check_engine, check_launch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_fused_linear_on_fsdp2_shards_matches_unsharded(tmp_path, tied):
    result = tmp_path / "result"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FSDP_RESULT": str(result),
           "FSDP_TIED": "1" if tied else "0",
           "PYTHONPATH": os.pathsep.join([os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           os.path.join(HERE, "fsdp_worker.py")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    for rank in (0, 1):
        path = f"{result}.{rank}"
        assert os.path.exists(path), proc.stderr[-3000:]
        assert json.load(open(path)) == "ok", json.load(open(path))
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_fsdp_config_on_cpu_is_refused_not_run_unsharded():
    with pytest.raises(EngineError, match="ACCELERATE_USE_FSDP=true.*no GPU"):
        check_launch(cuda=False, environ={"ACCELERATE_USE_FSDP": "true"})
    with pytest.raises(EngineError, match="DeepSpeed"):
        check_launch(cuda=False, environ={"ACCELERATE_USE_DEEPSPEED": "true"})
    check_launch(cuda=True, environ={"ACCELERATE_USE_FSDP": "true"})
    check_launch(cuda=False, environ={})


@pytest.mark.parametrize("engine,fused,lora,match", [
    ("deepspeed", False, False, "DeepSpeed is not supported"),
    ("fsdp1", True, False, "fsdp_version: 2"),
    ("fsdp2", True, True, "`fused_linear` with `lora_r` under FSDP2"),
])
def test_unsupported_engine_combinations_are_refused(engine, fused, lora, match):
    with pytest.raises(EngineError, match=match):
        check_engine(engine, fused_linear=fused, lora=lora)


@pytest.mark.parametrize("engine,fused,lora", [
    ("single", True, True), ("ddp", True, False), ("fsdp2", True, False), ("fsdp2", False, True)])
def test_supported_engine_combinations_pass(engine, fused, lora):
    check_engine(engine, fused_linear=fused, lora=lora)


def test_cli_refuses_fsdp_launch_on_cpu_in_one_line(tmp_path):
    """``accelerate launch`` with an FSDP config on a CPU machine: one line, exit status 2,
    before any model loads (the model path does not even need to hold a model's weights)."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    forget = tmp_path / "f.jsonl"
    forget.write_text(json.dumps({"question": "q", "answer": "a b", "target_words": []}) + "\n")
    env = {**os.environ, "ACCELERATE_USE_FSDP": "true", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "palu_kernels.cli.unlearn", "--model", str(model), "--forget",
           str(forget), "--output-dir", str(tmp_path / "out")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "ACCELERATE_USE_FSDP=true" in last and "Traceback" not in proc.stderr, proc.stderr
