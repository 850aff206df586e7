"""The one setup builder (palu_kernels.eval.setups) and the keys of the harness's setups.

The setup key names ``setups/<key>/`` and enters every run key, so a cache built by an
earlier version (the committed tofu-smollm2 runs, a synthetic sweep) stays valid only while
the configuration hashed stays byte-identical: the keys are pinned here.
"""

import json
import os

import pytest

pytest.importorskip("transformers")

from palu_kernels.demo.synth import generate_benchmark  # noqa: E402
from palu_kernels.eval.setups import (QA_CHAT_TEMPLATE, BuiltSetup, SetupSpec,  # noqa: E402
                                      build_setup, qa_pairs, qa_texts, split_names,
                                      tofu_evaluation)
from palu_kernels.experiments.cache import config_hash  # noqa: E402
from palu_kernels.experiments.harness import ExperimentConfig, Harness, Setup  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOLLM2_SETUP = os.path.join(ROOT, "bench/results/experiments/tofu-smollm2/runs/setup.json")
SMALL = dict(n_people=4, questions_per_person=2, forget_fraction=0.1, n_real_authors=2,
             n_world_facts=2)

# config_hash(Harness._setup_config(seed, {})) of the default synthetic benchmark, computed
# before the setup builder moved to palu_kernels.eval.setups
PINNED_SYNTH = {("full", 0): "afe10e99a6e3c967", ("full", 1): "9b87aae18e2b74cb",
                ("quick", 0): "13d16138b0171306", ("quick", 1): "a71aae92aded7357"}


@pytest.mark.parametrize("size,seed", sorted(PINNED_SYNTH))
def test_synthetic_setup_keys_are_pinned(tmp_path, size, seed):
    h = Harness(ExperimentConfig(out=str(tmp_path), generator=generate_benchmark,
                                 quick=size == "quick"))
    assert config_hash(h._setup_config(seed, {})) == PINNED_SYNTH[size, seed]
    # another seed or shape is another setup
    assert config_hash(h._setup_config(seed, {"n_people": 12})) != PINNED_SYNTH[size, seed]


def test_the_tofu_smollm2_setup_keeps_its_key(tmp_path):
    """The options of the long tofu-smollm2 experiment give the config of its committed
    setup.json byte for byte, hence the key of its cache (/work/cache/tofu-smollm2)."""
    with open(SMOLLM2_SETUP, encoding="utf-8") as f:
        saved = json.load(f)
    conf, ev = saved["config"], saved["config"]["eval"]
    h = Harness(ExperimentConfig(
        out=str(tmp_path), data_dir=conf["data"]["dir"], forget_split="forget01",
        model=conf["model"]["path"], seeds=(0,), ft_lr=1e-3, ft_epochs=15, train_layers=4,
        chat_template=conf["chat_template"], bf16=True, eval_max_samples=ev["max_samples"],
        eval_max_generate=ev["max_generate"], max_new_tokens=ev["max_new_tokens"]))
    mine = h._setup_config(0, {})
    assert json.dumps(mine, sort_keys=True) == json.dumps(conf, sort_keys=True)
    assert config_hash(mine) == "4acf592495477f92" == saved["setup"]["key"]
    # ... and the setup record it holds still loads as a Setup
    s = Setup(**saved["setup"])
    assert s.forget_split == "forget01" and len(s.retain_truth_ratios) == 40


def test_qa_pairs_and_texts_of_the_synthetic_benchmark(tmp_path):
    paths = generate_benchmark(str(tmp_path), seed=0, **SMALL)
    forget, retain = split_names(str(tmp_path), None)
    assert (forget, retain) == ("forget10", "retain90")
    assert split_names(str(tmp_path), "forget05") == ("forget05", "retain95")
    with_f = qa_pairs(str(tmp_path), forget, retain, True)
    without = qa_pairs(str(tmp_path), forget, retain, False)
    # the retain authors (answer and paraphrase) first, then the forget authors, then the
    # real authors and world facts, in both
    n_forget = len(open(paths["forget"], encoding="utf-8").read().splitlines())
    assert len(with_f) == len(without) + 2 * n_forget
    assert with_f[:len(without) - 4] == without[:-4] and with_f[-4:] == without[-4:]
    forget_q = {json.loads(line)["question"]
                for line in open(paths["forget"], encoding="utf-8").read().splitlines()}
    assert not forget_q & {q for q, _ in without} and forget_q <= {q for q, _ in with_f}
    texts = qa_texts(str(tmp_path))
    assert all(isinstance(t, str) and t for t in texts)
    assert {a for _, a in with_f} <= set(texts)


def _tiny_spec(tmp_path, **kw):
    from palu_kernels.tiny import build_tiny_llama, build_tokenizer

    data = str(tmp_path / "data")
    paths = generate_benchmark(data, seed=0, **SMALL)
    forget, retain = split_names(data, None)
    tok = build_tokenizer(qa_texts(data), vocab_size=300, chat_template=QA_CHAT_TEMPLATE)
    starts = []

    def start(name):
        starts.append(name)
        return build_tiny_llama(tok, hidden_size=32, num_layers=1, seed=0)

    spec = dict(data_dir=data, forget_split=forget, forget_spans=str(paths["forget_spans"]),
                retain=str(paths["retain"]), tokenizer=tok, start=start,
                pairs={"finetuned": qa_pairs(data, forget, retain, True),
                       "retain": qa_pairs(data, forget, retain, False)},
                lr=3e-3, max_epochs=2, target_nll=0.0, progress=False)
    spec.update(kw)
    return SetupSpec(**spec), starts


def test_build_setup_fine_tunes_saves_and_evaluates_both_models(tmp_path):
    seen = {}

    def evaluate(models, tok):
        seen.update({n: m.training for n, m in models.items()})
        return {n: {"n_params": sum(p.numel() for p in m.parameters())}
                for n, m in models.items()}

    lines = []
    spec, starts = _tiny_spec(tmp_path, evaluate=evaluate, log=lines.append,
                              log_before="{name}: {n_pairs} pairs",
                              log_after="{name}: {epochs} epochs",
                              model_dirs={"finetuned": str(tmp_path / "ft")})
    built = build_setup(spec)
    assert isinstance(built, BuiltSetup) and starts == ["finetuned", "retain"]
    assert built.names == ("finetuned", "retain")
    assert built.target_dir == str(tmp_path / "ft") and built.retain_dir is None
    assert os.path.isfile(tmp_path / "ft" / "config.json")  # saved, with its tokenizer
    assert os.path.isfile(tmp_path / "ft" / "tokenizer.json")
    assert seen == {"finetuned": False, "retain": False}  # evaluated in eval mode
    assert set(built.metrics) == {"finetuned", "retain"} and built.models == {}
    for name in ("finetuned", "retain"):
        t = built.training[name]
        assert t["epochs"] == 2 and t["n_pairs"] == len(spec.pairs[name]) and t["nll"] > 0
    assert lines == [f"finetuned: {len(spec.pairs['finetuned'])} pairs", "finetuned: 2 epochs",
                     f"retain: {len(spec.pairs['retain'])} pairs", "retain: 2 epochs"]
    assert (built.data_dir, built.forget_spans, built.retain) == (spec.data_dir,
                                                                   spec.forget_spans,
                                                                   spec.retain)


def test_build_setup_keeps_an_untouched_start_model_and_the_models(tmp_path):
    import torch

    spec, _ = _tiny_spec(tmp_path, keep_models=True)
    spec.pairs["retain"] = None  # the start model as it is
    built = build_setup(spec)
    assert built.training["retain"] == {"epochs": 0, "nll": None, "seconds": 0.0,
                                        "n_pairs": 0, "from_base": True}
    assert built.metrics == {} and set(built.models) == {"finetuned", "retain"}
    fresh = spec.start("retain")
    for a, b in zip(built.models["retain"].parameters(), fresh.parameters()):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(built.models["finetuned"].parameters(),
                                                     fresh.parameters()))
    spec.pairs["third"] = []
    with pytest.raises(ValueError, match="a target and a retain model"):
        build_setup(spec)


def test_tofu_evaluation_scores_forget_quality_against_the_retain_model(tmp_path):
    spec, _ = _tiny_spec(tmp_path, max_epochs=1)
    spec.evaluate = tofu_evaluation(spec.data_dir, spec.forget_split, batch_size=8,
                                    max_new_tokens=4, progress=False)
    built = build_setup(spec)
    fine, retain = built.metrics["finetuned"], built.metrics["retain"]
    assert retain["metrics"]["forget_quality"] == pytest.approx(1.0)
    assert 0.0 <= fine["metrics"]["forget_quality"] <= 1.0
    assert len(retain["forget_truth_ratios"]) == len(fine["forget_truth_ratios"]) > 0
    only = tofu_evaluation(spec.data_dir, spec.forget_split, names=["finetuned"],
                           batch_size=8, max_new_tokens=4, progress=False)
    res = only({"finetuned": spec.start("finetuned"), "retain": spec.start("retain")},
               spec.tokenizer)
    assert set(res) == {"finetuned"}  # the retain model not evaluated: no reference
    assert res["finetuned"]["metrics"].get("forget_quality") is None
