"""Tiny model / local tokenizer helpers: offline, deterministic, loadable."""

import pytest
import torch

from palu_kernels.tiny import build_tiny_llama, build_tokenizer, save_tiny_model

TEXTS = ["Question: What is the full name of the author?\nAnswer: Basil Mahfouz Al-Kuwaiti.",
         "Basil Mahfouz Al-Kuwaiti was born in Kuwait City, Kuwait."] * 10


def test_tokenizer_specials_offsets_roundtrip():
    tok = build_tokenizer(TEXTS, vocab_size=300)
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    text = "Basil was born in Kuwait."
    enc = tok(text, return_offsets_mapping=True)
    assert enc["input_ids"][0] == tok.bos_token_id
    assert "".join(text[a:b] for a, b in enc["offset_mapping"]) == text
    assert tok.decode(enc["input_ids"], skip_special_tokens=True) == text
    assert tok(text, add_special_tokens=False)["input_ids"] == enc["input_ids"][1:]


def test_tokenizer_rejects_bad_args():
    with pytest.raises(ValueError, match="vocab_size"):
        build_tokenizer(TEXTS, vocab_size=100)
    with pytest.raises(TypeError, match="texts"):
        build_tokenizer("one string", vocab_size=300)


def test_tiny_llama_seeded_and_saved(tmp_path):
    tok = build_tokenizer(TEXTS, vocab_size=300)
    a, b = build_tiny_llama(tok, seed=3), build_tiny_llama(tok, seed=3)
    c = build_tiny_llama(tok, seed=4)
    assert a.config.vocab_size == len(tok) and a.config.num_hidden_layers == 2
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)
    from transformers import AutoModelForCausalLM, AutoTokenizer
    d = save_tiny_model(str(tmp_path / "m"), texts=TEXTS, vocab_size=300, seed=3)
    m = AutoModelForCausalLM.from_pretrained(d)
    assert torch.equal(m.lm_head.weight, a.lm_head.weight)
    assert AutoTokenizer.from_pretrained(d)("Basil")["input_ids"] == tok("Basil")["input_ids"]
