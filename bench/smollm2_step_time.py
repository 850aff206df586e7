"""Time one SmolLM2-135M training step (batch 2 x 256 tokens of a MUSE forget passage, float32,
one thread, AdamW) and one forward, to size bench/muse_smollm2.py (issue 22).

    python bench/smollm2_step_time.py
"""
import json
import os
import time

import torch

from palu_kernels.spans.lm import load_scorer


def main() -> None:
    torch.set_num_threads(1)
    t = time.time()
    m, tok = load_scorer("smollm2")
    res = {"load_s": round(time.time() - t, 1)}
    m.train()
    with open("../shared/data/muse_news/raw/forget.json", encoding="utf-8") as f:
        p = json.load(f)[0]
    ids = tok(p, add_special_tokens=False)["input_ids"][:256]
    x = torch.tensor([ids, ids])
    opt = torch.optim.AdamW(m.parameters(), lr=1e-5)
    for i in range(2):
        t = time.time()
        m(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
        res[f"train_step_2x256_s_{i}"] = round(time.time() - t, 1)
    m.eval()
    with torch.no_grad():
        t = time.time()
        m(input_ids=x[:1])
        res["forward_1x256_s"] = round(time.time() - t, 1)
    res["loadavg"] = os.getloadavg()
    print(json.dumps(res))


if __name__ == "__main__":
    main()
