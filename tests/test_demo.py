"""``palu-unlearn demo --quick`` end to end: the unlearning must do something real."""

import json

import pytest

from palu_kernels.demo.run import build_parser, format_table, run_demo


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return run_demo(["--quick", "--out", str(out), "--no-progress"])


def test_quick_demo_palu_unlearns_and_keeps_retain(quick):
    rows = {r["model"]: r for r in quick["table"]}
    assert {"finetuned", "retain", "palu"} <= set(rows)
    fine, retain, palu = rows["finetuned"], rows["retain"], rows["palu"]
    # the fine-tuned model learned the forget facts, the retain model never saw them
    assert fine["forget_probability"] > 0.5
    assert retain["forget_probability"] < fine["forget_probability"] / 2
    # PALU: forget-set answer probability down by at least 2x ...
    assert palu["forget_probability"] * 2 <= fine["forget_probability"], rows
    # ... while the retain-set probability stays above half of the fine-tuned model's
    assert palu["retain_probability"] > 0.5 * fine["retain_probability"], rows
    assert quick["ratios"]["palu"]["forget_probability_drop"] >= 2.0
    # Forget Quality is a p-value, the retain model's own is 1
    assert rows["retain"]["forget_quality"] == pytest.approx(1.0)
    for r in rows.values():
        assert 0.0 <= r["forget_quality"] <= 1.0 and 0.0 <= r["model_utility"] <= 1.0


def test_quick_demo_writes_outputs(quick):
    paths = quick["paths"]
    with open(paths["plot"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    md = open(paths["markdown"], encoding="utf-8").read()
    for name in ("finetuned", "retain", *quick["config"]["methods"]):
        assert f"| {name} |" in md
    saved = json.load(open(paths["json"], encoding="utf-8"))
    assert [r["model"] for r in saved["table"]] == [r["model"] for r in quick["table"]]
    assert saved["config"]["forget_split"] == "forget10"
    # fine-tuning reached its target or ran its epochs, on the same tokenizer for all models
    assert quick["training"]["finetuned"]["n_pairs"] > quick["training"]["retain"]["n_pairs"]


def test_format_table_aligns_and_marks_missing():
    rows = [{"model": "a", "forget_quality": None, "model_utility": 0.5,
             "forget_probability": 1e-5, "forget_rouge": 0.25, "retain_probability": 0.9,
             "retain_rouge": 1.0, "seconds": 3.21}]
    text = format_table(rows).splitlines()
    assert len({len(line) for line in text}) == 1  # aligned columns
    assert "n/a" in text[2] and "1.00e-05" in text[2] and "3.2" in text[2]
    md = format_table(rows, markdown=True).splitlines()
    assert md[0].startswith("| model |") and md[2].count("|") == md[0].count("|")


@pytest.mark.parametrize("argv", [["--methods", "nope"], ["--threads", "0"],
                                  ["--forget-fraction", "0.3"]])
def test_bad_arguments_fail_before_any_work(tmp_path, argv):
    with pytest.raises(SystemExit):
        run_demo(["--out", str(tmp_path / "x"), *argv])
    assert not (tmp_path / "x").exists()


def test_parser_defaults():
    args = build_parser().parse_args([])
    assert args.k == "1" and args.threads == 1 and not args.quick
