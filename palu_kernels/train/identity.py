"""What a run is, so that ``--resume`` continues only the run its checkpoint belongs to.

At the start of a run :func:`run_unlearning <palu_kernels.train.job.run_unlearning>` writes
:data:`IDENTITY` into the output directory: a fingerprint of the start model (its
``config.json`` and weight files), the SHA-256 of every data file (``forget``,
``retain``, ``idk_file``) and every setting that changes training (method and its
hyper-parameters, optimizer, schedule, batch sizes, seed, number of processes, ...). Settings
that do not change the trained weights (logging, checkpoint cadence, the before/after
measurement sizes, the loss backend) are left out. ``resume`` compares the job with the
identity of the checkpoint's run (:func:`check_resume`) and refuses a mismatch in one line
that names every differing setting.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from typing import List, Optional

from ..errors import UsageError
from ..outputs import MARKER, atomic_write_json
from .registry import all_knobs

__all__ = ["IDENTITY", "check_resume", "identity_differences", "run_identity",
           "write_identity"]

IDENTITY = "run_identity.json"
"""The identity of the run whose checkpoints an output directory holds (:func:`run_identity`)."""

SETTINGS = {  # UnlearningJob part -> fields that change training (palu-unlearn option names)
    "model": ("lora_r", "lora_alpha"),
    "data": ("max_length", "first_n", "skip_bad_records", "spans"),
    "method": ("name", "k", "target", "kl"),  # and every method setting (run_identity)
    "training": ("lr", "weight_decay", "optim", "epochs", "max_steps", "warmup_epochs",
                 "batch_size", "grad_accum", "bf16", "seed"),
}
_EDGE = 1 << 20  # bytes hashed at each end of a weight file (its size is hashed too)


def _file_knobs() -> List[str]:
    """The method settings that name a file (``idk_file``): identified by content."""
    return [name for name, decl in all_knobs().items() if next(iter(decl.values())).file]


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_fingerprint(path: str) -> str:
    """16 hex digits identifying a model directory (or ``.gguf`` file) by content: the whole
    ``config.json`` and, per weight file, its name, size and first and last MiB (cheap even
    for large models; two fine-tunes of one base differ there)."""
    h = hashlib.sha256()
    if os.path.isfile(path):
        files = [path]
    else:
        files = []
        for name in sorted(os.listdir(path)):
            p = os.path.join(path, name)
            if name == "config.json" or name == "adapter_config.json":
                with open(p, "rb") as f:
                    h.update(name.encode() + b"\0" + f.read())
            elif os.path.isfile(p) and name.endswith((".safetensors", ".bin", ".gguf", ".pt")):
                files.append(p)
    for p in files:
        size = os.path.getsize(p)
        h.update(f"{os.path.basename(p)}\0{size}\0".encode())
        with open(p, "rb") as f:
            h.update(f.read(_EDGE))
            if size > _EDGE:
                f.seek(max(_EDGE, size - _EDGE))
                h.update(f.read(_EDGE))
    return h.hexdigest()[:16]


def run_identity(job) -> dict:
    """The identity of ``job`` (a JSON-ready dict; see the module docstring)."""
    def data(path):
        return None if path is None else {"path": os.path.abspath(path),
                                          "sha256": file_sha256(path)}

    ident = {"model": {"path": os.path.abspath(job.model.path),
                       "fingerprint": model_fingerprint(job.model.path)},
             "forget": data(job.data.forget), "retain": data(job.data.retain),
             **{name: data(job.method.knobs.get(name)) for name in _file_knobs()},
             "spans_reference": (None if job.data.spans_reference is None else
                                 {"path": os.path.abspath(job.data.spans_reference),
                                  "fingerprint": model_fingerprint(job.data.spans_reference)}),
             "settings": {}}
    for part, names in SETTINGS.items():
        spec = getattr(job, part)
        for name in names:
            ident["settings"]["method" if (part, name) == ("method", "name") else name] = \
                getattr(spec, name)
    for name in all_knobs():
        if name not in _file_knobs():
            ident["settings"][name] = job.method.knobs.get(name)
    ident["settings"]["world_size"] = int(os.environ.get("WORLD_SIZE", "1"))
    return json.loads(json.dumps(ident, default=str))  # as it reads back from the file


def _named(name: str) -> str:
    """A setting as a message names it: the job field in backticks (the command line prints
    its flag), or the environment variable ``WORLD_SIZE``."""
    return f"`{name}`" if name != "world_size" else "WORLD_SIZE"


def _same_setting(name: str, a, b) -> bool:
    """``first_n`` / ``k`` of -1 (an older run's "all") equals ``None`` (the same "all")."""
    if name in ("first_n", "k"):
        a, b = (None if v == -1 else v for v in (a, b))
    return a == b


def identity_differences(old: dict, new: dict) -> List[str]:
    """```lr` 0.001 -> 0.005``-style descriptions of what differs between two identities
    (models by fingerprint, data by content; each setting named in backticks)."""
    out = []
    for key, what in (("model", "fingerprint"), ("spans_reference", "fingerprint"),
                      ("forget", "sha256"), ("retain", "sha256"),
                      *((name, "sha256") for name in _file_knobs())):
        a, b = old.get(key), new.get(key)
        if (a or {}).get(what) != (b or {}).get(what):
            if a is None or b is None:
                out.append(f"{_named(key)} {a['path'] if a else 'none'} -> "
                           f"{b['path'] if b else 'none'}")
            else:
                same = a.get("path") == b.get("path")
                out.append(f"{_named(key)} {b['path']}" + (" (its content changed)" if same else
                                                          f" (the run used {a.get('path')}, "
                                                          "other content)"))
    sa, sb = old.get("settings", {}), new.get("settings", {})
    for name in sb:
        if name in sa and not _same_setting(name, sa[name], sb[name]):
            out.append(f"{_named(name)} {sa[name]} -> {sb[name]}")
    return out


def write_identity(output_dir: str, identity: dict) -> str:
    return atomic_write_json(os.path.join(output_dir, IDENTITY), identity, indent=1)


def _recorded(run_dir: str) -> Optional[dict]:
    """The identity recorded in ``run_dir``: :data:`IDENTITY`, or the ``identity`` of its
    ``run_summary.json``; ``None`` when neither exists."""
    for name, key in ((IDENTITY, None), (MARKER, "identity")):
        path = os.path.join(run_dir, name)
        if os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as f:
                    obj = json.load(f)
            except (OSError, ValueError) as e:
                raise UsageError("resume", f"{path} is damaged ({e}); the checkpoint's run "
                                           "cannot be checked") from None
            obj = obj.get(key) if key else obj
            if isinstance(obj, dict):
                return obj
    return None


def check_resume(job, checkpoint: str, identity: Optional[dict] = None) -> None:
    """Refuse to resume ``checkpoint`` with ``job`` when the checkpoint's run (the identity
    recorded next to it) had another model, other data or other training settings:
    :class:`~palu_kernels.errors.UsageError` on ``resume`` naming each difference."""
    ckpt = os.path.abspath(checkpoint)
    old = _recorded(ckpt) or _recorded(os.path.dirname(ckpt))
    if old is None:
        warnings.warn(f"resume: {os.path.dirname(ckpt)} records no run identity (no "
                      f"{IDENTITY}: an older palu-unlearn made it): cannot check that "
                      f"{checkpoint} belongs to this model, data and settings", stacklevel=2)
        return
    diff = identity_differences(old, identity or run_identity(job))
    if diff:
        raise UsageError("resume", f"{checkpoint} belongs to another run: " + "; ".join(diff)
                         + ". Resume with that run's model, data and settings, or start a new "
                         "run (another `output_dir`, or `overwrite=True`)")
