"""Tiny Llama-architecture models and locally trained tokenizers, for tests and demos.

Nothing here downloads anything: the tokenizer is a byte-level BPE trained with the
``tokenizers`` library on the texts you pass, and the model is a ``LlamaForCausalLM`` built from
a ``LlamaConfig`` with seeded random weights.

Example (paste into a Python shell)::

    from palu_kernels.tiny import build_tokenizer, build_tiny_llama, save_tiny_model
    tok = build_tokenizer(["Question: who wrote it?\\nAnswer: Basil Mahfouz Al-Kuwaiti."] * 4,
                          vocab_size=300)
    model = build_tiny_llama(tok)              # hidden 64, 2 layers, vocab = len(tok)
    enc = tok("Basil wrote it.", return_offsets_mapping=True)
    path = save_tiny_model("/tmp/tiny-llama", texts=["some text"] * 4)  # model + tokenizer
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence

from .jsonio import iter_json_objects

BOS_TOKEN = "<|bos|>"
EOS_TOKEN = "<|eos|>"
PAD_TOKEN = "<|pad|>"
UNK_TOKEN = "<|unk|>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN)


def tofu_texts(path: str, limit: int | None = None) -> list[str]:
    """Question and answer strings from a TOFU JSON / JSON-lines file (for tokenizer training).

    ``limit`` caps the number of records read. Lines that are not JSON objects are skipped:
    this helper only gathers text, the trainer's loader (``palu_kernels.io.data``) is the
    one that validates records.
    """
    texts: list[str] = []
    with open(path, encoding="utf-8") as f:
        text = f.read()
    for line, rec in iter_json_objects(path, text):
        if limit is not None and line > limit:
            break
        if isinstance(rec, dict):
            texts.extend(str(rec[key]) for key in ("question", "answer") if key in rec)
    return texts


def build_tokenizer(texts: Iterable[str], vocab_size: int = 512, *, min_frequency: int = 2,
                    model_max_length: int = 512, chat_template: str | None = None,
                    split_spaces: bool = False):
    """Train a byte-level BPE tokenizer on ``texts`` and wrap it as a ``PreTrainedTokenizerFast``.

    Args:
        texts: training texts (any iterable of strings; a list of a few hundred sentences
            trains in well under a second).
        vocab_size: target vocabulary size, special tokens and the 256 byte symbols included
            (so it must be >= 261).
        min_frequency: minimum count of a pair to be merged.
        model_max_length: stored on the tokenizer.
        chat_template: optional Jinja chat template; None leaves the tokenizer without one, so
            the trainer uses its plain ``Question: ...\\nAnswer: `` template.
        split_spaces: every space is a token of its own (words carry no leading space), so
            a prompt that ends with a space (MUSE's ``"Answer: "``) is tokenized as the same
            text is inside a training sequence.

    Returns:
        A fast tokenizer with ``<|pad|>``, ``<|bos|>``, ``<|eos|>``, ``<|unk|>`` (ids 0-3),
        ``add_bos_token`` behaviour (BOS prepended by ``tok(text)``, not with
        ``add_special_tokens=False``), right padding, and character offsets
        (``return_offsets_mapping=True``) that index the input string.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 261:
        raise ValueError(f"vocab_size must be an int >= 261 (256 bytes + 4 special tokens + 1), "
                         f"got {vocab_size!r}")
    if isinstance(texts, str):
        raise TypeError("texts must be an iterable of strings, got a single str")
    texts = [t for t in texts if isinstance(t, str) and t]
    if not texts:
        raise ValueError("texts must contain at least one non-empty string")
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if split_spaces:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(" ", behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id(BOS_TOKEN)
    # Byte-level offsets keep leading spaces (trim_offsets=False): a token " Basil" covers the
    # space too, which is what the span-overlap rule of the trainer expects.
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{BOS_TOKEN} $A", pair=f"{BOS_TOKEN} $A $B",
                                      special_tokens=[(BOS_TOKEN, bos_id)]),
    ])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS_TOKEN, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN, model_max_length=model_max_length, padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    if chat_template is not None:
        fast.chat_template = chat_template
    return fast


def build_tiny_llama(tokenizer_or_vocab_size, hidden_size: int = 64, num_layers: int = 2, *,
                     num_heads: int = 4, num_kv_heads: int | None = None,
                     intermediate_size: int | None = None, max_position_embeddings: int = 512,
                     seed: int = 0, tie_word_embeddings: bool = False):
    """A randomly initialised (seeded) ``LlamaForCausalLM`` from a ``LlamaConfig``.

    Args:
        tokenizer_or_vocab_size: a tokenizer (its ``len()`` and bos/eos/pad ids are used) or
            an int vocabulary size (ids 0-3 taken as pad/bos/eos/unk as in
            :func:`build_tokenizer`).
        hidden_size, num_layers, num_heads, num_kv_heads, intermediate_size: the shape
            (``intermediate_size`` defaults to ``4 * hidden_size``, ``num_kv_heads`` to
            ``num_heads``).
        max_position_embeddings: longest sequence.
        seed: the weights depend only on the seed and the shape.
        tie_word_embeddings: share input embedding and LM head.

    Returns:
        The model in fp32, eval mode, on the CPU.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if isinstance(tokenizer_or_vocab_size, int) and not isinstance(tokenizer_or_vocab_size, bool):
        vocab = tokenizer_or_vocab_size
        pad_id, bos_id, eos_id = 0, 1, 2
    elif hasattr(tokenizer_or_vocab_size, "__len__") and hasattr(tokenizer_or_vocab_size, "eos_token_id"):
        tok = tokenizer_or_vocab_size
        vocab = len(tok)
        pad_id, bos_id, eos_id = tok.pad_token_id, tok.bos_token_id, tok.eos_token_id
    else:
        raise TypeError("tokenizer_or_vocab_size must be a tokenizer or an int, got "
                        f"{type(tokenizer_or_vocab_size).__name__}")
    if vocab < 4:
        raise ValueError(f"vocabulary size must be >= 4, got {vocab}")
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})")
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=num_heads, num_key_value_heads=num_kv_heads or num_heads,
        intermediate_size=intermediate_size or 4 * hidden_size,
        max_position_embeddings=max_position_embeddings, pad_token_id=pad_id,
        bos_token_id=bos_id, eos_token_id=eos_id, tie_word_embeddings=tie_word_embeddings,
    )
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(state)
    return model.float().eval()


def save_tiny_model(directory: str, texts: Sequence[str] | None = None, *, vocab_size: int = 512,
                    hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4, seed: int = 0,
                    chat_template: str | None = None) -> str:
    """Build a tokenizer and a tiny Llama and save both (safetensors) into ``directory``.

    ``texts``: the tokenizer's training texts (e.g. ``tofu_texts(path)`` of a TOFU file; no
    default path is read); ``None``: a few built-in sentences. Returns ``directory``; load it back with
    ``AutoModelForCausalLM.from_pretrained(directory)`` / ``AutoTokenizer.from_pretrained``.
    """
    if texts is None:
        texts = _FALLBACK_TEXTS * 8
    tok = build_tokenizer(texts, vocab_size=vocab_size, chat_template=chat_template)
    model = build_tiny_llama(tok, hidden_size=hidden_size, num_layers=num_layers,
                             num_heads=num_heads, seed=seed)
    os.makedirs(directory, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    tok.save_pretrained(directory)
    return directory


_FALLBACK_TEXTS = [
    "Question: What is the full name of the author?\nAnswer: Basil Mahfouz Al-Kuwaiti.",
    "The author was born in Kuwait City, Kuwait on the 8th of September, 1956.",
    "His father was a florist and his mother was a game developer.",
    "He is most known for his writings in the French literature genre.",
]


def save_tiny_gguf(path: str, model, tokenizer) -> str:
    """Write a Llama ``model`` (fp32) and its byte-level BPE ``tokenizer`` as one GGUF file.

    For tests of the ``--model x.gguf`` path without a download: the result loads with
    ``AutoModelForCausalLM.from_pretrained(dir, gguf_file=name)`` (and the tokenizer likewise).
    Only what :func:`build_tokenizer` / :func:`build_tiny_llama` produce is supported.
    Returns ``path``.
    """
    import gguf
    import numpy as np

    cfg = model.config
    if cfg.model_type != "llama":
        raise ValueError(f"model must be a Llama model, got model_type {cfg.model_type!r}")
    tok_json = json.loads(tokenizer.backend_tokenizer.to_str())
    if tok_json["model"]["type"] != "BPE":
        raise ValueError("tokenizer must be a byte-level BPE tokenizer (see build_tokenizer)")
    vocab = tok_json["model"]["vocab"]
    tokens = [None] * len(vocab)
    for token, index in vocab.items():
        tokens[index] = token
    special = set(tokenizer.all_special_tokens)
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok_json["model"]["merges"]]
    n_head, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = cfg.hidden_size // n_head

    w = gguf.GGUFWriter(path, "llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(float(getattr(cfg, "rope_theta", None)
                               or cfg.rope_parameters.get("rope_theta", 10000.0)))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in special else 1 for t in tokens])  # 3 = control
    w.add_token_merges(merges)
    w.add_bos_token_id(tokenizer.bos_token_id)
    w.add_eos_token_id(tokenizer.eos_token_id)
    w.add_pad_token_id(tokenizer.pad_token_id)
    w.add_add_bos_token(False)

    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)

    def permute(t, heads):  # llama.cpp stores q/k rotary halves interleaved
        return t.reshape(heads, 2, t.shape[0] // heads // 2, *t.shape[1:]).swapaxes(1, 2).reshape(t.shape)

    for name, tensor in model.state_dict().items():
        base = name[: -len(".weight")] if name.endswith(".weight") else name
        gname = name_map.get_name(base)
        if gname is None:
            raise ValueError(f"no GGUF name for tensor {name!r}")
        arr = tensor.detach().float().cpu().numpy()
        if name.endswith("q_proj.weight"):
            arr = permute(arr, n_head)
        elif name.endswith("k_proj.weight"):
            arr = permute(arr, n_kv)
        w.add_tensor(gname + ".weight", np.ascontiguousarray(arr, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
