"""One-line errors for the command lines (``docs/reliability.md``).

An ordinary mistake (a bad value, a missing or broken file, a run that would not unlearn)
prints one line on stderr, ``palu-xxx: ...`` naming the option, and exits with status 2 and
no traceback; ``--debug`` prints the traceback too. Library code below the CLI raises
:class:`palu_kernels.errors.UsageError` naming the argument (``first_n``, ``output_dir``; other
arguments in its message in backticks, ``` `overwrite=True` ```), or ``ValueError`` /
``OSError``; here the argument names become the flags a user types (:func:`flag_of`,
:func:`cli_text`: ``first_n`` -> ``--first-n``, ``` `overwrite=True` ``` ->
``--overwrite``). An interrupt (Ctrl-C) prints one line saying what is on disk and how to
continue, and exits with status 130. A warning prints as one line ``palu-xxx: warning: ...``
(no line of Python source).
"""

from __future__ import annotations

import contextlib
import gc
import re
import sys
import traceback
import warnings

from ..errors import UsageError, starts_with_option

INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C

DEBUG_HELP = "on an error, print the Python traceback too"


def exit_error(message: str) -> SystemExit:
    """``SystemExit`` whose text is ``message`` and whose exit status is 2 (the message is
    printed by :func:`run_cli`, since Python prints nothing for an integer status)."""
    e = SystemExit(message)
    e.code = 2
    return e


FLAGS = {"n": "--passages"}  # the MUSE demo's passage count (MuseDemoConfig.n)
"""Argument names whose command-line flag is not ``--`` + the name with dashes."""

_NAMED = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)(?:=([^`]*))?`")


def flag_of(option: str) -> str:
    """The flag of an argument name: ``first_n`` -> ``--first-n`` (:data:`FLAGS` where the
    flag has another name); a flag (``--x``) stays as it is."""
    if option.startswith("-"):
        return option
    return FLAGS.get(option, "--" + option.replace("_", "-"))


def in_flags(text: str) -> str:
    """Argument names written in backticks as flags: ``` `lora_r` ``` -> ``--lora-r``,
    ``` `overwrite=True` ``` -> ``--overwrite``, ``` `spans=text` ``` -> ``--spans text``."""
    def flag(m):
        value = m.group(2)
        return flag_of(m.group(1)) + ("" if value in (None, "True") else f" {value}")
    return _NAMED.sub(flag, text)


def cli_text(e: UsageError) -> str:
    """A :class:`~palu_kernels.errors.UsageError` as the command line says it: naming the
    flag (``first_n must be ...`` -> ``--first-n must be ...``)."""
    option, message = e.option, e.message
    if not option:
        return in_flags(message)
    rest = message[len(option):] if starts_with_option(message, option) else " " + message
    return flag_of(option) + in_flags(rest)


def error_text(e: BaseException) -> str:
    """The text of an error as the command line prints it (:func:`cli_text` for a
    :class:`~palu_kernels.errors.UsageError`)."""
    return cli_text(e) if isinstance(e, UsageError) else str(e)


@contextlib.contextmanager
def flags_in_errors(prog: str):
    """Around a command's work called from Python with an argv (``unlearn([...])``): a
    :class:`~palu_kernels.errors.UsageError` from below becomes ``SystemExit("prog: --flag
    ...")``, the one line :func:`run_cli` prints (the library error chained to it)."""
    try:
        yield
    except UsageError as e:
        raise SystemExit(f"{prog}: {cli_text(e)}") from e


def _one_line(prog: str, e: BaseException) -> str:
    lines = [ln for ln in error_text(e).splitlines() if ln.strip()]
    text = lines[0] if lines else type(e).__name__
    if len(lines) > 1:  # e.g. a list of bad records: keep them, they name file:line each
        text = "\n".join(lines)
    if text.startswith(prog):
        return text
    # a UsageError names what was wrong itself (``prog: --flag ...``)
    return f"{prog}: {text}" if isinstance(e, UsageError) else f"{prog}: error: {text}"


def one_line_warnings(prog: str):
    """A ``warnings.formatwarning`` printing ``prog: warning: message`` (the message's own
    lines kept, e.g. a list of skipped records; no file name, no line of source)."""
    def fmt(message, category, filename, lineno, line=None):
        return f"{prog}: warning: {message}\n"
    return fmt


def _close_progress_bars() -> None:
    """Close open tqdm bars, so that none redraws itself after the last line."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", None) or ()):
        try:
            bar.close()
        except Exception:  # noqa: BLE001 - cosmetic
            pass


def run_cli(prog: str, fn, argv, interrupted=None) -> int:
    """Run ``fn(argv)``; a ``SystemExit`` with a message, a ``ValueError`` (a
    :class:`~palu_kernels.errors.UsageError`: ``prog: <option> ...``) or an ``OSError``
    becomes one line on stderr and :func:`exit_error` (status 2). Ctrl-C: one line,
    ``prog: interrupted; <interrupted()>`` (what is on disk, how to continue), and
    ``SystemExit(130)``. Warnings print as one line each (:func:`one_line_warnings`)."""
    debug = "--debug" in argv
    old_format = warnings.formatwarning
    warnings.formatwarning = one_line_warnings(prog)
    try:
        return fn(argv)
    except SystemExit as e:
        if not isinstance(e.code, str):
            raise
        if debug:
            traceback.print_exc()
        message = _one_line(prog, e)
    except (ValueError, OSError) as e:  # a UsageError names the flag (cli_text)
        if debug:
            raise
        message = _one_line(prog, e)
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        message = None
    finally:
        warnings.formatwarning = old_format
    if message is None:
        # Out of the except block, the interrupt's traceback (and with it the frames holding
        # the trainer and its progress bars) is released: collect it now, so that no bar
        # draws itself from a destructor after the last line.
        gc.collect()
        _close_progress_bars()
        try:
            where = interrupted() if interrupted is not None else None
        except Exception:  # noqa: BLE001 - the interrupt is what gets reported
            where = None
        print(f"\n{prog}: interrupted" + (f"; {where}" if where else ""), file=sys.stderr)
        raise SystemExit(INTERRUPTED) from None
    print(message, file=sys.stderr)
    raise exit_error(message) from None
