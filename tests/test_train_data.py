"""Trainer data: loading with file:line errors, tokenisation, PALU row masks, collation."""

import json
import os

import pytest
import torch

from helpers import TOFU_ABSENT
from palu_kernels.io.data import IGNORE_INDEX, PALUCollator, PALUDataset, encode_record
from palu_kernels.io.records import QARecord, Span, load_records

TOFU = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "tofu")
FORGET01 = os.path.join(TOFU, "forget01_spans.jsonl")
RETAIN99 = os.path.join(TOFU, "retain99.json")
needs_tofu = pytest.mark.skipif(not os.path.exists(FORGET01), reason=TOFU_ABSENT)


def word_tokenizer(words):
    """A word-level tokenizer (words and punctuation), so a test can name every token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {w: i for i, w in enumerate(specials + sorted(set(words)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Punctuation()])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>")


@needs_tofu
def test_real_tofu_record_by_hand():
    # forget01_spans.jsonl line 3. Its spans are "Kuwait City" [37, 48) and "Kuwait" [17, 23)
    # (unsorted; the second one lies inside "Al-Kuwaiti", as annotated).
    with pytest.warns(UserWarning, match="jsonl:31: overlapping spans"):
        recs, _ = load_records(FORGET01, skip_bad=True)
    rec = next(r for r in recs if r.line == 3)
    assert rec.answer == "Basil Mahfouz Al-Kuwaiti was born in Kuwait City, Kuwait."
    assert [(s.start, s.end) for s in rec.spans] == [(17, 23), (37, 48)]  # sorted
    text = rec.question + " " + rec.answer
    for punct in "?,.-":
        text = text.replace(punct, f" {punct} ")
    tok = word_tokenizer(text.split() + ["Question", "Answer", ":"])
    enc = encode_record(tok, rec, first_n=1)
    toks = tok.convert_ids_to_tokens(enc["input_ids"].tolist())
    n_prompt = toks.index(":", toks.index("Answer")) + 1
    assert toks[:2] == ["<s>", "Question"] and toks[n_prompt - 2:n_prompt] == ["Answer", ":"]
    # Token by token over the answer: S = sensitive, C = common (non-sensitive answer, EOS).
    expected = [("Basil", "C"), ("Mahfouz", "C"), ("Al", "C"), ("-", "C"), ("Kuwaiti", "S"),
                ("was", "C"), ("born", "C"), ("in", "C"), ("Kuwait", "S"), ("City", "S"),
                (",", "C"), ("Kuwait", "C"), (".", "C"), ("</s>", "C")]
    assert toks[n_prompt:] == [t for t, _ in expected]
    labels, sens = enc["labels"].tolist(), enc["sensitive"].tolist()
    assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert labels[n_prompt:] == enc["input_ids"].tolist()[n_prompt:]
    assert sens == [False] * n_prompt + [k == "S" for _, k in expected]
    # Rows after the shift: row t predicts token t + 1. With first_n=1 the run
    # "Kuwait City" starts at "Kuwait" (row before it in I); "City" is redundant (no loss).
    rows = {}
    for t in range(len(toks) - 1):
        kind = "I" if enc["initiating_mask"][t] else "C" if enc["common_mask"][t] else "-"
        rows[t] = kind
    assert not enc["initiating_mask"][-1] and not enc["common_mask"][-1]
    got = [rows[t - 1] for t in range(n_prompt, len(toks))]
    assert got == ["C", "C", "C", "C", "I", "C", "C", "C", "I", "-", "C", "C", "C", "C"]
    assert all(rows[t] == "-" for t in range(n_prompt - 1))  # prompt rows get nothing
    enc3 = encode_record(tok, rec, first_n=3)
    assert enc3["initiating_mask"].tolist() == enc3["sensitive"].tolist()[1:] + [False]


@needs_tofu
def test_masks_on_all_forget01_records():
    from palu_kernels.tiny import build_tokenizer, tofu_texts

    tok = build_tokenizer(tofu_texts(FORGET01), vocab_size=300)
    with pytest.warns(UserWarning, match="skipped 1 bad record"):
        recs, report = load_records(FORGET01, skip_bad=True)
    assert report.n_records == 40 and len(recs) == 39
    for rec in recs:
        for first_n in (1, 3):
            e = encode_record(tok, rec, first_n=first_n)
            ids, labels, sens = e["input_ids"], e["labels"], e["sensitive"]
            init, common = e["initiating_mask"], e["common_mask"]
            answer = labels != IGNORE_INDEX
            assert ids[-1] == tok.eos_token_id and answer[-1] and not sens[-1]
            assert not (init & common).any()
            shift = lambda m: torch.cat([m[1:], torch.tensor([False])])  # noqa: E731
            srows, arows = shift(sens), shift(answer)
            assert torch.equal(common | srows, arows) and not (common & srows).any()
            assert not (init & ~srows).any()
            # every run of sensitive rows starts with min(first_n, run length) initiating rows
            srows = srows.tolist()
            t = 0
            while t < len(srows):
                if srows[t]:
                    end = t
                    while end < len(srows) and srows[end]:
                        end += 1
                    assert init[t:end].tolist() == [i < first_n for i in range(end - t)]
                    t = end
                else:
                    assert not init[t]
                    t += 1
        # each span's characters are covered by sensitive tokens, each of which overlaps a span
        n_prompt = int((labels == IGNORE_INDEX).sum())
        ans = tok(" " + rec.answer, add_special_tokens=False, return_offsets_mapping=True)
        offs = [(a - 1, b - 1) for a, b in ans["offset_mapping"]]
        s_tok = sens[n_prompt:-1].tolist()
        covered = set()
        for (a, b), s in zip(offs, s_tok):
            if s:
                assert any(a < sp.end and b > sp.start for sp in rec.spans)
                covered.update(range(a, b))
        for sp in rec.spans:
            assert set(range(sp.start, sp.end)) <= covered


def _write(tmp_path, name, lines):
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(p)


GOOD = json.dumps({"question": "Q?", "answer": "Basil was born.",
                   "target_words": [{"word": "Basil", "start": 0, "end": 5}]})


@pytest.mark.parametrize("bad, reason", [
    ('{"question": "Q?", "target_words": []}', "missing field 'answer'"),
    ('{"question": "Q?", "answer": "Basil."}', "missing field 'target_words'"),
    ('{"question": "Q?", "answer": 3, "target_words": []}', "field 'answer' must be a string"),
    ('{"question": "Q?", "answer": "Basil.", "target_words": [{"word": "Basil.x", "start": 0, '
     '"end": 7}]}', "outside the answer"),
    ('{"question": "Q?", "answer": "Basil.", "target_words": [{"word": "Basel", "start": 0, '
     '"end": 5}]}', "answer[0:5] is 'Basil', not 'Basel'"),
    ('{"question": "Q?", "answer": "Basil Mahfouz", "target_words": [{"word": "Mahfouz", '
     '"start": 6, "end": 13}, {"word": "Basil Mah", "start": 0, "end": 9}]}', "overlapping spans"),
    ('{"question": "Q?", "answer": "Basil.", "target_words": [{"word": "B", "start": 0}]}',
     "missing field 'end'"),
    ('{"question": "Q?", "answer": "Basil"', "invalid JSON"),
    ('["not", "an", "object"]', "expected a JSON object"),
])
def test_bad_record_reported_with_file_line_reason(tmp_path, bad, reason):
    path = _write(tmp_path, "f.jsonl", [GOOD, "", bad, GOOD])
    with pytest.raises(ValueError) as err:
        load_records(path)
    assert f"{path}:3: " in str(err.value) and reason in str(err.value)
    assert "1 bad record" in str(err.value)
    with pytest.warns(UserWarning, match="skipped 1 bad record"):
        recs, report = load_records(path, skip_bad=True)
    assert [r.line for r in recs] == [1, 4]
    assert report.n_records == 3 and len(report.skipped) == 1 and report.skipped[0][0] == 3
    assert reason in report.skipped[0][1]


def test_every_bad_record_listed_and_all_bad_is_an_error(tmp_path):
    bad = '{"question": "Q?"}'
    path = _write(tmp_path, "f.jsonl", [bad, GOOD, bad, bad])
    with pytest.raises(ValueError) as err:
        load_records(path)
    msg = str(err.value)
    assert "3 bad record(s)" in msg and all(f"{path}:{n}:" in msg for n in (1, 3, 4))
    only_bad = _write(tmp_path, "g.jsonl", [bad])
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="no usable records"):
        load_records(only_bad, skip_bad=True)
    with pytest.raises(ValueError, match="cannot read data file"):
        load_records(str(tmp_path / "missing.jsonl"))


def test_json_array_lines_and_retain_without_spans(tmp_path):
    p = tmp_path / "r.json"
    p.write_text('[\n  {"question": "a?", "answer": "b"},\n\n  {"question": "c?"}\n]\n')
    with pytest.raises(ValueError, match=r"r\.json:4: missing field 'answer'"):
        load_records(str(p), spans="ignore")
    p.write_text('[{"question": "a?", "answer": "b"},\n {"question": "c?", "answer": "d", '
                 '"target_words": "junk"}]')
    recs, _ = load_records(str(p), spans="ignore")
    assert [(r.question, r.answer, r.spans, r.line) for r in recs] == [("a?", "b", (), 1),
                                                                        ("c?", "d", (), 2)]


@needs_tofu
def test_real_files_load():
    with pytest.raises(ValueError, match=r"forget01_spans\.jsonl:31: overlapping spans "
                                         r"'Kazakhstan' \[1, 11\) and 'Kazakhstan Echoes'"):
        load_records(FORGET01)
    recs, report = load_records(RETAIN99, spans="ignore")  # JSON lines despite the name
    assert len(recs) == report.n_records == 3960 and not report.skipped


def test_collator_right_pads_each_part():
    tok = word_tokenizer("Question : Answer Basil was born in Kuwait . a b ?".split())
    f = [QARecord("a ?", "Basil was born in Kuwait .", (Span(18, 24, "Kuwait"),)),
         QARecord("b ?", "Basil .", ())]
    r = [QARecord("a ?", "was born ."), QARecord("b ?", "Kuwait ."), QARecord("a ?", "b .")]
    ds = PALUDataset(tok, f, r, first_n=3, seed=0)
    batch = PALUCollator(tok.pad_token_id)([ds[0], ds[1]])
    lf = [len(ds[i]["forget"]["input_ids"]) for i in range(2)]
    assert batch["forget_input_ids"].shape == (2, max(lf))
    short = lf.index(min(lf))
    pad = slice(min(lf), None)
    assert (batch["forget_input_ids"][short, pad] == tok.pad_token_id).all()
    assert (batch["forget_attention_mask"][short, pad] == 0).all()
    assert (batch["forget_labels"][short, pad] == IGNORE_INDEX).all()
    assert not batch["forget_initiating_mask"][short, pad].any()
    assert not batch["forget_common_mask"][short, pad].any()
    assert batch["forget_initiating_mask"].dtype == torch.bool
    assert batch["forget_initiating_mask"].sum() == 1  # the one "Kuwait" token
    assert set(batch) >= {"retain_input_ids", "retain_attention_mask", "retain_labels"}
    # the retain pairing moves with the epoch and is a permutation of the retain set
    pairs0 = [ds.retain_index(i) for i in range(2)]
    ds.set_epoch(1)
    pairs1 = [ds.retain_index(i) for i in range(2)]
    assert pairs0 != pairs1 and set(pairs0 + pairs1) == {0, 1, 2}


def test_chat_template_prompt_and_plain_prompt():
    from palu_kernels.tiny import build_tokenizer
    from palu_kernels.io.data import format_prompt, prompt_ids

    texts = ["User: who wrote it?\nAssistant: Basil wrote it."] * 20
    template = ("{% for m in messages %}<|bos|>User: {{ m['content'] }}\n{% endfor %}"
                "{% if add_generation_prompt %}Assistant:{% endif %}")
    plain = build_tokenizer(texts, vocab_size=280)
    chat = build_tokenizer(texts, vocab_size=280, chat_template=template)
    rec = QARecord("who wrote it?", " Basil wrote it.", (Span(1, 6, "Basil"),))
    assert format_prompt(chat, rec.question) == ("<|bos|>User: who wrote it?\nAssistant:", "", True)
    assert format_prompt(plain, rec.question) == ("Question: who wrote it?\nAnswer:", " ", False)
    for tok in (plain, chat):
        e = encode_record(tok, rec, first_n=1)
        n_prompt = len(prompt_ids(tok, rec.question))
        assert e["input_ids"].tolist()[:n_prompt] == prompt_ids(tok, rec.question)
        assert prompt_ids(tok, rec.question)[0] == tok.bos_token_id
        assert prompt_ids(tok, rec.question).count(tok.bos_token_id) == 1
        answer = tok.decode(e["input_ids"][n_prompt:-1])
        assert answer.strip() == "Basil wrote it."
        sens_text = tok.decode(e["input_ids"][e["sensitive"]])
        assert sens_text.strip() == "Basil"
