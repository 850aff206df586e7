"""The experiments on span quality and extra facts (mask-noise, synonym-leak, beyond-prefix)
at their smallest size: every one runs end to end through the harness, writes its report,
and its numbers are consistent with the probes and the data. The three share one setup
(same data, same --out), and the sizes are cut further than --quick (a test checks the
plumbing; the committed results under bench/results/experiments/ are the measurements)."""

import csv
import json
import math

import pytest

from palu_kernels.demo.synth import generate_benchmark
from palu_kernels.experiments import beyond_prefix, harness, mask_noise, synonym_leak
from palu_kernels.experiments.harness import ExperimentConfig, Harness
from palu_kernels.experiments.report import write_report
from palu_kernels.experiments.probing import ProbeHarness
from palu_kernels.experiments.registry import EXPERIMENTS

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(n_people=4, questions_per_person=1, n_real_authors=2, n_world_facts=2)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A quick harness on 4 authors (1 forgotten), models fine-tuned for 2 epochs, unlearning
    for 1 epoch, one seed; the noise levels and epochs of --quick cut down."""
    mp = pytest.MonkeyPatch()
    mp.setitem(harness.TINY, "quick", dict(harness.TINY["quick"], ft_epochs=2))
    for mod in (synonym_leak, beyond_prefix, mask_noise):
        mp.setitem(mod.EPOCHS, "quick", 1)
    for mod in (synonym_leak, beyond_prefix, mask_noise):
        mp.setitem(mod.LRS, "quick", (1e-3,))
    mp.setitem(mask_noise.LEVELS, "quick", {"recall": (0.5,), "precision": (0.5,),
                                            "shift": (1,)})
    out = tmp_path_factory.mktemp("exp_b")
    cfg = ExperimentConfig(out=str(out), seeds=(0,), quick=True, generator=generate_benchmark,
                           synth=SMALL, progress=False)
    yield Harness(cfg), out
    mp.undo()


def _report(h, out, name):
    rep = EXPERIMENTS[name](h)
    paths = write_report(rep, str(out / name), command=f"palu-experiment {name} --quick")
    with open(paths["csv"], encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert paths["png"] and (out / name / rep.png).stat().st_size > 1000
    assert "| " in (out / name / "results.md").read_text()
    return rep, rows


def test_registered():
    for name in ("mask-noise", "synonym-leak", "beyond-prefix"):
        assert name in EXPERIMENTS


def test_synonym_leak(small):
    h, out = small
    rep, rows = _report(h, out, "synonym-leak")
    assert [r["method_label"] for r in rows] == list(synonym_leak.METHODS)
    ph = ProbeHarness(h.cfg)
    for row, r in zip(rep.rows, rows):
        res = ph.result(row["run"])
        assert res is not None and res["extra"]["probes"]
        # the leakage numbers are those of the cached probe scores
        setup = ph.setup(0, dict(res["spec"]["synth"]))
        facts = [f for f in json.loads((open(f"{setup.data_dir}/synth_meta.json").read())
                                       )["extras"]["facts"]]
        idx = [i for i, f in enumerate(facts) if f["kind"] == "synonym"
               and f["split"] == "forget"]
        assert int(r["n_facts"]) == len(idx) == 2
        after = res["extra"]["probes"]
        p_alt = sum(math.exp(after[f"{i}:alt_form"]) for i in idx) / len(idx)
        assert float(r["p_alt_after"]) == pytest.approx(p_alt, rel=1e-6)
        before = ph.before(setup)
        share = sum(math.exp(before[f"{i}:alt_form"]) / (math.exp(before[f"{i}:alt_form"])
                    + math.exp(before[f"{i}:form"])) for i in idx) / len(idx)
        assert float(r["alt_share_before"]) == pytest.approx(share, rel=1e-6)
    # a second call reruns nothing
    again = EXPERIMENTS["synonym-leak"](h)
    assert [r["run"] for r in again.rows] == [r["run"] for r in rep.rows]


def test_beyond_prefix(small):
    h, out = small
    rep, rows = _report(h, out, "beyond-prefix")
    assert [r["config"] for r in rows] == [c for c, _, _ in beyond_prefix.CONFIGS]
    assert [r["first_n"] for r in rows] == ["3", "all", "all"]
    for r in rows:
        for part in ("long_lead", "long_late", "split_first_span", "split_later_spans"):
            before, after = float(r[f"{part}_p_before"]), float(r[f"{part}_p_after"])
            assert 0 < before <= 1 and 0 < after <= 1
            assert float(r[f"{part}_kept"]) == pytest.approx(after / before, rel=1e-6)
    assert "past N = 3" in rep.notes


def test_mask_noise(small):
    h, out = small
    rep, rows = _report(h, out, "mask-noise")
    by = {(r["noise"], r["level"]): r for r in rows}
    assert set(by) == {("none", "0"), ("recall", "0.5"), ("precision", "0.5"),
                       ("shift", "1")}
    assert float(by[("none", "0")]["recall"]) == 1.0
    assert float(by[("recall", "0.5")]["precision"]) == 1.0  # only drops
    assert 0.3 <= float(by[("recall", "0.5")]["recall"]) <= 0.7
    assert float(by[("precision", "0.5")]["recall"]) == 1.0  # only additions
    assert 0.3 <= float(by[("precision", "0.5")]["precision"]) <= 0.7
    assert float(by[("shift", "1")]["recall"]) < 1.0
    # a one-word shift keeps part of each span's characters, and adds as many wrong ones
    assert 0 < float(by[("shift", "1")]["char_recall"]) < 1.0
    assert 0 < float(by[("shift", "1")]["char_precision"]) < 1.0
    assert float(by[("precision", "0.5")]["char_recall"]) == 1.0
    # noisy runs trained on other files: other run keys than the clean one
    assert len({r["run"] for r in rows}) == len(rows)
    for r in rows:
        assert 0 <= float(r["forget_quality"]) <= 1 and 0 <= float(r["model_utility"]) <= 1
