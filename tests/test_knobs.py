"""Method settings declared once (each method's config dataclass): the flags, checks, MethodSpec,
trainer kwargs and RunSpec derive from the registry; a new method with a new setting is one
file plus one registry line; cached experiment runs keep their keys."""

from __future__ import annotations

import glob
import json
import os
import types
from dataclasses import dataclass, replace

import pytest

pytest.importorskip("transformers")

from palu_kernels.errors import UsageError  # noqa: E402
from palu_kernels.experiments.cache import config_hash  # noqa: E402
from palu_kernels.experiments.harness import ExperimentConfig, Harness, RunSpec  # noqa: E402
from palu_kernels.experiments.runspec import spec_dict  # noqa: E402
from palu_kernels.train import registry  # noqa: E402
from palu_kernels.train.base import PALUConfig, UnlearningTrainer  # noqa: E402
from palu_kernels.train.knobs import MethodConfig, knob, weight_knob  # noqa: E402
from palu_kernels.train.methods.npo import NPOConfig  # noqa: E402
from palu_kernels.train.spec import (DataSpec, MethodSpec, ModelSpec, OutputSpec,  # noqa: E402
                                     UnlearningJob)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- a toy method
# What a contributor writes: this file's dataclass and trainer, and one registry line (the
# fixture's setitem). Nothing else is edited.

@dataclass
class ToyConfig(MethodConfig):
    """The toy method's settings."""

    temperature: float = knob(1.0, "softmax temperature of the toy loss", gt=0, le=100)
    gamma: float = weight_knob(1.0, "forget loss")


class ToyTrainer(UnlearningTrainer):
    """Toy: ``L = gamma * temperature * 0`` (never trained here)."""

    method = "toy"
    config_class = ToyConfig

    def forget_loss(self, model, inputs, counts):  # pragma: no cover - not trained here
        raise NotImplementedError


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(registry.METHODS, "toy", ToyTrainer)  # the one registry line
    return ToyTrainer


def _argv(*extra):
    return ["--model", "m", "--forget", "f", "--output-dir", "o", *extra]


def test_a_new_method_with_a_new_setting_is_one_file_plus_one_line(toy):
    from palu_kernels.cli import compare, unlearn

    parser = unlearn.build_parser()
    text = " ".join(parser.format_help().split())
    assert "--temperature TEMPERATURE softmax temperature of the toy loss" in text
    assert "defaults: toy 1.0; > 0 and <= 100" in text
    assert "--temperature" in " ".join(compare.build_parser().format_help().split())

    job = unlearn.job_from_args(parser.parse_args(_argv("--method", "toy",
                                                        "--temperature", "2.5")))
    assert job.method.knobs == {"temperature": 2.5} and job.method.temperature == 2.5
    assert job.method.trainer_kwargs()["baseline"] == ToyConfig(temperature=2.5)
    assert job.arguments()["temperature"] == 2.5 and "--temperature 2.5" in job.command()

    # its range is checked with every job (one line naming the setting) and by its config
    from palu_kernels.train.checks import check_values

    check_values(job)
    for value, message in (("0", "temperature must be > 0, got 0.0"),
                           ("1000", "temperature must be <= 100, got 1000.0"),
                           ("nan", "temperature must be a finite number, got nan")):
        bad = unlearn.job_from_args(parser.parse_args(_argv("--method", "toy",
                                                            "--temperature", value)))
        with pytest.raises(UsageError) as e:
            check_values(bad)
        assert e.value.option == "temperature" and str(e.value) == message
    with pytest.raises(UsageError, match="temperature must be > 0"):
        ToyConfig(temperature=-1.0)

    # another method ignores it (the value is still checked)
    npo = unlearn.job_from_args(parser.parse_args(_argv("--method", "npo",
                                                        "--temperature", "2.5")))
    assert npo.method.trainer_kwargs()["baseline"] == NPOConfig()
    with pytest.raises(UsageError, match="temperature must be > 0"):
        check_values(replace(npo, method=replace(npo.method, temperature=0.0)))

    # the experiments' RunSpec takes it; a spec without it hashes as before
    spec = RunSpec(method="toy", temperature=2.0)
    assert spec.temperature == 2.0 and spec_dict(spec)["temperature"] == 2.0
    assert spec.method_spec().trainer_kwargs()["baseline"] == ToyConfig(temperature=2.0)
    assert "temperature" not in spec_dict(RunSpec(method="toy"))
    assert config_hash(spec_dict(RunSpec())) == PINNED["default"][0]


def test_the_run_identity_has_every_setting(toy, tmp_path):
    from palu_kernels.train.identity import identity_differences, run_identity

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "forget.jsonl").write_text("{}\n")
    job = UnlearningJob(ModelSpec(str(tmp_path / "model")),
                        DataSpec(str(tmp_path / "forget.jsonl")), OutputSpec(str(tmp_path / "o")),
                        MethodSpec("toy", temperature=2.5))
    a = run_identity(job)
    assert a["settings"]["temperature"] == 2.5 and a["settings"]["beta"] is None
    b = run_identity(replace(job, method=replace(job.method, temperature=3.0)))
    assert identity_differences(a, b) == ["`temperature` 2.5 -> 3.0"]


def test_one_name_has_one_type(monkeypatch):
    @dataclass
    class IntBeta(MethodConfig):
        beta: int = knob(1, "an integer beta", ge=1)

    class IntBetaTrainer(UnlearningTrainer):
        method = "intbeta"
        config_class = IntBeta

    monkeypatch.setitem(registry.METHODS, "intbeta", IntBetaTrainer)
    with pytest.raises(TypeError, match="setting 'beta': intbeta declares it as int, npo as "
                                        "float"):
        registry.all_knobs()


def test_every_setting_of_every_method_has_a_flag_help_and_check():
    from palu_kernels.cli.unlearn import build_parser

    text = " ".join(build_parser().format_help().split())
    union = registry.all_knobs()
    assert list(union) == ["gamma", "alpha", "beta", "delta", "idk_file"]
    for name, per_method in union.items():
        assert f"--{name.replace('_', '-')}" in text
        for method, k in per_method.items():
            default = "none" if k.default is None else k.default
            assert k.help and f"{method} {default}" in text
            assert registry.method_defaults(method)[name] == k.default
    # palu's settings are PALUConfig's gamma and alpha; its other fields are not settings
    assert list(registry.method_knobs("palu")) == ["gamma", "alpha"]
    assert MethodSpec("palu", gamma=2.0).palu_config() == PALUConfig(gamma=2.0)


@pytest.mark.parametrize("method,name,value,message", [
    ("npo", "gamma", float("nan"), "gamma must be a finite number, got nan"),
    ("npo", "alpha", float("inf"), "alpha must be a finite number, got inf"),
    ("palu", "gamma", 1e300, "gamma must be <= 3.4028234663852886e+38, got 1e+300"),
    ("ga", "gamma", -1, "gamma must be >= 0, got -1.0"),
    ("tpo", "beta", 0.0, "beta must be > 0, got 0.0"),
    ("palu", "beta", -1.0, "beta must be > 0, got -1.0"),  # ignored by palu, still checked
    ("simnpo", "delta", "1", "delta must be a number, got '1'"),
    ("idkdpo", "idk_file", "/no/such.jsonl", "idk_file '/no/such.jsonl' is not a file"),
    ("npo", "temperature", 1.0, "temperature is not a setting of any method"),
])
def test_the_one_check(method, name, value, message):
    with pytest.raises(UsageError) as e:
        registry.check_knobs(method, {name: value})
    assert e.value.option == name and str(e.value).startswith(message)


def test_method_spec_takes_settings_as_keywords():
    m = MethodSpec("npo", beta=0.2, delta=None)
    assert m.knobs == {"beta": 0.2} and m.beta == 0.2 and m.delta is None
    assert m == MethodSpec("npo", knobs={"beta": 0.2})
    m2 = replace(m, name="simnpo", alpha=5.0)  # replace() keeps the settings and adds one
    assert m2.knobs == {"beta": 0.2, "alpha": 5.0} and m.knobs == {"beta": 0.2}
    assert m2.trainer_kwargs()["baseline"] == registry.method_config("simnpo", beta=0.2,
                                                                     alpha=5.0)
    m2.beta = None
    assert m2.knobs == {"alpha": 5.0}
    with pytest.raises(TypeError, match="unexpected keyword argument 'temprature'"):
        MethodSpec("npo", temprature=1.0)
    with pytest.raises(TypeError, match="unexpected keyword argument 'temprature'"):
        MethodSpec("npo", knobs={"temprature": 1.0})
    with pytest.raises(AttributeError):
        m.temprature  # noqa: B018
    job = UnlearningJob(ModelSpec("m"), DataSpec("f"), OutputSpec("o"), m)
    args = job.arguments()
    assert [k for k in args if k in registry.all_knobs()] == list(registry.all_knobs())
    assert args["beta"] == 0.2 and args["alpha"] is None
    assert job.command() == ("palu-unlearn --model m --method npo --forget f --beta 0.2 "
                             "--output-dir o")


# ----------------------------------------------------------------------------- cache keys
# config_hash(asdict(spec)) of these specs, computed with RunSpec as it was when it declared
# gamma, alpha, beta and delta itself (before the settings came from the registry).
PINNED = {
    "default": ("07200e2d6c3fc477", RunSpec()),
    "tpo beta": ("60165c6abd2355a1", RunSpec(method="tpo", lr=1e-4, epochs=5, k=5000,
                                             first_n=3, beta=0.3, alpha=2.0)),
    "palu gamma alpha k": ("76444570894a1cea", RunSpec(method="palu", lr=1e-3, epochs=10,
                                                       k=10, first_n=None, gamma=2.0,
                                                       alpha=5.0)),
    "simnpo delta synth": ("2cc94587063fe5b9", RunSpec(method="simnpo", beta=4.5, delta=1.0,
                                                       synth=(("n_people", 20),),
                                                       trace_every=10)),
}


@pytest.mark.parametrize("name", list(PINNED))
def test_cached_run_keys_do_not_change(name):
    want, spec = PINNED[name]
    d = spec_dict(spec)
    assert list(d) == ["method", "lr", "epochs", "batch_size", "k", "target", "kl", "first_n",
                       "gamma", "alpha", "beta", "delta", "warmup_epochs", "forget_file",
                       "synth", "trace_every"]
    assert config_hash(d) == want
    assert replace(spec, lr=spec.lr) == spec and hash(replace(spec)) == hash(spec)


def test_legacy_values_hash_as_they_did():
    assert RunSpec(alpha=1.0) == RunSpec() and RunSpec(gamma=None) == RunSpec()
    assert spec_dict(RunSpec(alpha=None))["alpha"] is None  # not the default 1.0
    assert type(spec_dict(RunSpec(alpha=1))["alpha"]) is int  # as asdict gave it
    assert RunSpec(beta=0.5).beta == 0.5 and RunSpec().alpha == 1.0 and RunSpec().gamma is None
    with pytest.raises(TypeError, match="unexpected keyword argument 'betta'"):
        RunSpec(betta=0.5)
    with pytest.raises(TypeError, match="unexpected keyword argument 'betta'"):
        RunSpec(knobs=(("betta", 0.5),))


def test_the_cached_runs_of_an_experiment_keep_their_keys():
    """Every cached run of bench/results/experiments/*/runs (key, seed, setup and spec in the
    file, the experiment's options in its setup.json) gets its key again."""
    runs = [p for p in glob.glob(os.path.join(ROOT, "bench/results/experiments/*/runs/*.json"))
            if not p.endswith("setup.json")]
    if not runs:
        pytest.skip("no cached runs under bench/results/experiments")
    for path in runs:
        with open(os.path.join(os.path.dirname(path), "setup.json"), encoding="utf-8") as f:
            conf = json.load(f)["config"]
        ev = conf.get("eval", {})
        h = Harness.__new__(Harness)
        h.cfg = ExperimentConfig(out="unused", train_layers=conf.get("train_layers"),
                                 bf16=bool(conf.get("bf16")),
                                 eval_max_samples=ev.get("max_samples"),
                                 eval_max_generate=ev.get("max_generate"),
                                 max_new_tokens=ev.get("max_new_tokens"))
        with open(path, encoding="utf-8") as f:
            res = json.load(f)
        h.setup = lambda seed, synth, key=res["setup"]: types.SimpleNamespace(key=key)
        spec = {**res["spec"], "synth": tuple(tuple(p) for p in res["spec"]["synth"])}
        assert h.run_key(RunSpec(**spec), res["seed"]) == res["key"], path
