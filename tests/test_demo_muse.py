"""The MUSE demo (``palu-unlearn demo --muse``): its data, passage encoding, and a very small
end-to-end run (spans from palu_kernels.spans.contrast, tested in its own file).

Uses ../shared/data/muse_news (skipped when absent).
"""

from __future__ import annotations

import json
import os

import pytest

from helpers import MUSE_ABSENT
from palu_kernels.cli.demo import run_demo
from palu_kernels.demo.muse import MUSE_CHAT_TEMPLATE, _SIZES, build_data
from palu_kernels.eval.muse_files import load_muse

pytestmark = pytest.mark.usefixtures("one_thread")

DATA = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                                     "muse_news"))
needs_data = pytest.mark.skipif(not os.path.isdir(DATA), reason=MUSE_ABSENT)


@needs_data
def test_build_data_is_muse_layout(tmp_path):
    sizes = dict(_SIZES["quick"], n=3)
    data = build_data(DATA, sizes, str(tmp_path))
    muse = load_muse(data["muse_dir"])
    assert len(muse.verbmem) == 3 and len(muse.knowmem_forget_icl) == sizes["icl"]
    # the forget passages are the VerbMem prompt + gt, and they are the PrivLeak members
    for v, p in zip(muse.verbmem, muse.privleak_forget):
        assert p == v["prompt"] + " " + v["gt"]
    forget_texts = [a for q, a in data["forget"]]
    assert forget_texts[:3] == muse.privleak_forget
    assert [a for _, a in data["forget"][3:]] == [r["answer"] for r in muse.knowmem_forget]
    assert not set(muse.privleak_holdout) & set(a for _, a in data["forget"] + data["retain"])


def test_passage_record_is_bos_plus_text():
    from palu_kernels.constants import IGNORE_INDEX
    from palu_kernels.tiny import build_tokenizer
    from palu_kernels.io.data import encode_record
    from palu_kernels.io.records import QARecord

    tok = build_tokenizer(["Answer: 1472 was the year."] * 8, vocab_size=300,
                          chat_template=MUSE_CHAT_TEMPLATE, split_spaces=True)
    enc = encode_record(tok, QARecord("", "1472 was the year."))
    text_ids = tok("1472 was the year.", add_special_tokens=False)["input_ids"]
    assert enc["input_ids"].tolist() == [tok.bos_token_id] + text_ids + [tok.eos_token_id]
    assert enc["labels"][0] == IGNORE_INDEX and enc["labels"][1:].tolist() == text_ids + [
        tok.eos_token_id]
    # a prompt ending in a space tokenizes as the same text does inside a sequence
    whole = tok("Answer: 1472", add_special_tokens=False)["input_ids"]
    head = tok("Answer: ", add_special_tokens=False)["input_ids"]
    assert whole[:len(head)] == head


@needs_data
def test_muse_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    result = run_demo(["--muse", "--quick", "--data-dir", DATA, "--passages", "2",
                       "--ft-epochs", "4", "--epochs", "1", "--methods", "palu,ga",
                       "--out", str(out), "--no-progress"])
    printed = capsys.readouterr().out
    assert "| target |" in printed and "| palu |" in printed and "| ga |" in printed
    rows = result["per_seed"][0]["rows"]
    assert list(rows) == ["target", "retrained", "palu", "ga"]
    for name, r in rows.items():
        m = r["eval"]["metrics"]
        for k in ("verbmem_forget", "knowmem_forget", "knowmem_retain", "privleak_auc"):
            assert 0.0 <= m[k] <= 1.0, (name, k, m[k])
    assert rows["retrained"]["eval"]["metrics"]["privleak"] == 0.0
    saved = json.loads((out / "muse_demo.json").read_text())
    assert saved["table"] == result["table"]
    # the PALU forget file holds valid spans of each forget record
    for line in (out / "seed0" / "forget_spans.jsonl").read_text().splitlines():
        rec = json.loads(line)
        for sp in rec["target_words"]:
            assert rec["answer"][sp["start"]:sp["end"]] == sp["word"]
    assert (out / "muse_demo.md").read_text().startswith("# MUSE News demo")


def test_muse_demo_flag_errors():
    with pytest.raises(SystemExit, match="--data-dir"):
        run_demo(["--muse"])
    with pytest.raises(SystemExit, match="--seeds needs --muse"):
        run_demo(["--seeds", "0,1"])
    with pytest.raises(SystemExit, match="--people does not apply"):
        run_demo(["--muse", "--data-dir", DATA, "--people", "3"])
    with pytest.raises(SystemExit, match="--seeds"):
        run_demo(["--muse", "--data-dir", DATA, "--seeds", "a,b"])
