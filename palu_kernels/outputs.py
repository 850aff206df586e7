"""Atomic outputs, completion markers and complete checkpoints (``docs/reliability.md``).

The rules every writer of the project follows:

* a file is written to a temporary file in the same directory, flushed, fsynced and moved
  into place with ``os.replace`` (:func:`atomic_write_text`, :func:`atomic_write_json`);
* a result directory (``palu-unlearn --output-dir``) is complete when its completion marker
  :data:`MARKER` (``run_summary.json``) exists; the marker is written last. The final model is
  written into a temporary sibling directory, fsynced, and only then moved in
  (:func:`publish_result`): first the old marker goes, then every new file is renamed into
  place, then the new marker. At no moment does a directory with a marker hold a half-written
  or foreign model; a kill leaves either the old result (marker and all) or a directory
  without a marker, and the complete new files in the sibling;
* an output directory belongs to one run at a time: :class:`OutputLock` holds an exclusive
  ``flock`` on :data:`LOCK` inside it (the file names the owner's pid and host); a second run
  is refused naming the first; a lock left by a killed run is stale (the kernel dropped its
  ``flock``) and is reclaimed;
* a training checkpoint ``checkpoint-N`` (written by ``transformers.Trainer``, whose
  ``trainer_state.json`` is written after the model, optimizer, scheduler and RNG state) is
  complete when :func:`checkpoint_problem` finds nothing wrong with it.
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import re
import shutil
import socket
import tempfile
import time
import zipfile
from typing import List, Optional, Tuple

from .errors import UsageError

__all__ = ["LOCK", "MARKER", "OutputLock", "in_use_error", "lock_owner", "atomic_write_json", "atomic_write_text", "checkpoint_problem",
           "checkpoints", "delete_weights", "fsync_tree", "is_within", "latest_complete_checkpoint",
           "make_temp_sibling", "publish_result", "result_problem", "weights_problem"]

MARKER = "run_summary.json"
"""The completion marker of a ``palu-unlearn`` result directory, written last."""

LOCK = ".palu-lock"
"""The lock file of an output directory in use (:class:`OutputLock`); removed on release."""

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
WEIGHT_FILES = ("model.safetensors", "adapter_model.safetensors", "pytorch_model.bin",
                "adapter_model.bin", "model.safetensors.index.json",
                "pytorch_model.bin.index.json")


def is_within(path: str, parent: str) -> bool:
    """Whether ``path`` equals ``parent`` or lies inside it (symbolic links resolved)."""
    path, parent = os.path.realpath(path), os.path.realpath(parent)
    return path == parent or path.startswith(parent.rstrip(os.sep) + os.sep)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. a platform without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str, text: str) -> str:
    """Write ``text`` to ``path`` atomically (temp file in the same directory, fsync,
    ``os.replace``), creating its directory if needed; returns ``path``."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # as open() would create it (mkstemp uses 0600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(d)
    return path


def atomic_write_json(path: str, obj, **kw) -> str:
    """:func:`atomic_write_text` of ``json.dumps(obj, **kw)``."""
    return atomic_write_text(path, json.dumps(obj, **kw))


def fsync_tree(root: str) -> None:
    """fsync every file and directory under ``root`` (and ``root``)."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(dirpath)


def make_temp_sibling(output_dir: str, tag: str = "tmp") -> str:
    """A new empty directory next to ``output_dir`` (same file system, so renames are atomic):
    ``<parent>/.<name>.<tag>-XXXXXX``."""
    out = os.path.abspath(output_dir)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(out)}.{tag}-")
    os.chmod(tmp, 0o777 & ~_umask())  # as makedirs would create it (mkdtemp uses 0700)
    return tmp


STALE = ("*.safetensors", "*.bin", "*.index.json", "*.gguf", "config.json",
         "generation_config.json", "tokenizer*", "special_tokens_map.json", "added_tokens.json",
         "vocab.*", "merges.txt", "*.model", "chat_template.*", "adapter", "eval_*")
"""Entries of an old result that :func:`publish_result` removes when the new result has no
entry of that name (e.g. the shards of a bigger model, an adapter, evaluations of the old
model); anything else in the directory is left alone."""


def publish_result(tmp_dir: str, output_dir: str, *, stale=STALE) -> None:
    """Move a complete result from ``tmp_dir`` (holding :data:`MARKER`) into ``output_dir``.

    ``tmp_dir`` is fsynced first. Then the old marker of ``output_dir`` is removed, every
    entry of ``tmp_dir`` but the marker is renamed into place (an old entry of the same name is
    moved aside and deleted afterwards), the old result's entries matching ``stale`` that the
    new result does not have are deleted (checkpoints and unknown files stay), and the marker
    comes last.
    """
    import fnmatch

    if not os.path.isfile(os.path.join(tmp_dir, MARKER)):
        raise ValueError(f"{tmp_dir}: no {MARKER}; refusing to publish an incomplete result")
    fsync_tree(tmp_dir)
    os.makedirs(output_dir, exist_ok=True)
    old_marker = os.path.join(output_dir, MARKER)
    if os.path.exists(old_marker):
        os.remove(old_marker)
        _fsync_dir(output_dir)
    trash = tempfile.mkdtemp(dir=tmp_dir, prefix=".replaced-")
    new = set(os.listdir(tmp_dir)) - {MARKER, os.path.basename(trash)}
    for name in sorted(new):
        dst = os.path.join(output_dir, name)
        if os.path.isdir(dst) and not os.path.islink(dst):
            os.replace(dst, os.path.join(trash, name))
        os.replace(os.path.join(tmp_dir, name), dst)
    for name in os.listdir(output_dir):  # the old result's leftovers (e.g. other shards)
        if name in new or name == MARKER or not any(fnmatch.fnmatch(name, k) for k in stale):
            continue
        path = os.path.join(output_dir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            os.replace(path, os.path.join(trash, name))
        else:
            os.remove(path)
    _fsync_dir(output_dir)
    os.replace(os.path.join(tmp_dir, MARKER), old_marker)
    _fsync_dir(output_dir)
    shutil.rmtree(tmp_dir, ignore_errors=True)


def weights_problem(directory: str) -> Optional[str]:
    """Why the weight files in ``directory`` cannot be loaded (``None`` when they look
    complete): no weight file, a truncated or corrupt ``.safetensors`` (its header and data
    size are checked, not the values), a ``.bin`` that is not a complete zip archive."""
    names = os.listdir(directory)
    if not any(n in WEIGHT_FILES or n.endswith(".safetensors") for n in names):
        return "no model weights (model.safetensors or pytorch_model.bin)"
    for name in sorted(names):
        path = os.path.join(directory, name)
        if name.endswith(".safetensors"):
            problem = _safetensors_problem(path)
            if problem:
                return f"{name}: {problem}"
        elif name.endswith(".bin") and _truncated_zip(path):
            return f"{name}: not a complete torch archive (truncated?)"
    return None


def _truncated_zip(path: str) -> bool:
    """A zip archive (what ``torch.save`` writes) without its central directory: cut short.
    A file in torch's legacy (pre-zip) format is not judged."""
    try:
        with open(path, "rb") as f:
            is_zip = f.read(4) == b"PK\x03\x04"
    except OSError:
        return True
    return (is_zip or os.path.getsize(path) == 0) and not zipfile.is_zipfile(path)


def delete_weights(directory: str) -> None:
    """Delete a finished run's weights, trainer checkpoints and adapter from ``directory``
    (an experiment keeps its evaluation, summary and identity, which are its cache)."""
    for pattern in ("*.safetensors", "*.bin", "checkpoint-*", "adapter"):
        for path in glob.glob(os.path.join(directory, pattern)):
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def _safetensors_problem(path: str) -> Optional[str]:
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return "truncated (no header)"
            n = int.from_bytes(head, "little")
            if n > size - 8:
                return "truncated (header longer than the file)"
            header = json.loads(f.read(n))
    except (OSError, ValueError) as e:
        return f"unreadable ({e})"
    end = max((v["data_offsets"][1] for k, v in header.items()
               if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v), default=0)
    if 8 + n + end > size:
        return f"truncated ({size} bytes, the header describes {8 + n + end})"
    return None


def checkpoints(output_dir: str) -> List[Tuple[int, str]]:
    """``(step, path)`` of every ``checkpoint-N`` directory in ``output_dir``, newest first."""
    if not os.path.isdir(output_dir):
        return []
    out = []
    for name in os.listdir(output_dir):
        m = _CHECKPOINT.match(name)
        if m and os.path.isdir(os.path.join(output_dir, name)):
            out.append((int(m.group(1)), os.path.join(output_dir, name)))
    return sorted(out, reverse=True)


def checkpoint_problem(path: str) -> Optional[str]:
    """Why ``path`` is not a complete ``transformers.Trainer`` checkpoint (``None`` if it is).

    Complete: ``trainer_state.json`` (the Trainer writes it last) parses as JSON, the model
    weights pass :func:`weights_problem`, and ``optimizer.pt`` and ``scheduler.pt`` are
    complete torch archives.
    """
    if not os.path.isdir(path):
        return "not a directory"
    state = os.path.join(path, "trainer_state.json")
    if not os.path.isfile(state):
        return "no trainer_state.json (the checkpoint was not finished)"
    try:
        with open(state, encoding="utf-8") as f:
            json.load(f)
    except (OSError, ValueError) as e:
        return f"trainer_state.json is not valid JSON ({e})"
    problem = weights_problem(path)
    if problem:
        return problem
    for name in ("optimizer.pt", "scheduler.pt"):
        p = os.path.join(path, name)
        if not os.path.isfile(p):
            return f"no {name}"
        if _truncated_zip(p):
            return f"{name} is not a complete torch archive (truncated?)"
    return None


def latest_complete_checkpoint(output_dir: str) -> Tuple[Optional[str], List[Tuple[str, str]]]:
    """The newest complete checkpoint of ``output_dir`` (``None`` if none) and the newer ones
    it skipped, as ``(path, why)``."""
    skipped = []
    for _, path in checkpoints(output_dir):
        problem = checkpoint_problem(path)
        if problem is None:
            return path, skipped
        skipped.append((path, problem))
    return None, skipped


def result_problem(directory: str) -> Optional[str]:
    """Why ``directory`` is not a usable model (``None`` when it looks usable).

    A ``palu-unlearn`` output (it holds ``checkpoint-*`` directories, or a temporary sibling
    was left next to it) without :data:`MARKER` was not finished; otherwise the weights must
    pass :func:`weights_problem` and ``config.json`` must exist.
    """
    if checkpoints(directory) and not os.path.isfile(os.path.join(directory, MARKER)):
        return (f"an unfinished palu-unlearn run (checkpoint-* but no {MARKER}); resume that "
                "run (`resume=True`), or pass one of its checkpoint-* directories")
    if not os.path.isfile(os.path.join(directory, "config.json")):
        if os.path.isfile(os.path.join(directory, "adapter_config.json")):
            return None  # a PEFT adapter directory: transformers reads its base model
        return "no config.json (not a Hugging Face model directory, or not finished)"
    return weights_problem(directory)


# ------------------------------------------------------------------------------ the lock


def _read_owner(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            owner = json.loads(f.read() or "{}")
        return owner if isinstance(owner, dict) else {}
    except (OSError, ValueError):
        return {}


def _describe_owner(owner: dict) -> str:
    pid, host = owner.get("pid", "?"), owner.get("host")
    started = owner.get("started")
    s = f"pid {pid}" + (f" on {host}" if host else "")
    if isinstance(started, (int, float)):
        s += ", started " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started))
    return s


def in_use_error(directory: str, owner: dict, option: str = "output_dir") -> UsageError:
    """The one-line refusal of a directory locked by ``owner`` (:func:`lock_owner`)."""
    return UsageError(option, f"{directory!r} is in use by another run "
                              f"({_describe_owner(owner)}); wait for it to finish, or choose "
                              "another directory")


def lock_owner(directory: str) -> Optional[dict]:
    """The owner (``{"pid", "host", "started", "command"}``) of a live lock on ``directory``,
    ``None`` when nobody holds one (no lock file, or a stale one of a killed run)."""
    path = os.path.join(directory, LOCK)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_owner(path) or {"pid": "?"}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class OutputLock:
    """Exclusive use of an output directory for the lifetime of one run.

    ``acquire`` creates ``directory`` if needed and takes a non-blocking ``flock`` on
    ``directory/.palu-lock``, writing the owner (pid, host, start time, ``command``) into it.
    Another live holder: :class:`~palu_kernels.errors.UsageError` on ``option`` naming its
    pid. A lock file whose ``flock`` is free belongs to a run that ended without releasing it
    (killed): it is reclaimed (``reclaimed`` then holds the dead owner). The kernel drops an
    ``flock`` when its process dies, so a killed run never blocks the next one. ``release``
    (also on any exception, as a context manager) deletes the file and drops the lock.
    """

    def __init__(self, directory: str, *, option: str = "output_dir", command: str = ""):
        self.directory, self.option, self.command = directory, option, command
        self.path = os.path.join(directory, LOCK)
        self.fd: Optional[int] = None
        self.reclaimed: Optional[dict] = None

    def acquire(self) -> "OutputLock":
        os.makedirs(self.directory, exist_ok=True)
        for _ in range(20):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise in_use_error(self.directory, _read_owner(self.path) or {"pid": "?"},
                                   self.option) from None
            try:  # the file may have been released (deleted) between our open and flock
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            old = _read_owner(self.path)
            if old.get("pid") not in (None, os.getpid()):
                self.reclaimed = old  # a killed run's lock: its flock is gone
            owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                     "command": self.command}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(owner) + "\n").encode("utf-8"), 0)
            os.fsync(fd)
            self.fd = fd
            return self
        raise UsageError(self.option, f"{self.directory!r}: cannot take the lock {self.path} "
                                      "(it keeps changing hands)")

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.remove(self.path)  # while still holding it: nobody reads a half-released lock
        except OSError:
            pass
        try:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
