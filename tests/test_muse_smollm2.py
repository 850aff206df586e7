"""The MUSE real-model driver (``bench/muse_smollm2.py``): its rung-selection rule on fixed
metrics, and its plumbing end to end on a tiny Llama (seconds; the real run is hours and never
in CI)."""

from __future__ import annotations

import json
import os

import pytest

from bench.muse_smollm2 import CELLS, _cell, choose_lrs, main

from helpers import MUSE_ABSENT

pytestmark = pytest.mark.usefixtures("one_thread")

DATA = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                                     "muse_news"))


def _m(verb, know, util):
    return {"verbmem_forget": verb, "knowmem_forget": know, "knowmem_retain": util}


def test_choose_lrs_keeps_utility_then_forgets_most():
    lrs = [1e-4, 1e-3]
    rows = {}
    for method, src in CELLS:
        c = _cell(method, src)
        rows[f"{c}-lr0.0001"] = _m(0.5, 0.5, 0.95)
        rows[f"{c}-lr0.001"] = _m(0.1, 0.1, 0.95)
    # GA's high rung forgets more but drops utility under 0.9 x the target's: the low rung
    rows["ga-lr0.001"] = _m(0.0, 0.0, 0.80)
    # NPO: no rung keeps utility: the one with the higher utility
    rows["npo-lr0.0001"] = _m(0.5, 0.5, 0.5)
    rows["npo-lr0.001"] = _m(0.0, 0.0, 0.7)
    # a tie in forgetting goes to the lower learning rate
    rows["tpo-text-lr0.0001"] = _m(0.2, 0.2, 1.0)
    rows["tpo-text-lr0.001"] = _m(0.2, 0.2, 1.0)
    # a cell skipped on every rung is left out
    rows["palu-contrast-lr0.0001"] = {"skipped": "no span"}
    rows["palu-contrast-lr0.001"] = {"skipped": "no span"}
    got = choose_lrs(rows, lrs, target=1.0)
    assert got["ga"] == 1e-4
    assert got["npo"] == 1e-3
    assert got["tpo-text"] == 1e-4
    assert got["palu-text"] == 1e-3 and got["palu-predictability"] == 1e-3
    assert "palu-contrast" not in got


@pytest.mark.skipif(not os.path.isdir(DATA), reason=MUSE_ABSENT)
def test_plumbing_selects_on_the_first_seed_and_resumes(tmp_path, capsys):
    out = str(tmp_path / "run")
    argv = ["--out", out, "--data-dir", DATA, "--model", "tiny", "--quick", "--seeds", "0,1",
            "--lrs", "1e-3,1e-2", "--threads", "1", "--no-progress"]
    assert main(argv) == 0
    res = json.load(open(os.path.join(out, "results.json")))
    chosen = res["chosen"]
    assert chosen and set(chosen.values()) <= {1e-3, 1e-2}
    first, second = res["per_seed"]
    # the first seed ran every rung of every cell that was not skipped; the second only the
    # chosen rung of each
    for cell, lr in chosen.items():
        assert f"{cell}-lr0.001" in first["rows"] and f"{cell}-lr0.01" in first["rows"]
        assert set(n for n in second["rows"] if n.startswith(cell + "-lr")) == {
            f"{cell}-lr{lr}"}
    # an evaluated run keeps its evaluation, not its weights or checkpoints
    for seed in ("seed0", "seed1"):
        for d in os.listdir(os.path.join(out, seed, "runs")):
            left = os.listdir(os.path.join(out, seed, "runs", d))
            assert "muse_eval.json" in left or "skipped" in json.dumps(res["per_seed"])
            assert not [f for f in left if f.endswith(".safetensors")
                        or f.startswith("checkpoint-")], (d, left)
    md = open(os.path.join(out, "results.md")).read()
    assert "The ladder on seed 0" in md and "Utility (KnowMem retain)" in md
    # a rerun trains and evaluates nothing: every step is cached
    runs = os.path.join(out, "seed0", "runs")
    before = {d: os.path.getmtime(os.path.join(runs, d, "muse_eval.json"))
              for d in os.listdir(runs) if os.path.isfile(os.path.join(runs, d, "muse_eval.json"))}
    capsys.readouterr()
    assert main(argv) == 0
    log = capsys.readouterr().out.splitlines()
    assert not [ln for ln in log if ln.endswith(" done")]
    assert sum(ln.endswith(" cached") for ln in log) == len(before) + len(chosen)
    after = {d: os.path.getmtime(os.path.join(runs, d, "muse_eval.json")) for d in before}
    assert before == after


@pytest.mark.skipif(not os.path.isdir(DATA), reason=MUSE_ABSENT)
def test_facts_variant_trains_and_unlearns_the_knowmem_pairs(tmp_path):
    out = str(tmp_path / "facts")
    argv = ["--out", out, "--data-dir", DATA, "--model", "tiny", "--quick", "--seeds", "0",
            "--lrs", "1e-3", "--threads", "1", "--no-progress", "--facts"]
    assert main(argv) == 0
    muse = os.path.join(out, "data", "muse", "knowmem")
    kf = json.load(open(os.path.join(muse, "forget_qa.json")))
    kr = json.load(open(os.path.join(muse, "retain2_qa.json")))
    icl = json.load(open(os.path.join(muse, "forget_qa_icl.json")))
    assert len(icl) == 3  # the KnowMem prompt the facts are trained in is the one evaluated
    retain = [json.loads(ln) for ln in open(os.path.join(out, "data", "retain.jsonl"))]
    facts = [r for r in retain if r["question"]]
    assert [r["answer"] for r in facts] == [r["answer"] for r in kr]
    assert all(r["question"].endswith(f"Question: {q['question']}\nAnswer: ")
               for r, q in zip(facts, kr))
    # every span file: the passages (no question) then the forget facts, each with its spans
    for src in ("text", "predictability"):
        recs = [json.loads(ln) for ln in open(os.path.join(out, "seed0", "spans",
                                                            f"{src}.jsonl"))]
        got = [r["answer"] for r in recs if r["question"]]
        assert got == [r["answer"] for r in kf]
        assert all(not r["question"] for r in recs[:len(recs) - len(got)])
    md = open(os.path.join(out, "results.md")).read()
    assert md.startswith("# MUSE News, tiny with the facts trained")
