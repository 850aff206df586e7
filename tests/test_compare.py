"""palu-compare on a tiny Llama (CPU): table, JSON and plot for palu, ga and npo; errors."""

import json
import os

import pytest

pytest.importorskip("transformers")
pytest.importorskip("matplotlib")

from palu_kernels.cli import compare  # noqa: E402
from palu_kernels.tiny import build_tiny_llama  # noqa: E402

from helpers import TOFU, needs_tofu, write_tofu_subset  # noqa: E402

pytestmark = [needs_tofu, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("palu_compare")
    paths = write_tofu_subset(d, 4, 4)
    model = paths["model"]
    # the retain model: same tokenizer and shape, other weights
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    build_tiny_llama(tok, hidden_size=32, num_layers=1, num_heads=2, seed=1).save_pretrained(
        str(d / "retain_model"))
    tok.save_pretrained(str(d / "retain_model"))
    return {"model": model, "retain_model": str(d / "retain_model"),
            "forget": str(d / "forget.jsonl"), "retain": str(d / "retain.json")}


def argv(files, out, *extra):
    return ["--model", files["model"], "--forget", files["forget"], "--retain", files["retain"],
            "--data-dir", TOFU, "--forget-split", "forget01", "--output-dir", str(out),
            "--max-samples", "2", "--max-new-tokens", "4", "--threads", "1", "--no-progress",
            "--epochs", "1", "--batch-size", "2", "--k", "50", "--lr", "1e-2",
            "--eval-retain", "2", "--save-total-limit", "1", *extra]


def test_compare_palu_ga_npo(files, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert compare.main(argv(files, out, "--retain-model", files["retain_model"],
                             "--methods", "palu,ga,npo", "--beta", "0.2")) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "compare.json").read_text(encoding="utf-8"))
    rows = {r["method"]: r for r in report["rows"]}
    assert list(rows) == ["original", "palu", "ga", "npo"]
    for name, r in rows.items():
        assert 0.0 <= r["forget_quality"] <= 1.0 and 0.0 <= r["model_utility"] <= 1.0
        assert 0.0 < r["forget_probability"] < 1.0 and 0.0 <= r["forget_rouge"] <= 1.0
        assert (r["train_time_s"] is None) == (name == "original")
        assert os.path.isfile(os.path.join(r["eval_dir"], "eval.json"))
        assert f"| {name} |" in printed
    for name in ("palu", "ga", "npo"):
        assert rows[name]["steps"] == 2 and rows[name]["train_time_s"] > 0
        summary = json.loads((out / name / "run_summary.json").read_text(encoding="utf-8"))
        assert summary["arguments"]["method"] == name and summary["steps"] == 2
    # the NPO run used the forwarded --beta; GA lowered the forget probability
    npo_summary = json.loads((out / "npo" / "run_summary.json").read_text(encoding="utf-8"))
    assert npo_summary["arguments"]["beta"] == 0.2
    assert rows["ga"]["forget_probability"] < rows["original"]["forget_probability"]
    md = (out / "compare.md").read_text(encoding="utf-8")
    assert "| method | Forget Quality | Model Utility |" in md and "compare.png" in md
    png = (out / "compare.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert report["config"]["unlearn_options"][:2] == ["--epochs", "1"]
    # a second run into the same directory needs --overwrite
    with pytest.raises(SystemExit):
        compare.main(argv(files, out, "--methods", "ga"))
    assert "not empty" in capsys.readouterr().err


def test_table_and_plot_without_forget_quality(tmp_path):
    rows = [{"method": "original", "forget_quality": None, "model_utility": 0.5,
             "forget_probability": 0.9, "forget_rouge": 0.8, "train_time_s": None, "steps": None}]
    table = compare.table_markdown(rows)
    assert table.splitlines()[2] == "| original | n/a | 0.5000 | 0.9000 | 0.8000 | - | - |"
    assert compare.plot(rows, str(tmp_path / "p.png"), "t") is None
    assert not (tmp_path / "p.png").exists()
    rows[0]["forget_quality"] = 0.0  # an underflowed p-value still plots on the log axis
    assert compare.plot(rows, str(tmp_path / "p.png"), "t") == str(tmp_path / "p.png")


@pytest.mark.parametrize("extra,message", [
    (["--methods", "palu,rmu"], "unknown method"),
    (["--methods", "ga,ga"], "listed twice"),
    (["--method", "ga"], "--method is set by palu-compare"),
    (["--no-such-option", "1"], "unrecognized arguments: --no-such-option"),
    (["--max-samples", "0"], "--max-samples"),
    (["--retain-result", "/nonexistent/eval.json"], "--retain-result: file not found"),
])
def test_bad_arguments_fail_before_training(files, tmp_path, capsys, extra, message):
    out = tmp_path / "bad"
    with pytest.raises(SystemExit):
        compare.main(argv(files, out, *extra))
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_parse_methods():
    assert compare.parse_methods(" palu, idkdpo ,simnpo") == ["palu", "idkdpo", "simnpo"]
    with pytest.raises(ValueError, match="comma-separated"):
        compare.parse_methods(" , ")
