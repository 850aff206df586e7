"""Only ``palu_kernels/cli/`` speaks the command line's language.

Below ``cli/`` a mistake is a :class:`palu_kernels.errors.UsageError` naming the argument
(``first_n``), never ``SystemExit`` (a library call must not end its caller's process) and
never a flag spelling (``"--first-n"``); ``cli/`` maps names to flags
(:func:`palu_kernels.cli._errors.flag_of`). Walks every module with ``ast``.
"""

import ast
import os
import re

import pytest

import palu_kernels
from palu_kernels.cli._errors import cli_text, flag_of, in_flags
from palu_kernels.errors import UsageError

ROOT = os.path.dirname(palu_kernels.__file__)
# "--first-n ...", "palu-unlearn demo: --k ..."; not a markdown rule or a "--" line style
FLAG = re.compile(r"(?:palu-[\w ]+: )?--[A-Za-z]")


def cli_vocabulary(source: str, filename: str = "<string>") -> list:
    """``"line: what"`` (sorted by line) for every ``SystemExit`` name and every string
    constant that starts with a flag (``"--x..."``, also after a ``"palu-xxx: "`` prefix;
    f-string pieces included) in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Name) and node.id == "SystemExit":
            found.append(f"{node.lineno}: SystemExit")
        elif (isinstance(node, ast.Attribute) and node.attr == "SystemExit"):
            found.append(f"{node.lineno}: SystemExit")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and FLAG.match(node.value):
            found.append(f"{node.lineno}: {node.value[:40]!r}")
    return sorted(found, key=lambda s: int(s.split(":")[0]))


def test_the_checker_finds_planted_violations():
    planted = '''
import builtins
def f(n, x):
    if n < 1:
        raise SystemExit(f"palu-x: --first-n must be >= 1, got {n}")
    raise builtins.SystemExit(2)
FLAGS = ("--k", "-x")
msg = f"{x}--lr is bad"
'''
    found = cli_vocabulary(planted)
    assert found == ["5: SystemExit", "5: 'palu-x: --first-n must be >= 1, got '",
                     "6: SystemExit", "7: '--k'", "8: '--lr is bad'"], found
    clean = '''
from palu_kernels.errors import UsageError
def f(n):
    if n < 1:
        raise UsageError("first_n", f"must be >= 1, got {n}")
    return "|" + "---|" * 3, dict(ls="--")
'''
    assert cli_vocabulary(clean) == []


def test_no_system_exit_and_no_flag_below_cli():
    bad = []
    for dirpath, _, files in os.walk(ROOT):
        if os.path.relpath(dirpath, ROOT).split(os.sep)[0] == "cli":
            continue
        for f in sorted(files):
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                with open(path, encoding="utf-8") as fh:
                    bad += [f"{os.path.relpath(path, ROOT)}:{hit}"
                            for hit in cli_vocabulary(fh.read(), path)]
    assert not bad, "command-line vocabulary below palu_kernels/cli/:\n" + "\n".join(bad)


@pytest.mark.parametrize("option, message, library, cli", [
    ("first_n", "must be >= 1, got 0", "first_n must be >= 1, got 0",
     "--first-n must be >= 1, got 0"),
    ("output_dir", "'o' is not empty; pass `resume=True` or `overwrite=True`",
     "output_dir 'o' is not empty; pass `resume=True` or `overwrite=True`",
     "--output-dir 'o' is not empty; pass --resume or --overwrite"),
    ("methods", "methods: unknown method(s) ['x']", "methods: unknown method(s) ['x']",
     "--methods: unknown method(s) ['x']"),
    ("n", "3: verbmem has only 2 items", "n 3: verbmem has only 2 items",
     "--passages 3: verbmem has only 2 items"),  # a flag whose name differs from the field
    (None, "pass `spans=text`; `first_n=3`, `lora_r`", "pass `spans=text`; `first_n=3`, `lora_r`",
     "pass --spans text; --first-n 3, --lora-r"),
    ("k", "keeps nothing", "k keeps nothing", "--k keeps nothing"),  # "k" is not "keeps"
])
def test_the_library_names_arguments_and_the_cli_names_flags(option, message, library, cli):
    e = UsageError(option, message)
    assert str(e) == library
    assert cli_text(e) == cli


def test_flag_of_and_in_flags():
    assert flag_of("first_n") == "--first-n" and flag_of("--k") == "--k"
    assert flag_of("n") == "--passages"
    assert in_flags("use `backend=torch` or `overwrite=True`") == "use --backend torch or --overwrite"
