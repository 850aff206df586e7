"""The real-model benchmark's plumbing (``palu-experiment tofu-smollm2``) on a tiny model:
the TOFU subset, layer freezing, the evaluation cut, the staged selection and the report.
The benchmark itself (SmolLM2, hours) never runs here."""

import json
import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

TOFU = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "tofu")
needs_tofu = pytest.mark.skipif(not os.path.isdir(TOFU),
                                reason="../shared/data/tofu is absent (the TOFU data beside "
                                       "the repository)")


def _tiny(tmp_path, texts):
    from palu_kernels.eval.setups import QA_CHAT_TEMPLATE
    from palu_kernels.tiny import build_tiny_llama, build_tokenizer

    tok = build_tokenizer(texts, vocab_size=400, chat_template=QA_CHAT_TEMPLATE)
    model = build_tiny_llama(tok, hidden_size=32, num_layers=3, seed=0)
    d = str(tmp_path / "tiny")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d, model


def _tofu_texts(n=600):
    texts = []
    for name in ("full.json", "real_authors_perturbed.json", "world_facts_perturbed.json"):
        with open(os.path.join(TOFU, name), encoding="utf-8") as f:
            for line in f:
                r = json.loads(line)
                texts += [r["question"], r["answer"], *r.get("perturbed_answer", [])]
    return texts[:n]


def test_train_last_layers_freezes_all_but_the_top(tmp_path):
    from palu_kernels.io.models import train_last_layers

    _, model = _tiny(tmp_path, ["alpha beta gamma delta"] * 20)
    total = sum(p.numel() for p in model.parameters())
    n = train_last_layers(model, 1)
    top = model.model.layers[-1]
    assert n == sum(p.numel() for p in top.parameters()) + sum(
        p.numel() for p in model.model.norm.parameters())
    assert 0 < n < total
    assert all(p.requires_grad for p in top.parameters())
    assert not any(p.requires_grad for p in model.model.layers[0].parameters())
    assert not model.get_input_embeddings().weight.requires_grad
    for bad in (0, 4, 1.5, True):
        with pytest.raises(ValueError, match="train_layers"):
            train_last_layers(model, bad)


def test_train_layers_flag_checked_before_any_work():
    from palu_kernels.errors import UsageError
    from palu_kernels.train.checks import check_values
    from palu_kernels.train.job import DataSpec, ModelSpec, OutputSpec, UnlearningJob

    job = UnlearningJob(ModelSpec("m", train_layers=0), DataSpec("f"), OutputSpec("o"))
    with pytest.raises(UsageError, match="^train_layers must be >= 1"):
        check_values(job)
    job = UnlearningJob(ModelSpec("m", train_layers=2, lora_r=4), DataSpec("f"), OutputSpec("o"))
    with pytest.raises(UsageError, match="^train_layers .*`lora_r`"):
        check_values(job)


def test_select_prefers_utility_then_forget_quality():
    from palu_kernels.experiments.pareto import select

    rows = [{"method": "a", "setting": s, "forget_quality": fq, "model_utility": mu,
             "retain_mu": 1.0}
            for s, fq, mu in (("s1", 0.9, 0.5), ("s2", 0.3, 0.96), ("s3", 0.6, 0.95),
                              ("s4", None, 0.99))]
    # s1 has the best FQ but misses the utility bar: the two above it come first
    assert select(rows, threshold=0.95, keep=2) == {"a": ["s3", "s2"]}
    assert select(rows, threshold=0.999, keep=1) == {"a": ["s4"]}  # none qualifies: by MU
    # utility is relative to the same seed's retain model
    rows = [dict(r, retain_mu=2.0 if r["setting"] == "s1" else 1.0, mu_rel=None) for r in rows]
    for r in rows:
        del r["mu_rel"]
    rows[0]["model_utility"] = 1.9  # s1: 0.95 of its seed's retain model
    assert select(rows, threshold=0.95, keep=1) == {"a": ["s1"]}


@needs_tofu
def test_write_subset(tmp_path):
    from palu_kernels.experiments.tofu_real import write_subset

    out = write_subset(TOFU, str(tmp_path / "sub"), retain_authors=2, forget=5)
    read = lambda n: [json.loads(x) for x in open(os.path.join(out, n), encoding="utf-8")]  # noqa: E731
    assert len(read("forget01.json")) == 5 and len(read("forget01_spans.jsonl")) == 5
    retain = read("retain99.json")
    assert len(retain) == 40
    forget_q = {r["question"] for r in read("forget01.json")}
    assert not forget_q & {r["question"] for r in retain}
    assert {r["question"] for r in read("retain_perturbed.json")} <= {r["question"]
                                                                     for r in retain}
    # fine-tuning pairs are the authors' only: no extra files for the harness to add
    for name in ("real_authors.json", "world_facts.json", "full_perturbed.json"):
        assert not os.path.exists(os.path.join(out, name))
    with pytest.raises(FileNotFoundError, match="data_dir"):
        write_subset(str(tmp_path), str(tmp_path / "x"))


@needs_tofu
def test_write_subset_at_tofu_scale(tmp_path):
    """forget05 with TOFU's own retain set: every author outside the forget split."""
    from palu_kernels.experiments.tofu_real import write_subset

    out = write_subset(TOFU, str(tmp_path / "sub"), retain_authors=None, split="forget05")
    read = lambda n: [json.loads(x) for x in open(os.path.join(out, n), encoding="utf-8")]  # noqa: E731
    forget, retain = read("forget05.json"), read("retain95.json")
    assert len(forget) == len(read("forget05_spans.jsonl")) == 200
    assert len(retain) == 3800 and not os.path.exists(os.path.join(out, "retain99.json"))
    assert not {r["question"] for r in forget} & {r["question"] for r in retain}
    assert len(read("retain_perturbed.json")) == len(
        [json.loads(x) for x in open(os.path.join(TOFU, "retain_perturbed.json"))])
    with pytest.raises(ValueError, match="split"):
        write_subset(TOFU, str(tmp_path / "x"), split="forget02")


@needs_tofu
def test_tofu_scale_quick_plumbing(tmp_path, monkeypatch):
    """forget05 at the toy size (the GPU section's dry run): one run per method with its
    chosen setting, the whole model trained, on the device asked for; --report-only gives the
    same rows and computes nothing."""
    from dataclasses import replace

    from palu_kernels.experiments.harness import ExperimentConfig, Harness
    from palu_kernels.experiments.report import write_report
    from palu_kernels.experiments.tofu_real import TOFU_SCALE_SETTINGS, tofu_smollm2_experiment

    d, tiny = _tiny(tmp_path, _tofu_texts())
    out = str(tmp_path / "exp")
    cfg = ExperimentConfig(out=out, seeds=(0,), quick=True, data_dir=TOFU, model=d,
                           forget_split="forget05", device="cpu", progress=False)
    report = tofu_smollm2_experiment(Harness(cfg))
    assert "INCOMPLETE" not in report.title and "forget05" in report.title
    assert "6 forget, 20 retain questions" in report.title
    assert [r["method"] for r in report.rows] == list(TOFU_SCALE_SETTINGS)
    assert [r["setting"] for r in report.rows] == list(TOFU_SCALE_SETTINGS.values())
    h = Harness(cfg)
    total = sum(p.numel() for p in tiny.parameters())
    for r in report.rows:
        res = h.result(r["run"])
        assert res["trainable_params"] == total  # the whole model
        assert res["metrics"]["forget"]["n"] == 4  # the toy cut of the 6 forget questions
        assert r["at_bar"] in ("yes", "no")
    (setup,) = os.listdir(os.path.join(out, "setups"))
    conf = json.load(open(os.path.join(out, "setups", setup, "setup.json")))["config"]
    assert conf["device"] == "cpu" and conf["data"]["forget_split"] == "forget05"
    assert "train_layers" not in conf
    md = open(write_report(report, out)["md"]).read()
    assert "Each method's run" in md and "fine-tuning epochs" in md
    assert os.path.isfile(os.path.join(out, "results.png"))

    def boom(*a, **k):
        raise AssertionError("recomputed")

    monkeypatch.setattr(Harness, "_run", boom)
    monkeypatch.setattr(Harness, "_build_setup", boom)
    again = tofu_smollm2_experiment(Harness(replace(cfg, compute=False)))
    assert [r["run"] for r in again.rows] == [r["run"] for r in report.rows]
    # another device is another cache key: nothing the cpu computed is taken for it
    with pytest.raises(ValueError, match="not built yet"):
        tofu_smollm2_experiment(Harness(replace(cfg, compute=False, device=None)))


def test_device_is_checked():
    from palu_kernels.errors import UsageError
    from palu_kernels.experiments.harness import ExperimentConfig, Harness

    with pytest.raises(UsageError, match="device: expected cpu or cuda, got 'tpu'"):
        Harness(ExperimentConfig(out="x", generator=object(), device="tpu"))
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="device: cuda asked for"):
            Harness(ExperimentConfig(out="x", generator=object(), device="cuda"))


@needs_tofu
def test_evaluation_cut_keeps_scores_whole(tmp_path):
    from palu_kernels.eval import evaluate_model
    from palu_kernels.io.models import load_model, load_tokenizer

    d, _ = _tiny(tmp_path, _tofu_texts())
    model, tok = load_model(d), load_tokenizer(d)
    res = evaluate_model(model, tok, TOFU, "forget01", batch_size=8, max_new_tokens=4,
                         max_samples={"forget": 5, "retain": 3, "real_authors": 2,
                                      "world_facts": 2}, max_generate=2, progress=False)
    m = res["metrics"]
    assert m["forget"]["n"] == 5 and m["retain"]["n"] == 3 and m["real_authors"]["n"] == 2
    assert m["forget"]["n_generated"] == 2
    assert len(res["forget_truth_ratios"]) == 5
    assert sum("generation" in q for q in res["per_question"]["forget"]) == 2
    with pytest.raises(ValueError, match="max_samples"):
        evaluate_model(model, tok, TOFU, "forget01", max_samples={"nope": 1}, progress=False)
    with pytest.raises(ValueError, match="max_generate"):
        evaluate_model(model, tok, TOFU, "forget01", max_samples=1, max_generate=0,
                       progress=False)


@needs_tofu
def test_tofu_smollm2_quick_plumbing(tmp_path, monkeypatch):
    """The whole staged design at a toy size: selection on seed 0, confirmation on seed 1,
    K and N ablations, a complete report without the checks; then the two checks alone; a
    third call recomputes nothing."""
    from dataclasses import replace

    from palu_kernels.experiments.harness import ExperimentConfig, Harness
    from palu_kernels.experiments.report import write_report
    from palu_kernels.experiments.tofu_checks import CHECKS, NOT_RUN
    from palu_kernels.experiments.tofu_real import QUICK_LADDERS, tofu_smollm2_experiment

    d, tiny = _tiny(tmp_path, _tofu_texts())
    out = str(tmp_path / "exp")
    cfg = ExperimentConfig(out=out, seeds=(0, 1), quick=True, data_dir=TOFU, model=d,
                           progress=False)
    report = tofu_smollm2_experiment(Harness(replace(cfg, checks=False)))
    assert "INCOMPLETE" not in report.title
    stages = [r["stage"] for r in report.rows]
    n = len(QUICK_LADDERS)
    assert stages.count("selection") == n and stages.count("confirmation") == n
    assert stages.count("K") == 5 and stages.count("N") == 5 and len(stages) == 2 * n + 10
    assert {r["method"] for r in report.rows} == set(QUICK_LADDERS)
    assert all(r["seed"] == 1 for r in report.rows if r["stage"] == "confirmation")
    paths = write_report(report, out)
    md = open(paths["md"]).read()
    assert os.path.isfile(paths["png"]) and "Best FQ" in md
    # --no-checks: the check tables say what is missing, the title counts the main runs only
    assert f"(seed 0, each method's best setting; 0 of {n} runs done)" in md
    assert md.count(NOT_RUN) >= 2 * n + 2 and "Not comparable yet (0 of" in md

    # the checks: each method's best setting on seed 0, whole model and full sets
    with_checks = tofu_smollm2_experiment(Harness(cfg))
    main = [r["run"] for r in report.rows]
    assert [r["run"] for r in with_checks.rows][:len(main)] == main
    assert with_checks.title == report.title
    h = Harness(cfg)
    sel = {r["method"]: h.result(r["run"]) for r in report.rows if r["stage"] == "selection"}
    whole = {r["method"]: r for r in with_checks.rows if r["stage"] == CHECKS["whole"]}
    full = {r["method"]: r for r in with_checks.rows if r["stage"] == CHECKS["full"]}
    assert set(whole) == set(full) == set(QUICK_LADDERS)
    total = sum(p.numel() for p in tiny.parameters())
    for m, s in sel.items():
        w, f = h.result(whole[m]["run"]), h.result(full[m]["run"])
        assert w["spec"]["train_layers"] == "all" and "train_layers" not in s["spec"]
        assert f["spec"]["evaluation"] == "full" and "evaluation" not in s["spec"]
        assert w["seed"] == f["seed"] == s["seed"] == 0
        # the whole model really trains every parameter; the selection run its last layer
        assert w["trainable_params"] == total > s["trainable_params"] > 0
        assert whole[m]["trainable_params"] == total
        # the full-set run trains exactly as the selection run did, and scores and generates
        # every question where the cut kept 4 and 2
        assert f["loss_curve"] == s["loss_curve"] and f["loss_curve"]
        assert f["trainable_params"] == s["trainable_params"]
        for split in ("forget", "retain", "real_authors", "world_facts"):
            cut, every = s["metrics"][split], f["metrics"][split]
            assert cut["n"] == 4 and cut["n_generated"] == 2
            assert every["n"] == every["n_generated"] > 4
        assert f["metrics"]["forget"]["n"] == 6  # the quick subset's forget set
    # the start models' full evaluation is cached apart; setup.json keeps the cut's
    (setup,) = os.listdir(os.path.join(out, "setups"))  # the one pair of start models
    ev = os.path.join(out, "setups", setup, "eval-full-retain.json")
    ref = json.load(open(ev))
    cut = json.load(open(os.path.join(out, "setups", setup, "setup.json")))["setup"]
    assert len(ref["forget_truth_ratios"]) == 6 and len(cut["retain_truth_ratios"]) == 4
    target = json.load(open(ev.replace("retain", "finetuned")))["metrics"]
    assert all(r["retain_mu"] == ref["metrics"]["model_utility"]
               and r["finetuned_mu"] == target["model_utility"] for r in full.values())
    md = open(write_report(with_checks, out)["md"]).read()
    assert f"## Check: whole model vs the last 1 layer (seed 0, each method's best setting; " \
           f"{n} of {n} runs done)" in md
    assert (f"## Check: the evaluation cut vs the full sets (seed 0, each method's best "
            f"setting; {n} of {n} runs done, start models 2 of 2)") in md
    assert NOT_RUN not in md and "Not comparable" not in md
    assert md.count("The same ranking") + md.count("The ranking differs") == 2
    assert "retain (start)" in md and "target (start)" in md
    assert f"| {total} |" in md and f"| {sel['palu']['trainable_params']} |" in md

    # a third call, and --report-only, compute nothing and give the same rows
    def boom(*a, **k):
        raise AssertionError("recomputed")

    monkeypatch.setattr(Harness, "_run", boom)
    monkeypatch.setattr(Harness, "_build_setup", boom)
    monkeypatch.setattr("palu_kernels.eval.evaluate_model", boom)
    for c in (cfg, replace(cfg, compute=False)):
        again = tofu_smollm2_experiment(Harness(c))
        assert [r["run"] for r in again.rows] == [r["run"] for r in with_checks.rows]
    with pytest.raises(ValueError, match="not built yet"):
        tofu_smollm2_experiment(Harness(replace(cfg, compute=False,
                                                out=str(tmp_path / "empty"))))


def test_rank_puts_the_bar_first():
    from palu_kernels.experiments.tofu_checks import rank

    values = {"a": (0.4, 0.9), "b": (0.9, 0.5), "c": (0.1, 0.95), "d": None, "e": (0.4, 0.85),
              "f": (None, 0.99)}
    # over the bar by FQ, then MU (a, e), then f (no FQ); under it by MU alone (b)
    assert rank(values, 0.8) == {"a": 1, "e": 2, "c": 3, "f": 4, "b": 5}
    assert rank(values, None) == {"f": 1, "c": 2, "a": 3, "e": 4, "b": 5}


def test_run_variants_enter_the_key_only_when_set():
    from palu_kernels.errors import UsageError
    from palu_kernels.experiments.cache import config_hash
    from palu_kernels.experiments.harness import ExperimentConfig
    from palu_kernels.experiments.runspec import RunSpec, spec_dict
    from palu_kernels.experiments.variants import unlearn_layers

    base = RunSpec(method="tpo", beta=0.2)
    assert "train_layers" not in spec_dict(base) and "evaluation" not in spec_dict(base)
    keys = {config_hash(spec_dict(s)) for s in
            (base, RunSpec(method="tpo", beta=0.2, train_layers="all"),
             RunSpec(method="tpo", beta=0.2, train_layers=2),
             RunSpec(method="tpo", beta=0.2, evaluation="full"))}
    assert len(keys) == 4
    assert spec_dict(RunSpec(train_layers="all"))["train_layers"] == "all"
    cfg = ExperimentConfig(out="x", train_layers=4)
    assert unlearn_layers(base, cfg) == 4
    assert unlearn_layers(RunSpec(train_layers="all"), cfg) is None
    assert unlearn_layers(RunSpec(train_layers=2), cfg) == 2
    for option, bad in (("train_layers", 0), ("train_layers", True), ("train_layers", "half"),
                        ("evaluation", "cut")):
        with pytest.raises(UsageError) as e:
            RunSpec(**{option: bad})
        assert e.value.option == option and repr(bad) in str(e.value)


@pytest.mark.parametrize("flag, checks", [([], True), (["--no-checks"], False)])
def test_cli_no_checks(flag, checks, tmp_path, monkeypatch):
    from palu_kernels.cli import experiment as cli
    from palu_kernels.experiments import registry
    from palu_kernels.experiments.report import Report

    seen = []
    monkeypatch.setitem(registry.EXPERIMENTS, "tofu-smollm2",
                        lambda h: seen.append(h.cfg.checks) or Report(title="t", rows=[]))
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    (tmp_path / "d").mkdir()
    for name in ("forget01_spans.jsonl", "retain99.json"):
        (tmp_path / "d" / name).write_text("")
    assert cli.main(["tofu-smollm2", "--model", str(tmp_path / "m"), "--data-dir",
                     str(tmp_path / "d"), "--out", str(tmp_path / "o"), *flag]) == 0
    assert seen == [checks]


@pytest.mark.parametrize("argv, needle", [
    (["tofu-smollm2", "--shard", "2/2"], "--shard"),
    (["tofu-smollm2", "--shard", "x"], "--shard"),
    (["tofu-smollm2", "--model", "/nonexistent/m", "--data-dir", "."], "--model"),
    (["tofu-smollm2", "--model", ".", "--data-dir", "/nonexistent/d"], "--data-dir"),
    (["tofu-smollm2", "--device", "tpu"], "--device"),
    pytest.param(["tofu-smollm2", "--device", "cuda", "--model", ".", "--data-dir", "."],
                 "--device cuda: torch", marks=pytest.mark.skipif(
                     torch.cuda.is_available(), reason="a GPU is here")),
])
def test_cli_refuses_bad_values_in_one_line(argv, needle, capsys):
    from palu_kernels.cli import experiment as cli

    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert needle in err and "Traceback" not in err


def test_shard_computes_only_its_runs(tmp_path, monkeypatch):
    """A shard computes the runs at its positions and skips (counts as missing) the others
    that are not cached yet."""
    from palu_kernels.experiments import harness as H

    cfg = H.ExperimentConfig(out=str(tmp_path), seeds=(0,), quick=True, generator=object(),
                             progress=False, shard=(1, 2))
    h = H.Harness(cfg)
    done = []
    monkeypatch.setattr(h, "setup", lambda seed, synth=None: None)
    monkeypatch.setattr(h, "run_key", lambda spec, seed: f"{spec.lr}")
    monkeypatch.setattr(h, "result", lambda key: None)
    monkeypatch.setattr(h, "run", lambda spec, seed: done.append(spec.lr) or {"key": spec.lr})
    monkeypatch.setattr(h, "row", lambda res, params: params)
    items = [(H.RunSpec(lr=float(i)), 0, {"i": i}) for i in range(5)]
    rows = h.run_many(items)
    assert done == [1.0, 3.0] and [r["i"] for r in rows] == [1, 3] and h.missing == 3

    # --reverse: the same runs from the other end, the rows still in the list's order
    h.cfg.reverse, h.missing, done[:] = True, 0, []
    rows = h.run_many(items)
    assert done == [3.0, 1.0] and [r["i"] for r in rows] == [1, 3] and h.missing == 3


def test_merge_overlapping_spans():
    from palu_kernels.experiments.tofu_real import merge_overlapping_spans

    a = "In Kazakhstan Echoes, she writes of Almaty."
    r = {"answer": a, "target_words": [
        {"word": "Kazakhstan Echoes", "start": 3, "end": 20},
        {"word": "Kazakhstan", "start": 3, "end": 13},
        {"word": "Almaty", "start": 36, "end": 42}]}
    out = merge_overlapping_spans(r)["target_words"]
    assert [(w["start"], w["end"], w["word"]) for w in out] == [
        (3, 20, "Kazakhstan Echoes"), (36, 42, "Almaty")]
    assert all(a[w["start"]:w["end"]] == w["word"] for w in out)
    plain = {"answer": "x", "target_words": []}
    assert merge_overlapping_spans(plain) is plain


def test_whole_second_ranks_each_methods_best_of_two(monkeypatch):
    """The whole-model follow-up runs each method's second confirmed setting whole, and ranks
    the methods by their better setting: at the bar by FQ, under it by MU."""
    from palu_kernels.experiments import harness as H
    from palu_kernels.experiments.tofu_checks import (CHECKS, NOT_RUN, WHOLE_SECOND,
                                                      run_whole_second, whole_second_table)

    h = H.Harness(H.ExperimentConfig(out="unused", generator=object(), progress=False))
    seen = []
    monkeypatch.setattr(h, "run_many", lambda items, desc="": seen.extend(items) or [
        {**p, "forget_quality": 0.5, "model_utility": 0.3} for _, _, p in items])
    chosen = {"a": ["a1", "a2"], "b": ["b1", "b2"], "c": ["c1"]}
    rows = run_whole_second(h, ["a", "b", "c"], chosen,
                            lambda m, label: H.RunSpec(method="palu", lr=float(len(label))), 0)
    assert [(s.train_layers, p["setting"], p["stage"]) for s, _, p in seen] == [
        ("all", "a2", WHOLE_SECOND), ("all", "b2", WHOLE_SECOND)]  # c has no second
    assert [r["method"] for r in rows] == ["a", "b"]

    def run(m, label, fq, mu):
        return {"method": m, "setting": label, "forget_quality": fq, "model_utility": mu,
                "stage": CHECKS["whole"]}

    checks = {"seed": 0, "rows": [run("a", "a1", 0.9, 0.1), run("b", "b1", 0.2, 0.5),
                                  run("c", "c1", 0.1, 0.5)]}
    second = [{**run("a", "a2", 0.4, 0.5), "stage": WHOLE_SECOND}]  # b's second: not yet
    heading, cols, table, text = whole_second_table(checks, second, chosen, ["a", "b", "c"], 0.3)
    by = {t["method"]: t for t in table}
    assert by["a"]["best"] == "a2" and by["a"]["bar_1"] == "fail"  # a1 forgets, under the bar
    assert by["b"]["fq_2"] == NOT_RUN and by["c"]["fq_2"] == "-" and by["c"]["best"] == "c1"
    assert [by[m]["rank"] for m in "abc"] == [1, 2, 3]  # 0.4 > 0.2 > 0.1, all at the bar
    assert "a > b > c (not final: 4 of 5 runs done)" in text and "4 of 5 runs done" in heading
