"""PALUTrainer with ``fused_linear`` (``palu-unlearn --fused-linear``) on a tiny Llama (CPU).

The fused path (hidden states + lm_head weight into ``palu_fused_linear_loss``) must give the
loss, logged terms and parameter gradients of the logits path, never project every position
of the forget batch, and refuse models and methods it cannot serve.
"""

import os

import pytest
import torch

pytest.importorskip("transformers")

from safetensors.torch import load_file  # noqa: E402
from transformers import TrainingArguments  # noqa: E402

from palu_kernels.tiny import (build_tiny_llama)
from palu_kernels.cli import unlearn as cli  # noqa: E402
from palu_kernels.train import (PALUCollator, PALUConfig, PALUDataset,  # noqa: E402
                                PALUTrainer)
from palu_kernels.train.heads import FusedLinearError  # noqa: E402

from helpers import (tofu_tokenizer_and_records, needs_tofu,
                     write_tofu_subset)  # noqa: E402

pytestmark = [needs_tofu, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def data():
    tok, forget, retain = tofu_tokenizer_and_records(4, 4)
    collate = PALUCollator(tok.pad_token_id)
    with_retain = PALUDataset(tok, forget[:4], retain[:4], first_n=2, seed=1)
    forget_only = PALUDataset(tok, forget[:4], None, first_n=2, seed=1)
    return {"tok": tok, "batch": collate([with_retain[i] for i in range(4)]),
            "with_retain": with_retain,
            "forget_batch": collate([forget_only[i] for i in range(4)]), "collate": collate}


def tiny(tok, tie=False):
    return build_tiny_llama(tok, hidden_size=32, num_layers=1, num_heads=2, seed=0,
                            tie_word_embeddings=tie).train()


def make_trainer(tmp_path, model, data, cls=PALUTrainer, **palu):
    args = TrainingArguments(
        output_dir=str(tmp_path), report_to="none", remove_unused_columns=False, use_cpu=True,
        disable_tqdm=True, save_strategy="no", dataloader_pin_memory=False)
    cfg = PALUConfig(**{"k": 50, "backend": "torch", **palu})
    return cls(model=model, args=args, data_collator=data["collate"], palu=cfg)


def perturb(model):
    """Move the trainable weights away from the frozen reference (else KL and its gradient are
    0), identically for every call: seeded noise on the parameters that require grad."""
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters(), key=lambda np: np[0]):
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=gen))


def loss_and_grads(tmp_path, data, fused, *, tie=False, lora=False, batch="batch", **palu):
    model = tiny(data["tok"], tie)
    if lora:
        peft = pytest.importorskip("peft")
        model = peft.get_peft_model(model, peft.LoraConfig(
            r=2, lora_alpha=4, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"]))
    trainer = make_trainer(tmp_path, model, data, fused_linear=fused, **palu)
    perturb(model)  # after the trainer made its frozen reference
    loss = trainer.compute_loss(model, data[batch])
    loss.backward()
    loss = loss.detach()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    logs = {n: float(v) for n, v in trainer._metric_sums.items()}
    return float(loss), grads, logs


def assert_same(a, b, rtol=1e-5):
    loss_a, grads_a, logs_a = a
    loss_b, grads_b, logs_b = b
    assert loss_b == pytest.approx(loss_a, rel=rtol)
    assert logs_a.keys() == logs_b.keys() and {"forget_local", "forget_kl"} <= set(logs_a)
    for name in logs_a:
        assert logs_b[name] == pytest.approx(logs_a[name], rel=rtol, abs=1e-7), name
    assert grads_a.keys() == grads_b.keys()
    for name, g in grads_a.items():
        assert grads_b[name] is not None, name
        scale = g.abs().max().item()
        torch.testing.assert_close(grads_b[name], g, rtol=rtol, atol=rtol * scale + 1e-9,
                                   msg=name)


@pytest.mark.parametrize("palu", [
    {"gamma": 2.0, "alpha": 0.5, "chunk_rows": 5},  # ragged chunks; retain term included
    {"k": None, "target": "topk_mean", "kl": "forward"},
    {"k": 7, "target": 0.5, "kl": None, "chunk_rows": 3},
], ids=["mean-reverse", "topk_mean-forward", "const-nokl"])
def test_fused_equals_logits_path(data, tmp_path, palu):
    ref = loss_and_grads(tmp_path, data, False, **palu)
    fused = loss_and_grads(tmp_path, data, True, **palu)
    assert ref[2]["forget_local"] > 0 and (palu.get("kl", "reverse") is None
                                           or ref[2]["forget_kl"] > 0)
    assert_same(ref, fused)
    assert ref[1]["lm_head.weight"].abs().max() > 0  # the head does get a gradient


def test_tied_embeddings(data, tmp_path):
    model = tiny(data["tok"], tie=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    ref = loss_and_grads(tmp_path, data, False, tie=True, gamma=1.5)
    fused = loss_and_grads(tmp_path, data, True, tie=True, gamma=1.5)
    assert "lm_head.weight" not in ref[1]  # one shared parameter: both uses add to its grad
    assert_same(ref, fused)


def test_lora_reference_is_the_base_with_adapter_disabled(data, tmp_path):
    ref = loss_and_grads(tmp_path, data, False, lora=True)
    fused = loss_and_grads(tmp_path, data, True, lora=True)
    assert ref[2]["forget_kl"] > 0 and all("lora_" in n for n in ref[1])
    assert_same(ref, fused)


def test_bf16_mixed_precision_step(data, tmp_path):
    """--bf16: accelerate runs the model under autocast; the fused call then projects in bf16
    like the lm_head does, and one SGD step lands where the logits path's step lands."""
    tok, ds = data["tok"], data["with_retain"]

    def step(fused, out):
        model = tiny(tok)
        args = TrainingArguments(
            output_dir=str(tmp_path / out), per_device_train_batch_size=4, max_steps=1,
            learning_rate=0.5, optim="sgd", lr_scheduler_type="constant", weight_decay=0.0,
            bf16=True, use_cpu=True, report_to="none", remove_unused_columns=False, logging_steps=1,
            save_strategy="no", disable_tqdm=True, seed=0, dataloader_pin_memory=False)
        trainer = PALUTrainer(model=model, args=args, train_dataset=ds,
                              data_collator=data["collate"],
                              palu=PALUConfig(k=50, backend="torch", fused_linear=fused))
        perturb(model)
        if fused:
            assert trainer._fused_dtype("cpu", torch.float32) == torch.bfloat16
        start = model.lm_head.weight.detach().clone()
        trainer.train()
        return trainer.state.log_history[0]["loss"], model.lm_head.weight.detach() - start

    loss_ref, delta_ref = step(False, "a")
    loss_fused, delta_fused = step(True, "b")
    assert loss_fused == pytest.approx(loss_ref, rel=2e-2)
    cos = torch.nn.functional.cosine_similarity(delta_ref.flatten(), delta_fused.flatten(), dim=0)
    assert delta_ref.abs().max() > 0 and cos > 0.99


def test_forget_batch_never_projects_every_position(data, tmp_path):
    shapes = {}

    def run(fused):
        model = tiny(data["tok"])
        trainer = make_trainer(tmp_path, model, data, fused_linear=fused)
        seen = shapes.setdefault(fused, [])
        for m in (model, trainer.ref_model):
            m.lm_head.register_forward_hook(lambda mod, i, out: seen.append(out.shape[1]))
        seen.clear()  # drop the check forward of the trainer's construction
        trainer.compute_loss(model, data["forget_batch"]).backward()

    run(False)
    run(True)
    length = data["forget_batch"]["forget_input_ids"].shape[1]
    assert shapes[False] == [length, length]  # reference and model logits, every position
    assert shapes[True] == [1, 1]  # only the last position of each sequence


class ScaledHead(torch.nn.Linear):
    def forward(self, x):
        return 2.0 * super().forward(x)


def test_unsupported_models_and_methods(data, tmp_path):
    from palu_kernels.train.methods.npo import NPOTrainer

    tok = data["tok"]
    model = tiny(tok)
    model.config.final_logit_softcapping = 30.0
    with pytest.raises(FusedLinearError, match=r"final_logit_softcapping=30\.0.*soft-caps"):
        make_trainer(tmp_path, model, data, fused_linear=True)
    make_trainer(tmp_path, model, data)  # the logits path accepts it

    model = tiny(tok)
    old = model.lm_head
    model.lm_head = ScaledHead(old.in_features, old.out_features, bias=False)
    with pytest.raises(FusedLinearError, match=r"plain torch\.nn\.Linear.*ScaledHead"):
        make_trainer(tmp_path, model, data, fused_linear=True)

    model = tiny(tok)  # a transform that no config field announces: found by running it
    model.lm_head.register_forward_hook(lambda mod, i, out: out * 0.5)
    with pytest.raises(FusedLinearError, match=r"not lm_head\(last hidden states\)"):
        make_trainer(tmp_path, model, data, fused_linear=True)

    with pytest.raises(FusedLinearError, match="PALU loss only; NPOTrainer"):
        make_trainer(tmp_path, tiny(tok), data, cls=NPOTrainer, fused_linear=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_tofu_subset(tmp_path_factory.mktemp("palu_fused_cli"), 4, 4)


def argv(files, out, *extra):
    return ["--model", files["model"], "--forget", files["forget"], "--retain", files["retain"],
            "--output-dir", str(out), "--k", "50", "--optim", "sgd", "--lr", "0.5",
            "--batch-size", "2", "--max-steps", "2", "--warmup-epochs", "0", "--seed", "3",
            "--eval-retain", "4", *extra]


def test_cli_fused_linear_runs_and_matches(files, tmp_path):
    fused = cli.unlearn(argv(files, tmp_path / "fused", "--fused-linear", "--chunk-rows", "4"))
    plain = cli.unlearn(argv(files, tmp_path / "plain"))
    assert fused["steps"] == 2 and fused["palu"]["fused_linear"] is True
    assert fused["palu"]["chunk_rows"] == 4 and plain["palu"]["fused_linear"] is False
    assert fused["after"]["forget_local"] < fused["before"]["forget_local"]
    assert [h["loss"] for h in fused["loss_curve"]] == pytest.approx(
        [h["loss"] for h in plain["loss_curve"]], rel=1e-5)
    a = load_file(str(tmp_path / "fused" / "model.safetensors"))
    b = load_file(str(tmp_path / "plain" / "model.safetensors"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-6, msg=name)

    with pytest.raises(SystemExit, match="--fused-linear applies to --method palu only"):
        cli.main(argv(files, tmp_path / "o", "--fused-linear", "--method", "npo"))
    with pytest.raises(SystemExit, match="--chunk-rows must be >= 1"):
        cli.main(argv(files, tmp_path / "o", "--fused-linear", "--chunk-rows", "0"))
    assert not os.path.exists(tmp_path / "o")
