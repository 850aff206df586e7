"""One small supervised fine-tuning function (answer-token NLL), shared by the demo and any
experiment that needs a model that knows the facts before it unlearns them."""

from __future__ import annotations

import math
import time

__all__ = ["fine_tune"]


def fine_tune(model, tokenizer, pairs, *, lr: float, max_epochs: int, target_nll: float,
              batch_size: int = 16, seed: int = 0, desc: str = "fine-tune",
              progress: bool = True, answer_rows_only: bool = False,
              train_layers: int | None = None, bf16: bool = False,
              length_buckets: bool = False) -> dict:
    """Plain answer-token NLL training (AdamW) until the epoch's mean NLL < ``target_nll``.

    Sequences are encoded exactly as the trainer encodes them (:func:`encode_record`), so the
    unlearning and evaluation see the same tokens. ``answer_rows_only``: project only the
    answer rows' hidden states to the vocabulary (same loss, less work with a large vocabulary;
    needs ``get_decoder()`` / ``get_output_embeddings()``). ``train_layers``: train only the
    last that many decoder layers (:func:`~palu_kernels.io.models.train_last_layers`).
    ``bf16``: the forward under bfloat16 autocast (weights and optimizer stay float32; about
    twice as fast on a CPU with bf16 instructions). ``length_buckets``: each batch holds
    sequences of similar length (chunks of 8 batches of the shuffled order sorted by length,
    the batches then shuffled), so less padding is computed.
    Returns ``{"epochs", "nll",
    "seconds"}``.
    """
    import torch
    from tqdm.auto import tqdm

    from ..io.data import IGNORE_INDEX, pad_sequences, encode_record
    from ..io.records import QARecord
    from ..io.models import train_last_layers

    train_last_layers(model, train_layers)
    encs = [encode_record(tokenizer, QARecord(q, a)) for q, a in pairs]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                            weight_decay=0.0, betas=(0.9, 0.98))
    steps_per_epoch = math.ceil(len(encs) / batch_size)
    total_steps = max(1, max_epochs * steps_per_epoch)
    # cosine decay to lr / 20 over max_epochs: a fast start, then the loss settles
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(step, total_steps)
                                                            / total_steps)))
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device  # the batches go where the model is
    model.train()
    t0 = time.time()
    nll = float("inf")
    bar = tqdm(range(max_epochs), desc=desc, disable=not progress, unit="epoch")
    epoch = 0
    for epoch in bar:
        perm = torch.randperm(len(encs), generator=gen).tolist()
        batches = [perm[s:s + batch_size] for s in range(0, len(perm), batch_size)]
        if length_buckets:
            span = 8 * batch_size
            chunks = [sorted(perm[c:c + span], key=lambda i: len(encs[i]["input_ids"]))
                      for c in range(0, len(perm), span)]
            batches = [ch[s:s + batch_size] for ch in chunks
                       for s in range(0, len(ch), batch_size)]
            order = torch.randperm(len(batches), generator=gen).tolist()
            batches = [batches[i] for i in order]
        total, count = 0.0, 0
        for idx in batches:
            b = [encs[i] for i in idx]
            ids = pad_sequences([e["input_ids"] for e in b], tokenizer.pad_token_id).to(device)
            att = pad_sequences([e["attention_mask"] for e in b], 0).to(device)
            lab = pad_sequences([e["labels"] for e in b], IGNORE_INDEX)[:, 1:].to(device)
            with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=bf16):
                if answer_rows_only:
                    hidden = model.get_decoder()(input_ids=ids, attention_mask=att)[0][:, :-1]
                    rows = lab != IGNORE_INDEX
                    logits = model.get_output_embeddings()(hidden[rows])
                    loss = torch.nn.functional.cross_entropy(logits.float(), lab[rows])
                else:
                    logits = model(input_ids=ids, attention_mask=att).logits[:, :-1]
                    loss = torch.nn.functional.cross_entropy(
                        logits.reshape(-1, logits.shape[-1]).float(), lab.reshape(-1),
                        ignore_index=IGNORE_INDEX)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            n = int((lab != IGNORE_INDEX).sum())
            total, count = total + loss.item() * n, count + n
        nll = total / max(1, count)
        bar.set_postfix(nll=f"{nll:.4f}")
        if nll < target_nll:
            break
    bar.close()
    model.eval()
    return {"epochs": epoch + 1, "nll": nll, "seconds": round(time.time() - t0, 2)}
