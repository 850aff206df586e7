"""PALUTrainer on a tiny Llama built from a config (no download): loss, accumulation, LoRA."""

import gc

import pytest
import torch

pytest.importorskip("transformers")

from transformers import LlamaForCausalLM, TrainingArguments  # noqa: E402

from palu_kernels.loss import palu_local_entropy_loss  # noqa: E402
from palu_kernels.train import (PALUCollator, PALUConfig, PALUDataset, PALUTrainer,  # noqa: E402
                                )

from helpers import (tiny_llama, tofu_tokenizer_and_records, needs_tofu)  # noqa: E402

pytestmark = [needs_tofu, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def data():
    return tofu_tokenizer_and_records(4, 6)


tiny = tiny_llama


def make_trainer(tmp_path, model, tok, ds, *, bs=4, ga=1, lr=0.5, optim="sgd", steps=1, **palu):
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=bs, gradient_accumulation_steps=ga,
        learning_rate=lr, optim=optim, max_steps=steps, lr_scheduler_type="constant",
        weight_decay=0.0, report_to="none", remove_unused_columns=False, save_strategy="no",
        use_cpu=True, logging_steps=1, disable_tqdm=True, seed=0, dataloader_pin_memory=False)
    cfg = PALUConfig(**{"k": 50, "backend": "torch", **palu})
    return PALUTrainer(model=model, args=args, train_dataset=ds, data_collator=PALUCollator(
        tok.pad_token_id), palu=cfg)


def test_one_step_lowers_local_term(data, tmp_path):
    tok, forget, _ = data
    ds = PALUDataset(tok, forget, None, first_n=3)
    trainer = make_trainer(tmp_path, tiny(tok), tok, ds, lr=2.0, gamma=1.0, alpha=1.0)
    items = [ds[i] for i in range(len(ds))]
    before = trainer.measure(items)
    trainer.train()
    after = trainer.measure(items)
    assert after["forget_local"] < 0.9 * before["forget_local"], (before, after)
    log = trainer.state.log_history[0]
    assert {"forget_local", "forget_kl", "n_initiating", "n_common"} <= set(log)
    assert log["forget_local"] == pytest.approx(before["forget_local"], rel=1e-4)


def _one_step(tmp_path, data, bs, ga):
    tok, forget, retain = data
    ds = PALUDataset(tok, forget, retain, first_n=2, seed=1)
    trainer = make_trainer(tmp_path, tiny(tok), tok, ds, bs=bs, ga=ga, lr=1.0, gamma=2.0,
                           alpha=0.5)
    trainer.train()
    return trainer


def test_gradient_accumulation_matches_one_batch(data, tmp_path):
    full = _one_step(tmp_path / "a", data, 4, 1)
    split = _one_step(tmp_path / "b", data, 1, 4)
    for (name, p), q in zip(full.model.named_parameters(), split.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    # the logged loss of the one-batch step equals the spec's objective computed by hand
    tok, forget, retain = data
    ds = PALUDataset(tok, forget, retain, first_n=2, seed=1)
    b = PALUCollator(tok.pad_token_id)([ds[i] for i in range(4)])
    model = tiny(tok)
    with torch.no_grad():
        z = model(input_ids=b["forget_input_ids"], attention_mask=b["forget_attention_mask"]).logits
        forget_loss = palu_local_entropy_loss(z, z, b["forget_initiating_mask"],
                                              b["forget_common_mask"], k=50, gamma=2.0, alpha=0.5)
        r = model(input_ids=b["retain_input_ids"], attention_mask=b["retain_attention_mask"]).logits
        nll = torch.nn.functional.cross_entropy(r[:, :-1].reshape(-1, r.shape[-1]),
                                                b["retain_labels"][:, 1:].reshape(-1))
    expected = float(forget_loss + 0.5 * nll)
    assert full.state.log_history[0]["loss"] == pytest.approx(expected, rel=1e-5)
    assert split.state.log_history[0]["loss"] == pytest.approx(expected, rel=1e-5)


def _n_llamas():
    gc.collect()
    return sum(type(o) is LlamaForCausalLM for o in gc.get_objects())


def test_lora_reference_is_the_base_without_a_copy(data, tmp_path):
    peft = pytest.importorskip("peft")
    tok, forget, retain = data
    ds = PALUDataset(tok, forget, retain, first_n=3)
    base = tiny(tok)
    ids = ds[0]["forget"]["input_ids"][None]
    with torch.no_grad():
        base_logits = base(input_ids=ids).logits.clone()
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                      target_modules=["q_proj", "v_proj", "down_proj"]))
    n0 = _n_llamas()
    trainer = make_trainer(tmp_path, model, tok, ds, lr=1e-2, optim="adamw_torch")
    assert trainer.ref_model is None and _n_llamas() == n0  # no second copy of the weights
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    trainer.train()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if "lora_" not in n)
    with torch.no_grad():
        ref = trainer.reference_logits(model, ids, torch.ones_like(ids))
        now = model(input_ids=ids).logits
    torch.testing.assert_close(ref, base_logits)
    assert not torch.allclose(now, base_logits, atol=1e-4)  # the adapter did learn
    # without PEFT the default reference is a frozen deep copy (one more model object)
    n1 = _n_llamas()
    full = make_trainer(tmp_path, tiny(tok), tok, ds)
    assert _n_llamas() == n1 + 2 and not full.ref_model.training
    assert not any(p.requires_grad for p in full.ref_model.parameters())
