"""palu-unlearn on raw passages (MUSE News): spans computed on the fly (text, contrast) or
read from a palu-spans file, passages cut to --max-length tokens, PALU and a baseline."""

import json
import os

import pytest

pytest.importorskip("transformers")

from helpers import MUSE_ABSENT  # noqa: E402
from palu_kernels.cli import unlearn as cli  # noqa: E402
from palu_kernels.cli.spans import main as spans_main  # noqa: E402
from palu_kernels.tiny import save_tiny_model  # noqa: E402

MUSE = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "muse_news", "raw",
                    "forget.json")
pytestmark = [pytest.mark.skipif(not os.path.isfile(MUSE), reason=MUSE_ABSENT),
              pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("passages")
    with open(MUSE, encoding="utf-8") as f:
        passages = json.load(f)[:3]
    passages = [p[:1200] for p in passages]
    forget = d / "forget.json"
    forget.write_text(json.dumps(passages))
    model = save_tiny_model(str(d / "tiny"), texts=passages * 2, vocab_size=400)
    ref = save_tiny_model(str(d / "ref"), texts=passages * 2, vocab_size=400, seed=1)
    return {"dir": d, "forget": str(forget), "model": model, "ref": ref, "passages": passages}


def _argv(s, out, *extra):
    return ["--model", s["model"], "--forget", s["forget"], "--output-dir", str(out),
            "--max-length", "64", "--max-steps", "2", "--batch-size", "2", "--k", "50",
            "--warmup-epochs", "0", "--eval-retain", "0", *extra]


@pytest.mark.parametrize("spans", ["text", "contrast"])
def test_passages_with_spans_on_the_fly(setup, tmp_path, spans):
    extra = ["--spans", spans] + (["--spans-reference", setup["ref"]] if spans == "contrast" else [])
    if spans == "contrast":
        # Two random tiny models do not differ by the contrast threshold anywhere: PALU would
        # never apply, and says so (issue 13); a method without spans still runs on them.
        with pytest.raises(SystemExit, match=r"no initiating row.*(\d+) of \1 records have no"):
            cli.unlearn(_argv(setup, tmp_path / "palu", *extra))
        extra += ["--method", "npo"]
    summary = cli.unlearn(_argv(setup, tmp_path / "out", *extra))
    assert summary["steps"] == 2
    # every passage was cut into pieces of at most 64 tokens (none truncated)
    assert summary["data"]["forget_pieces"] > len(setup["passages"])
    assert summary["data"]["truncated_forget"] == 0
    if spans == "text":
        assert summary["data"]["forget_spans"] > 0
    assert summary["arguments"]["spans"] == spans
    assert "--spans " + spans in summary["command"]


def test_eval_forget_limits_the_before_after_measurement(setup, tmp_path):
    """--eval-forget N measures the first N forget pieces (a MUSE passage file has thousands);
    the default measures all of them; 0 is refused in one line."""
    full = cli.unlearn(_argv(setup, tmp_path / "all", "--spans", "text", "--max-steps", "1"))
    assert full["data"]["measured_forget"] == full["data"]["forget_pieces"] > 2
    two = cli.unlearn(_argv(setup, tmp_path / "two", "--spans", "text", "--max-steps", "1",
                            "--eval-forget", "2"))
    assert two["data"]["measured_forget"] == 2
    assert two["before"]["forget_nll"] != full["before"]["forget_nll"]
    with pytest.raises(SystemExit, match="--eval-forget must be >= 1, got 0"):
        cli.unlearn(_argv(setup, tmp_path / "zero", "--spans", "text", "--eval-forget", "0"))


def test_palu_spans_file_and_a_baseline_unlearn_the_same_passages(setup, tmp_path):
    spans_file = tmp_path / "spans.jsonl"
    assert spans_main([setup["forget"], "-o", str(spans_file)]) == 0
    palu = cli.unlearn(_argv({**setup, "forget": str(spans_file)}, tmp_path / "palu"))
    ga = cli.unlearn(_argv({**setup, "forget": str(spans_file)}, tmp_path / "ga",
                           "--method", "ga"))
    on_the_fly = cli.unlearn(_argv(setup, tmp_path / "fly", "--spans", "text", "--max-steps", "1"))
    assert palu["data"]["forget_pieces"] == ga["data"]["forget_pieces"] \
        == on_the_fly["data"]["forget_pieces"]
    assert palu["data"]["forget_spans"] == on_the_fly["data"]["forget_spans"]


def test_refusals(setup, tmp_path):
    for extra, msg in ((["--spans", "contrast"], "--spans-reference"),
                       (["--spans-reference", setup["ref"]], "--spans contrast"),
                       ([], "no target_words")):
        with pytest.raises(SystemExit) as e:
            cli.unlearn(_argv(setup, tmp_path / "x", *extra))
        assert msg in str(e.value)


def test_question_answer_records_with_spans_on_the_fly(setup, tmp_path):
    qa = tmp_path / "qa.json"
    qa.write_text("\n".join(json.dumps({"question": f"What did {n} do?",
                                        "answer": f"{n} wrote \"The Glass Station\" in 1987."})
                            for n in ("Greta Blackwood", "Basil Mahfouz")))
    summary = cli.unlearn(_argv({**setup, "forget": str(qa)}, tmp_path / "qa_out",
                                "--spans", "text", "--max-steps", "1"))
    # records stay records (no pieces); the title and the year are the spans, the names are in
    # the questions
    assert summary["data"]["forget_pieces"] == 2 and summary["data"]["forget_spans"] == 4
