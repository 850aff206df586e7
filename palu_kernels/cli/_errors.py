"""One-line errors for the command lines (``docs/reliability.md``).

An ordinary mistake (a bad value, a missing or broken file, a run that would not unlearn)
prints one line on stderr, ``palu-xxx: ...`` naming the option, and exits with status 2 and
no traceback; ``--debug`` prints the traceback too. Library code below the CLI raises
``SystemExit("palu-xxx: ...")`` (checked before any work) or ``ValueError`` / ``OSError``.
"""

from __future__ import annotations

import sys
import traceback

DEBUG_HELP = "on an error, print the Python traceback too"


def exit_error(message: str) -> SystemExit:
    """``SystemExit`` whose text is ``message`` and whose exit status is 2 (the message is
    printed by :func:`run_cli`, since Python prints nothing for an integer status)."""
    e = SystemExit(message)
    e.code = 2
    return e


def _one_line(prog: str, e: BaseException) -> str:
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    text = lines[0] if lines else type(e).__name__
    if len(lines) > 1:  # e.g. a list of bad records: keep them, they name file:line each
        text = "\n".join(lines)
    return text if text.startswith(prog) else f"{prog}: error: {text}"


def run_cli(prog: str, fn, argv) -> int:
    """Run ``fn(argv)``; a ``SystemExit`` with a message, a ``ValueError`` or an ``OSError``
    becomes one line on stderr and :func:`exit_error` (status 2)."""
    debug = "--debug" in argv
    try:
        return fn(argv)
    except SystemExit as e:
        if not isinstance(e.code, str):
            raise
        if debug:
            traceback.print_exc()
        message = _one_line(prog, e)
    except (ValueError, OSError) as e:
        if debug:
            raise
        message = _one_line(prog, e)
    print(message, file=sys.stderr)
    raise exit_error(message) from None
