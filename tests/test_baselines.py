"""Baselines (GA, GradDiff, NPO, SimNPO, IdkDPO): losses against their formulas, registry,
trainer losses against the loss functions, accumulation invariance, one step of each method."""

import math
import os

import pytest
import torch

pytest.importorskip("transformers")

from transformers import TrainingArguments  # noqa: E402

from palu_kernels.train import (PALUCollator, PALUConfig, PALUDataset, PALUTrainer,  # noqa: E402
                                UnlearningTrainer)
from palu_kernels.train.methods.ga import GATrainer, ga_loss  # noqa: E402
from palu_kernels.train.methods.graddiff import graddiff_loss  # noqa: E402
from palu_kernels.train.methods.idkdpo import (BUILTIN_REFUSALS, DEFAULT_IDK_FILE,  # noqa: E402
                                               idkdpo_loss, load_refusals)
from palu_kernels.train.methods.idkdpo import IdkDPOConfig  # noqa: E402
from palu_kernels.train.methods.npo import NPOConfig, NPOTrainer, npo_loss  # noqa: E402
from palu_kernels.train.methods.sequence import sequence_logprob  # noqa: E402
from palu_kernels.train.methods.simnpo import SimNPOConfig, simnpo_loss  # noqa: E402
from palu_kernels.train.registry import LOSSES, METHODS, method_config, trainer_class  # noqa: E402

from helpers import tiny_llama, tofu_tokenizer_and_records, needs_tofu  # noqa: E402


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


LOGP = torch.tensor([-3.0, -5.0, -0.5], dtype=torch.float64)
REF = torch.tensor([-2.0, -6.0, -0.5], dtype=torch.float64)
NTOK = torch.tensor([2.0, 4.0, 1.0], dtype=torch.float64)


# ----------------------------------------------------------------------------- loss formulas

def test_ga_and_graddiff_losses():
    assert float(ga_loss(LOGP, NTOK)) == pytest.approx(-8.5 / 7)
    assert float(ga_loss(LOGP, NTOK, reduction="sum")) == pytest.approx(-8.5)
    assert ga_loss(LOGP, NTOK, reduction="none").tolist() == pytest.approx([-1.5, -1.25, -0.5])
    got = graddiff_loss(LOGP, NTOK, torch.tensor(1.2, dtype=torch.float64), gamma=2.0, alpha=0.5)
    assert float(got) == pytest.approx(2.0 * (-8.5 / 7) + 0.5 * 1.2)


@pytest.mark.parametrize("beta", [0.1, 1.0, 2.5])
def test_npo_loss(beta):
    per = [-(2 / beta) * logsig(-beta * (lp - r)) for lp, r in zip(LOGP.tolist(), REF.tolist())]
    assert npo_loss(LOGP, REF, beta=beta, reduction="none").tolist() == pytest.approx(per)
    assert float(npo_loss(LOGP, REF, beta=beta)) == pytest.approx(sum(per) / 3)
    assert float(npo_loss(LOGP, REF, beta=beta, reduction="sum")) == pytest.approx(sum(per))
    # equal to (2/beta) log 2 where the model agrees with the reference (third sequence)
    assert per[2] == pytest.approx(2 / beta * math.log(2))
    # the gradient w.r.t. logp is 2 sigmoid(beta (logp - ref)) / B: bounded, unlike GA's
    lp = LOGP.clone().requires_grad_(True)
    npo_loss(lp, REF, beta=beta).backward()
    expected = 2 * torch.sigmoid(beta * (LOGP - REF)) / 3
    torch.testing.assert_close(lp.grad, expected)


@pytest.mark.parametrize("beta,delta", [(4.5, 0.0), (1.0, 0.5), (2.0, -1.0)])
def test_simnpo_loss(beta, delta):
    per = [-(2 / beta) * logsig(-(beta / n) * lp - delta)
           for lp, n in zip(LOGP.tolist(), NTOK.tolist())]
    assert simnpo_loss(LOGP, NTOK, beta=beta, delta=delta,
                          reduction="none").tolist() == pytest.approx(per)
    assert float(simnpo_loss(LOGP, NTOK, beta=beta, delta=delta)) == pytest.approx(sum(per) / 3)
    # defaults are the SimNPO TOFU ones
    assert float(simnpo_loss(LOGP, NTOK)) == pytest.approx(
        sum(-(2 / 4.5) * logsig(-(4.5 / n) * lp) for lp, n in zip(LOGP.tolist(), NTOK.tolist())) / 3)


def test_idkdpo_loss():
    win = torch.tensor([-4.0, -1.0], dtype=torch.float64)
    win_ref = torch.tensor([-6.0, -1.5], dtype=torch.float64)
    lose, lose_ref = LOGP[:2], REF[:2]
    beta = 0.1
    per = [-(2 / beta) * logsig(beta * ((w - wr) - (lp - lr)))
           for w, wr, lp, lr in zip(win.tolist(), win_ref.tolist(), lose.tolist(), lose_ref.tolist())]
    assert idkdpo_loss(win, win_ref, lose, lose_ref, reduction="none").tolist() == pytest.approx(per)
    assert float(idkdpo_loss(win, win_ref, lose, lose_ref)) == pytest.approx(sum(per) / 2)
    # without a preferred answer it is NPO: win terms equal to their reference
    z = torch.zeros(2, dtype=torch.float64)
    torch.testing.assert_close(idkdpo_loss(z, z, lose, lose_ref), npo_loss(lose, lose_ref))


def test_sequence_logprob_against_hand_values():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6],
                                      [1 / 3, 1 / 3, 1 / 3]]]))
    labels = torch.tensor([[-100, 0, 2, -100]])  # row 0 predicts token 1 (0), row 1 token 2 (2)
    logp, n = sequence_logprob(logits, labels)
    assert logp.tolist() == pytest.approx([math.log(0.5) + math.log(0.3)], rel=1e-6)
    assert n.tolist() == [2.0]


def test_loss_argument_errors():
    with pytest.raises(ValueError, match="beta"):
        npo_loss(LOGP, REF, beta=0.0)
    with pytest.raises(ValueError, match="beta"):
        simnpo_loss(LOGP, NTOK, beta=-1.0)
    with pytest.raises(ValueError, match="ref_logp"):
        npo_loss(LOGP, REF[:2])
    with pytest.raises(ValueError, match="reduction"):
        npo_loss(LOGP, REF, reduction="avg")
    with pytest.raises(TypeError, match="n_tokens"):
        ga_loss(LOGP, [2, 4, 1])
    with pytest.raises(ValueError, match="1-D"):
        ga_loss(LOGP[None], NTOK[None])
    with pytest.raises(ValueError, match="logits"):
        sequence_logprob(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long))


# ----------------------------------------------------------------------------- registry, refusals

def test_registry_complete():
    assert list(METHODS) == ["palu", "ga", "graddiff", "npo", "simnpo", "idkdpo", "tpo"]
    assert METHODS["palu"] is PALUTrainer
    for name, cls in METHODS.items():
        # every method is a sibling on the common base, none a PALUTrainer subclass but palu
        assert issubclass(cls, UnlearningTrainer)
        assert issubclass(cls, PALUTrainer) == (name == "palu")
        assert trainer_class(name) is cls
        if name != "palu":
            assert cls.method == name and callable(LOSSES[name])
            assert cls.loss_function is LOSSES[name]
            assert cls.__doc__ and "L" in cls.__doc__  # documented with its formula
    # every baseline has its loss function (tpo's on logits and its U / G row masks)
    assert set(LOSSES) == set(METHODS) - {"palu"}
    with pytest.raises(ValueError, match="unknown method 'rmu'.*idkdpo"):
        trainer_class("rmu")


def test_method_kwargs_and_cli_options(tmp_path):
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--method")
    from palu_kernels.cli.options import add_method_arguments, method_kwargs

    add_method_arguments(p)
    idk = tmp_path / "x.txt"
    idk.write_text("I do not know.\n", encoding="utf-8")
    # simnpo has no idk_file: ignored by it
    args = p.parse_args(["--method", "simnpo", "--beta", "3", "--idk-file", str(idk)])
    assert method_kwargs(args) == {"baseline": SimNPOConfig(beta=3.0)}
    args = p.parse_args(["--method", "idkdpo", "--gamma", "2", "--idk-file", str(idk)])
    assert method_kwargs(args) == {"baseline": IdkDPOConfig(gamma=2.0, idk_file=str(idk))}
    assert method_kwargs(p.parse_args(["--method", "palu", "--beta", "3"])) == {}
    assert method_config("npo", beta=3.0) == NPOConfig(beta=3.0)
    assert method_config("npo", beta=None, delta=1.0) == NPOConfig()
    assert method_config("palu", beta=3.0) is None
    with pytest.raises(ValueError, match="temperature is not a setting of any method"):
        method_config("npo", temperature=2.0)
    with pytest.raises(ValueError, match="beta must be > 0, got 0"):
        method_config("npo", beta=0)


def test_load_refusals(tmp_path):
    f = tmp_path / "idk.txt"
    f.write_text('I do not know.\n\n"Quoted refusal."\n{"answer": "No idea."}\n', encoding="utf-8")
    assert load_refusals(str(f)) == ["I do not know.", "Quoted refusal.", "No idea."]
    (tmp_path / "empty.txt").write_text("\n  \n", encoding="utf-8")
    with pytest.raises(ValueError, match="no refusal answers"):
        load_refusals(str(tmp_path / "empty.txt"))
    (tmp_path / "bad.txt").write_text('{"question": "q"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="bad.txt:1"):
        load_refusals(str(tmp_path / "bad.txt"))
    with pytest.raises(ValueError, match="cannot read"):
        load_refusals(str(tmp_path / "missing.txt"))
    default = load_refusals()
    if os.path.isfile(DEFAULT_IDK_FILE):
        assert len(default) > 10 and all(isinstance(s, str) and s for s in default)
    else:
        assert default == list(BUILTIN_REFUSALS)


# ----------------------------------------------------------------------------- on a tiny model

@pytest.fixture(scope="module")
def data(one_thread):
    return tofu_tokenizer_and_records(4, 6)


tiny = tiny_llama


def make_trainer(tmp_path, method, tok, ds, *, bs=4, ga=1, lr=0.5, ref_model=None, **hp):
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=bs, gradient_accumulation_steps=ga,
        learning_rate=lr, optim="sgd", max_steps=1, lr_scheduler_type="constant",
        weight_decay=0.0, report_to="none", remove_unused_columns=False, save_strategy="no",
        use_cpu=True, logging_steps=1, disable_tqdm=True, seed=0, dataloader_pin_memory=False)
    kw = {"baseline": method_config(method, **hp)} if method != "palu" else {}
    return METHODS[method](model=tiny(tok), args=args, train_dataset=ds, ref_model=ref_model,
                              data_collator=PALUCollator(tok.pad_token_id),
                              palu=PALUConfig(k=50, backend="torch"), **kw)


def _logp(model, ids, att, labels):
    with torch.no_grad():
        return sequence_logprob(model(input_ids=ids, attention_mask=att).logits, labels)


@needs_tofu
@pytest.mark.parametrize("method", ["ga", "graddiff", "npo", "simnpo", "idkdpo"])
def test_trainer_loss_is_the_formula(data, tmp_path, method):
    """compute_loss on a batch = gamma * loss function(log-probs) + alpha * retain NLL, with a
    reference that differs from the model."""
    tok, forget, retain = data
    ds = PALUDataset(tok, forget, retain, seed=1)
    hp = {"gamma": 0.7, "alpha": 0.3, "beta": 0.5, "delta": 0.2}
    trainer = make_trainer(tmp_path, method, tok, ds, ref_model=tiny(tok, seed=5), **hp)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    model, ref = trainer.model.eval(), trainer.ref_model
    with torch.no_grad():
        got = float(trainer.compute_loss(model, batch))
    f = (batch["forget_input_ids"], batch["forget_attention_mask"], batch["forget_labels"])
    logp, n = _logp(model, *f)
    ref_logp, _ = _logp(ref, *f)
    if method in ("ga", "graddiff"):
        forget_term = ga_loss(logp, n)
    elif method == "npo":
        forget_term = npo_loss(logp, ref_logp, beta=0.5)
    elif method == "simnpo":
        forget_term = simnpo_loss(logp, n, beta=0.5, delta=0.2)
    else:
        idk = (batch["idk_input_ids"], batch["idk_attention_mask"], batch["idk_labels"])
        answers = tok.batch_decode(torch.where(idk[2] == -100, tok.pad_token_id, idk[2]),
                                   skip_special_tokens=True)
        refusals = load_refusals()
        assert all(a.strip() in refusals for a in answers), answers
        forget_term = idkdpo_loss(_logp(model, *idk)[0], _logp(ref, *idk)[0], logp, ref_logp,
                                     beta=0.5)
    r_logp, r_n = _logp(model, batch["retain_input_ids"], batch["retain_attention_mask"],
                        batch["retain_labels"])
    retain_nll = -r_logp.sum() / r_n.sum()
    expected = 0.7 * float(forget_term) + (0.0 if method == "ga" else 0.3 * float(retain_nll))
    assert got == pytest.approx(expected, rel=1e-5)


@needs_tofu
@pytest.mark.parametrize("method", ["ga", "npo", "idkdpo"])
def test_accumulation_matches_one_batch(data, tmp_path, method):
    """Token- (GA) and sequence-normalised (NPO, IdkDPO) losses: 4 micro-batches of 1 give the
    same step as one batch of 4 (answers of different lengths)."""
    tok, forget, retain = data
    ds = PALUDataset(tok, forget, retain, seed=1)
    runs = []
    for sub, (bs, ga) in (("a", (4, 1)), ("b", (1, 4))):
        t = make_trainer(tmp_path / sub, method, tok, ds, bs=bs, ga=ga, lr=1.0,
                         ref_model=tiny(tok, seed=5))
        t.train()
        runs.append(t)
    for (name, p), q in zip(runs[0].model.named_parameters(), runs[1].model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    assert runs[0].state.log_history[0]["loss"] == pytest.approx(
        runs[1].state.log_history[0]["loss"], rel=1e-5)


@needs_tofu
@pytest.mark.parametrize("method", list(METHODS))
def test_one_training_step_of_each_method(data, tmp_path, method):
    tok, forget, retain = data
    ds = PALUDataset(tok, forget, retain)
    trainer = make_trainer(tmp_path, method, tok, ds, lr=0.5)
    items = [ds[i] for i in range(len(ds))]
    before = trainer.measure(items)
    start = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    assert trainer.state.global_step == 1
    log = trainer.state.log_history[0]
    assert math.isfinite(log["loss"])
    assert any(not torch.equal(p, s) for p, s in zip(trainer.model.parameters(), start))
    after = trainer.measure(items)
    if method == "ga":  # gradient ascent raises the forget NLL
        assert after["forget_nll"] > before["forget_nll"]
        assert "retain_nll" not in log
    elif method != "palu":
        assert {"forget_loss", "forget_nll", "retain_nll"} <= set(log)


def test_bad_config():
    tok = 64  # a vocabulary size: the checks run before the Trainer is built
    with pytest.raises(ValueError, match="gamma must be >= 0, got -1.0"):
        GATrainer(model=tiny(tok), baseline={"gamma": -1.0})
    with pytest.raises(ValueError, match="beta must be > 0, got 0.0"):
        NPOTrainer(model=tiny(tok), baseline={"beta": 0.0})
    with pytest.raises(ValueError, match="beta must be > 0"):
        NPOConfig(beta=0.0)
    with pytest.raises(TypeError, match=r"npo has no setting\(s\) \['delta'\]; its settings: "
                                        "beta, gamma, alpha"):
        NPOTrainer(model=tiny(tok), baseline={"delta": 1.0})
    with pytest.raises(TypeError, match="must be a NPOConfig or a dict"):
        NPOTrainer(model=tiny(tok), baseline=[("beta", 1.0)])
    with pytest.raises(TypeError, match="takes no baseline= settings"):
        PALUTrainer(model=tiny(tok), baseline={"gamma": 1.0})


def test_config_instance_or_overrides(tmp_path):
    """The library API: a method's own config instance, or a dict of overrides."""
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    cfg = NPOConfig(beta=0.2)
    assert NPOTrainer(model=tiny(64), args=args, baseline=cfg).method_config is cfg
    t = NPOTrainer(model=tiny(64), args=args, baseline={"beta": 0.2, "alpha": None})
    assert t.method_config == NPOConfig(beta=0.2) and t.hparams == {
        "beta": 0.2, "gamma": 1.0, "alpha": 1.0}


def test_cli_method_choices_are_the_registry(tmp_path):
    from palu_kernels.cli import unlearn as cli

    if cli.METHODS == ("palu",):
        pytest.skip("palu-unlearn --method is not yet wired to registry.METHODS")
    assert cli.METHODS == tuple(METHODS)
    for name in METHODS:
        assert cli.trainer_class(name) is METHODS[name]
    args = cli.build_parser().parse_args(["--model", "m", "--forget", "f", "--output-dir", "o",
                                          "--method", "simnpo", "--beta", "3"])
    from palu_kernels.cli.options import method_kwargs

    assert method_kwargs(args) == {"baseline": SimNPOConfig(beta=3.0)}
