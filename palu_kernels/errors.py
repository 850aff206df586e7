"""The project's usage error (core layer; ``docs/reliability.md``).

Below ``cli/`` a bad value, a bad file or a state that forbids the work (an output directory
in use by another run, a checkpoint of another run) raises :class:`UsageError`, naming the
option or argument in ``.option``. Only ``cli/`` turns it into one line on stderr and exit
status 2 (:func:`palu_kernels.cli._errors.run_cli`); library callers catch it as the
``ValueError`` it is.
"""

from __future__ import annotations

from typing import Optional

__all__ = ["UsageError"]


class UsageError(ValueError):
    """A mistake in an option or argument (``.option``, e.g. ``"--output-dir"`` or
    ``"k"``); the message is one line and names it (``str(e)`` is ``"<option> <message>"``, or
    ``message`` alone when it starts with the option)."""

    def __init__(self, option: Optional[str], message: str):
        self.option = option
        self.message = message
        super().__init__(message if not option or message.startswith(option)
                         else f"{option} {message}")
