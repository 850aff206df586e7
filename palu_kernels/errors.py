"""The project's usage error (core layer; ``docs/reliability.md``).

Below ``cli/`` a bad value, a bad file or a state that forbids the work (an output directory
in use by another run, a checkpoint of another run) raises :class:`UsageError`, naming the
argument (the field or keyword name, e.g. ``output_dir``) in ``.option``; a message that
mentions another argument writes it in backticks, ``` `overwrite=True` ``` or ``` `lora_r` ```.
Only ``cli/`` turns it into one line on stderr and exit status 2, naming the command-line
flags instead (:func:`palu_kernels.cli._errors.run_cli`); library callers catch it as the
``ValueError`` it is.
"""

from __future__ import annotations

from typing import Optional

__all__ = ["UsageError", "starts_with_option"]


def starts_with_option(message: str, option: Optional[str]) -> bool:
    """Whether ``message`` begins with the word ``option`` (``"k must ..."`` does for ``k``,
    ``"keeps ..."`` does not)."""
    if not option or not message.startswith(option):
        return False
    rest = message[len(option):]
    return not rest or not (rest[0].isalnum() or rest[0] in "_-")


class UsageError(ValueError):
    """A mistake in an option or argument (``.option``, e.g. ``"output_dir"`` or ``"k"``);
    the message is one line and names it (``str(e)`` is ``"<option> <message>"``, or
    ``message`` alone when it starts with the option)."""

    def __init__(self, option: Optional[str], message: str):
        self.option = option
        self.message = message
        super().__init__(message if not option or starts_with_option(message, option)
                         else f"{option} {message}")
