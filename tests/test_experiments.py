"""palu-experiment: the harness's cache and reports, and `k --quick` / `pareto --quick` end to
end on the synthetic benchmark and a tiny model (their smallest size), with resumption."""

import csv
import json
import os

import pytest

pytest.importorskip("transformers")

from palu_kernels.cli import experiment as cli  # noqa: E402
from palu_kernels.experiments.cache import config_hash  # noqa: E402
from palu_kernels.experiments.harness import RunSpec  # noqa: E402
from palu_kernels.experiments.pareto import METHODS, best_at_utility  # noqa: E402
from palu_kernels.experiments.plots import frontier  # noqa: E402
from palu_kernels.experiments.report import Report, aggregate, write_report  # noqa: E402
from palu_kernels.experiments.registry import EXPERIMENTS  # noqa: E402


def test_config_hash_is_canonical_and_sensitive():
    a = config_hash({"x": 1, "y": [1, 2]})
    assert a == config_hash({"y": [1, 2], "x": 1})
    assert a != config_hash({"x": 1, "y": [2, 1]})
    from dataclasses import asdict
    assert config_hash(asdict(RunSpec(k=1))) != config_hash(asdict(RunSpec(k=2)))


def _row(**kw):
    base = {"forget_quality": 0.1, "model_utility": 0.9, "forget_probability": 0.2}
    return {**base, **kw}


def test_aggregate_frontier_and_best():
    rows = [_row(m="a", seed=0, forget_quality=0.1, model_utility=0.8),
            _row(m="a", seed=1, forget_quality=0.3, model_utility=0.9),
            _row(m="a", seed=2, forget_quality=0.2, model_utility=1.0),
            _row(m="b", seed=0, forget_quality=0.5, model_utility=0.5)]
    agg = aggregate(rows, ["m"])
    a = agg[0]
    got = (a["m"], a["fq_median"], a["fq_min"], a["fq_max"], a["n_seeds"])
    assert got == ("a", 0.2, 0.1, 0.3, 3)
    assert a["mu_mean"] == pytest.approx(0.9)
    pts = [{"mu_mean": 0.9, "fq_median": 0.1}, {"mu_mean": 0.8, "fq_median": 0.05},
           {"mu_mean": 0.5, "fq_median": 0.5}]
    assert frontier(pts) == [pts[2], pts[0]]  # the dominated (0.8, 0.05) is left out
    agg = [{"method": "x", "mu_mean": 0.9, "fq_median": 0.1},
           {"method": "x", "mu_mean": 0.95, "fq_median": 0.2},
           {"method": "x", "mu_mean": 0.5, "fq_median": 0.9},
           {"method": "y", "mu_mean": 0.5, "fq_median": 0.9}]
    best = best_at_utility(agg, 0.85)
    assert best == {"x": agg[1]}  # y never reaches the utility; x's 0.9 FQ is below it


def test_write_report(tmp_path):
    rows = [{"a": 1, "b": 0.5}, {"a": 2, "c": None}]
    paths = write_report(Report("T", rows, tables=[("H", [("a", "A"), ("b", "B")], rows)],
                                plot=lambda p: open(p, "wb").write(b"png")), str(tmp_path),
                         command="palu-experiment x")
    with open(paths["csv"]) as f:
        got = list(csv.DictReader(f))
    assert [r["a"] for r in got] == ["1", "2"] and got[1]["b"] == "" and "c" in got[0]
    md = open(paths["md"]).read()
    assert "| A | B |" in md and "| 2 | - |" in md and "palu-experiment x" in md
    assert os.path.isfile(paths["png"]) and not os.path.exists(paths["png"] + ".tmp.png")


@pytest.mark.parametrize("argv,flag", [(["nope"], "name"), (["k", "--seeds", "0,x"], "--seeds"),
                                       (["k", "--seeds", "1,1"], "--seeds"),
                                       (["k", "--data-dir", "/nonexistent"], "--data-dir"),
                                       (["k", "--threads", "0"], "--threads"),
                                       (["k", "--forget-split", "forget01"], "--forget-split"),
                                       (["k", "--bogus"], "--bogus")])
def test_bad_flags_one_line_exit_2(argv, flag, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert flag in err[-1] and "Traceback" not in "\n".join(err)


def test_registry_names_the_cli_choices():
    assert set(EXPERIMENTS) >= {"pareto", "k", "n", "target"}
    assert all(callable(f) for f in EXPERIMENTS.values())


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("exp_cache"))


def _csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_k_quick_and_resume(cache, tmp_path, capsys):
    out = str(tmp_path / "k")
    assert cli.main(["k", "--quick", "--out", out, "--cache", cache, "--no-progress"]) == 0
    rows = _csv(os.path.join(out, "results.csv"))
    setup = json.load(open(next(
        os.path.join(cache, "setups", d, "setup.json") for d in os.listdir(
            os.path.join(cache, "setups")))))["setup"]
    v = setup["vocab_size"]
    assert sorted(int(r["k"]) for r in rows) == [1, v]
    assert {float(r["k_fraction"]) for r in rows} == {1 / v, 1.0}
    for r in rows:
        assert 0 <= float(r["forget_quality"]) <= 1 and 0 <= float(r["model_utility"]) <= 1
    # the per-step log: PALU terms from the trainer, forget probability from the trace
    res = json.load(open(os.path.join(cache, "runs", rows[0]["run"] + ".json")))
    assert any("forget_local" in c and "forget_kl" in c for c in res["loss_curve"])
    assert res["trace"][0]["step"] == 0 and res["trace"][-1]["step"] == res["steps"]
    assert res["trace"][0]["forget_probability"] == pytest.approx(
        setup["finetuned_metrics"]["forget"]["probability"], rel=0.05)
    for name in ("results.md", "results.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0
    assert "| K | K / V |" in open(os.path.join(out, "results.md")).read()
    capsys.readouterr()
    mtimes = {f: os.path.getmtime(os.path.join(cache, "runs", f))
              for f in os.listdir(os.path.join(cache, "runs"))}
    # a second call reads every run back from the cache and rewrites the same table
    assert cli.main(["k", "--quick", "--out", out, "--cache", cache, "--no-progress"]) == 0
    assert f"({len(rows)} cached runs)" in capsys.readouterr().out
    assert mtimes == {f: os.path.getmtime(os.path.join(cache, "runs", f)) for f in mtimes}
    assert _csv(os.path.join(out, "results.csv")) == rows


def test_pareto_quick(cache, tmp_path):
    out = str(tmp_path / "pareto")
    assert cli.main(["pareto", "--quick", "--out", out, "--cache", cache, "--no-progress"]) == 0
    rows = _csv(os.path.join(out, "results.csv"))
    assert sorted(r["method"] for r in rows) == sorted(METHODS)
    md = open(os.path.join(out, "results.md")).read()
    assert "Best FQ at MU >= 0.95" in md
    for m in METHODS:
        assert f"| {m} |" in md
    assert os.path.getsize(os.path.join(out, "results.png")) > 0
