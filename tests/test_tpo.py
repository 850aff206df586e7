"""TPO (--method tpo): the loss against a plain transcription of its formula on random
batches (sequences without unwanted tokens included), the trainer's loss against the loss
function, and ``palu-unlearn --method tpo`` end to end on a tiny model."""

import json
import math

import pytest
import torch

pytest.importorskip("transformers")

from palu_kernels.constants import IGNORE_INDEX  # noqa: E402
from palu_kernels.train.methods.tpo import span_rows, tpo_loss, tpo_terms  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def transcription(z, zr, labels, u_rows, g_rows, beta):
    """-(2/beta) logsigmoid(beta * (mean_b mean_U z_ref[y] - mean_b mean_U z[y])) + mean_b
    mean_G NLL, written out one sequence and one row at a time (row t scores labels[t+1]);
    sequences without U rows are left out of the U means, sequences without G rows add 0."""
    B, T, _ = z.shape
    margins, nlls = [], []
    for b in range(B):
        u_m, u_r, g_nll = [], [], []
        for t in range(T - 1):
            y = int(labels[b, t + 1])
            if y == IGNORE_INDEX:
                continue
            if u_rows[b, t]:
                u_m.append(float(z[b, t, y]))
                u_r.append(float(zr[b, t, y]))
            if g_rows[b, t]:
                g_nll.append(float(torch.logsumexp(z[b, t].double(), 0)) - float(z[b, t, y]))
        if u_m:
            margins.append(sum(u_r) / len(u_r) - sum(u_m) / len(u_m))
        nlls.append(sum(g_nll) / len(g_nll) if g_nll else 0.0)
    pref = 0.0
    if margins:
        x = beta * sum(margins) / len(margins)
        pref = -(2 / beta) * -math.log1p(math.exp(-x))
    return pref + sum(nlls) / len(nlls), pref


def random_batch(seed, B=5, T=9, V=13, no_u=(1,), no_g=()):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(B, T, V, generator=g, dtype=torch.float64) * 2
    zr = torch.randn(B, T, V, generator=g, dtype=torch.float64) * 2
    labels = torch.randint(0, V, (B, T), generator=g)
    prompt = torch.randint(1, 4, (B,), generator=g)
    pad = torch.randint(0, 3, (B,), generator=g)
    for b in range(B):
        labels[b, :prompt[b]] = IGNORE_INDEX
        if pad[b]:
            labels[b, T - pad[b]:] = IGNORE_INDEX
    answer = torch.zeros(B, T, dtype=torch.bool)
    answer[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    sens = torch.rand(B, T, generator=g) < 0.4
    u = answer & sens
    gm = answer & ~sens
    for b in no_u:
        gm[b] |= u[b]
        u[b] = False
    for b in no_g:
        u[b] |= gm[b]
        gm[b] = False
    return z, zr, labels, u, gm


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("beta", [0.3, 1.0])
def test_loss_is_the_formula(seed, beta):
    z, zr, labels, u, g = random_batch(seed, no_u=(1,), no_g=(3,) if seed % 2 else ())
    assert not u[1].any() and u.any()
    got = tpo_loss(z, zr, labels, u, g, beta=beta)
    want, pref = transcription(z, zr, labels, u, g, beta)
    assert float(got) == pytest.approx(want, rel=1e-6, abs=1e-6)
    p, nll_g, margin, has_u = tpo_terms(z, zr, labels, u, g, beta=beta)
    assert float(p) == pytest.approx(pref, rel=1e-6, abs=1e-6)
    assert has_u.tolist() == [bool(u[b].any()) for b in range(u.shape[0])]


def test_no_unwanted_rows_anywhere_gives_no_preference_term():
    z, zr, labels, u, g = random_batch(7, no_u=range(5))
    z.requires_grad_(True)
    pref, nll_g, margin, _ = tpo_terms(z, zr, labels, u, g)
    assert float(pref) == 0.0 and float(margin) == 0.0
    want, _ = transcription(z.detach(), zr, labels, u, g, 0.3)
    loss = tpo_loss(z, zr, labels, u, g)
    assert float(loss) == pytest.approx(want, rel=1e-6)
    loss.backward()  # only the NLL_G term: no gradient on rows outside G
    rows = torch.zeros_like(g)
    rows[:, :-1] = g[:, :-1]
    assert torch.all(z.grad[~rows] == 0)


def test_gradient_lowers_the_unwanted_logits_and_spares_the_reference():
    z, zr, labels, u, g = random_batch(2)
    z.requires_grad_(True)
    zr.requires_grad_(True)
    pref, _, _, _ = tpo_terms(z, zr, labels, u, g)
    pref.backward()
    assert zr.grad is None or torch.all(zr.grad == 0)
    lab = labels[:, 1:].clamp(min=0)
    gz = z.grad[:, :-1].gather(-1, lab.unsqueeze(-1)).squeeze(-1)
    # minimising the preference term pushes z[y] down on U rows (positive gradient) only
    assert torch.all(gz[u[:, :-1]] > 0)
    assert torch.all(z.grad[:, :-1][~u[:, :-1]] == 0)


def test_refuses_bad_shapes_and_beta():
    z, zr, labels, u, g = random_batch(0)
    with pytest.raises(ValueError, match="beta"):
        tpo_loss(z, zr, labels, u, g, beta=0.0)
    with pytest.raises(ValueError, match="unwanted"):
        tpo_loss(z, zr, labels, u[:, :-1], g)


def test_span_rows_split_the_answer_rows():
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 5, 6, 7, 2, IGNORE_INDEX]])
    common = torch.tensor([[False, True, False, False, True, False, False]])
    u, g = span_rows({"forget_labels": labels, "forget_common_mask": common})
    # answer rows are 1..4 (they score tokens 2..5); common rows 1 and 4; the rest is U
    assert u.tolist() == [[False, False, True, True, False, False, False]]
    assert g.tolist() == [[False, True, False, False, True, False, False]]


@pytest.fixture(scope="module")
def synth_files(tmp_path_factory):
    from palu_kernels.demo.synth import generate_benchmark
    from palu_kernels.tiny import save_tiny_model

    d = tmp_path_factory.mktemp("tpo")
    paths = generate_benchmark(d / "data", n_people=4, questions_per_person=4,
                               forget_fraction=0.25, seed=0, n_real_authors=2, n_world_facts=2)
    texts = [json.loads(line)["answer"] for line in open(paths["full"], encoding="utf-8")]
    model = save_tiny_model(str(d / "model"), texts=texts * 4, vocab_size=300, hidden_size=32,
                            num_layers=1, num_heads=2, seed=0)
    return {"model": model, "forget": str(paths["forget_spans"]), "retain": str(paths["retain"])}


def test_trainer_loss_is_the_function(synth_files, tmp_path):
    from transformers import TrainingArguments

    from palu_kernels.train import PALUCollator, PALUDataset, load_records
    from palu_kernels.train.base import PALUConfig
    from palu_kernels.io.models import load_model, load_tokenizer
    from palu_kernels.train.registry import METHODS

    tok = load_tokenizer(synth_files["model"])
    forget, _ = load_records(synth_files["forget"])
    retain, _ = load_records(synth_files["retain"], spans="ignore")
    ds = PALUDataset(tok, forget, retain, seed=1)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4,
                             max_steps=1, report_to="none", remove_unused_columns=False,
                             save_strategy="no", use_cpu=True, disable_tqdm=True)
    ref = load_model(synth_files["model"], float32=True)
    with torch.no_grad():  # a reference that differs from the model
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    tr = METHODS["tpo"](model=load_model(synth_files["model"], float32=True), args=args,
                        train_dataset=ds, data_collator=PALUCollator(tok.pad_token_id),
                        ref_model=ref, palu=PALUConfig(k=10, backend="torch"),
                        baseline={"beta": 0.5, "gamma": 0.7, "alpha": 0.3})
    batch = tr.data_collator([ds[i] for i in range(4)])
    model = tr.model.eval()
    with torch.no_grad():
        got = float(tr.compute_loss(model, batch))
        ids, att = batch["forget_input_ids"], batch["forget_attention_mask"]
        u, g = span_rows(batch)
        assert u.any() and g.any()
        forget = tpo_loss(model(input_ids=ids, attention_mask=att).logits,
                          ref(input_ids=ids, attention_mask=att).logits,
                          batch["forget_labels"], u, g, beta=0.5)
        r = model(input_ids=batch["retain_input_ids"],
                  attention_mask=batch["retain_attention_mask"]).logits[:, :-1]
        rl = batch["retain_labels"][:, 1:]
        retain_nll = torch.nn.functional.cross_entropy(r.reshape(-1, r.shape[-1]), rl.reshape(-1),
                                                       ignore_index=IGNORE_INDEX)
    assert got == pytest.approx(0.7 * float(forget) + 0.3 * float(retain_nll), rel=1e-5)


def test_palu_unlearn_method_tpo(synth_files, tmp_path):
    from palu_kernels.cli import unlearn

    out = tmp_path / "out"
    rc = unlearn.main(["--model", synth_files["model"], "--forget", synth_files["forget"],
                       "--retain", synth_files["retain"], "--output-dir", str(out),
                       "--method", "tpo", "--lr", "1e-3", "--epochs", "1", "--batch-size", "2",
                       "--beta", "0.5"])
    assert rc in (0, None)
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["method"]["name"] == "tpo" and summary["method"]["beta"] == 0.5
    assert summary["steps"] >= 1
    logs = [h for h in summary["loss_curve"] if "forget_pref" in h]
    assert logs and all(math.isfinite(h["loss"]) for h in logs)
    assert (out / "model.safetensors").is_file()
