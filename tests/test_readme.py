"""Every snippet of the README (and of the docs pages it sends readers to) runs as pasted.

The rules, for a fenced block of one of these pages:

* a ``python`` block is executed (in-process, on the CPU, tiny shapes; the conftest has set
  ``TRITON_INTERPRET=1``, and CPU tensors take the torch backend);
* a ``bash`` block may only hold ``--help`` calls of the console scripts of
  ``pyproject.toml``; each must print its usage and exit with status 0;
* a block preceded by a ``<!-- not run: REASON -->`` line (needs a GPU, a model, the task's
  data, a long run) is skipped, with its reason;
* other languages (``text``, none: printed output) are not code.

An unmarked ``bash`` block that is not a ``--help`` call fails: mark it or make it one. The
README's test command must be the one ``.ci/run`` runs, and ``docs/api.md`` must be what
``docs/gen_api.py`` writes from the current docstrings.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import io
import os
import re
import shlex
import sys
from typing import Dict, List, Optional

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The pages whose code blocks must run: the README and the docs pages it sends readers to.
PAGES = ("README.md", "docs/loss.md", "docs/cli.md")
CODE = ("python", "bash")
NOT_RUN = re.compile(r"^<!--\s*not run:\s*(?P<reason>\S.*?)\s*-->$")
FENCE = re.compile(r"^(?P<fence>```+|~~~+)\s*(?P<lang>[\w+-]*)\s*$")


@dataclasses.dataclass
class Block:
    """One fenced code block: its language, text, first line of code (1-based) and, when
    a ``<!-- not run: ... -->`` line precedes it, the reason it is not run."""

    lang: str
    code: str
    line: int
    skip: Optional[str] = None


def extract(text: str) -> List[Block]:
    """The fenced blocks of a markdown text, in order (an unclosed fence is an error)."""
    lines = text.split("\n")
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        close = m.group("fence")
        j = i + 1
        while j < len(lines) and lines[j].strip() != close:
            j += 1
        if j == len(lines):
            raise ValueError(f"line {i + 1}: the code block is never closed")
        prev = i - 1  # the marker: the last non-blank line before the fence
        while prev >= 0 and not lines[prev].strip():
            prev -= 1
        marker = NOT_RUN.match(lines[prev].strip()) if prev >= 0 else None
        blocks.append(Block(m.group("lang").lower(), "\n".join(lines[i + 1:j]), i + 2,
                            marker.group("reason") if marker else None))
        i = j + 1
    return blocks


def console_scripts() -> Dict[str, str]:
    """``{script name: "module:function"}`` from ``[project.scripts]`` of pyproject.toml."""
    text = open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8").read()
    section = re.search(r"^\[project\.scripts\]\s*$(.*?)(?=^\[|\Z)", text, re.M | re.S)
    assert section, "pyproject.toml has no [project.scripts]"
    return dict(re.findall(r'^\s*([\w.-]+)\s*=\s*"([\w.:]+)"', section.group(1), re.M))


def run_python(block: Block, where: str = "README.md") -> dict:
    """Execute a python block in a fresh namespace; its exceptions propagate. A traceback names
    ``where:line`` of the markdown page."""
    code = compile("\n" * (block.line - 1) + block.code, where, "exec")
    namespace = {"__name__": "__snippet__"}
    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):
        exec(code, namespace)
    return namespace


def help_calls(block: Block, scripts: Dict[str, str]) -> List[List[str]]:
    """The argv of each ``--help`` call of a bash block; AssertionError for any other line."""
    calls = []
    for n, line in enumerate(block.code.split("\n"), block.line):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        argv = shlex.split(line)
        assert argv[0] in scripts and argv[-1] == "--help" and "--help" not in argv[1:-1], (
            f"line {n}: {line!r} is not a `palu-xxx [subcommand] --help` call of a console "
            f"script of pyproject.toml ({', '.join(sorted(scripts))}): precede the block "
            "with `<!-- not run: REASON -->` or make it one")
        calls.append(argv)
    return calls


def run_help(argv: List[str], scripts: Dict[str, str]) -> str:
    """Call the console script's entry point with ``argv[1:]`` (in-process, as the installed
    script would); it must exit with status 0 and print a usage. Returns what it printed."""
    module, _, function = scripts[argv[0]].partition(":")
    main = getattr(importlib.import_module(module), function)
    out = io.StringIO()
    status = None
    with contextlib.redirect_stdout(out):
        try:
            status = main(argv[1:])
        except SystemExit as e:
            status = e.code
    assert status in (0, None), f"{' '.join(argv)} exited with status {status!r}"
    assert out.getvalue().lstrip().startswith("usage:"), (
        f"{' '.join(argv)} printed no usage:\n{out.getvalue()[:500]}")
    return out.getvalue()


def check_block(block: Block, where: str, scripts: Dict[str, str]) -> None:
    """Run one block by the rules of this module (a skipped block is not called here)."""
    if block.lang == "python":
        run_python(block, where)
    elif block.lang == "bash":
        for argv in help_calls(block, scripts):
            run_help(argv, scripts)


def _page_blocks():
    out = []
    for page in PAGES:
        path = os.path.join(ROOT, page)
        if not os.path.exists(path):
            continue
        for b in extract(open(path, encoding="utf-8").read()):
            if b.lang in CODE:
                out.append(pytest.param(page, b, id=f"{page}:{b.line}"))
    return out


@pytest.mark.parametrize("page,block", _page_blocks())
def test_snippet_runs(page, block):
    if block.skip:
        pytest.skip(f"marked not run: {block.skip}")
    if block.lang == "bash":
        pytest.importorskip("transformers")  # the command lines need the train extra
    check_block(block, page, console_scripts())


def test_readme_has_runnable_snippets():
    """The README's loss snippet and its help calls run (not all marked away)."""
    blocks = extract(open(os.path.join(ROOT, "README.md"), encoding="utf-8").read())
    run = [b for b in blocks if b.lang in CODE and not b.skip]
    assert any(b.lang == "python" for b in run)
    helps = [argv for b in run if b.lang == "bash" for argv in help_calls(b, console_scripts())]
    assert {argv[0] for argv in helps} == set(console_scripts()), "a CLI without a --help line"


def test_readme_test_command_is_what_ci_runs():
    """``.ci/run`` runs exactly the README's test command."""
    ci = os.path.join(ROOT, ".ci", "run")
    if not os.path.exists(ci):
        pytest.skip(".ci/run is absent")
    commands = [ln.strip() for ln in open(ci, encoding="utf-8")
                if ln.strip() and not ln.lstrip().startswith("#")
                and not re.match(r"(set|cd)\s", ln.strip())]
    assert len(commands) == 1, commands
    readme = extract(open(os.path.join(ROOT, "README.md"), encoding="utf-8").read())
    tests = [b.code.strip() for b in readme if b.lang == "bash" and "pytest" in b.code]
    assert tests == [commands[0]]


def test_api_page_is_current():
    """``docs/api.md`` is what ``python docs/gen_api.py`` writes now."""
    pytest.importorskip("transformers")
    sys.path.insert(0, os.path.join(ROOT, "docs"))
    try:
        gen_api = importlib.import_module("gen_api")
    finally:
        sys.path.remove(os.path.join(ROOT, "docs"))
    with open(os.path.join(ROOT, "docs", "api.md"), encoding="utf-8") as f:
        committed = f.read()
    assert committed == gen_api.render(), "docs/api.md is stale: run python docs/gen_api.py"


# --- the checker itself fails on broken snippets --------------------------------------------

PLANTED = '''# A page

```python
x = 1
```

<!-- not run: needs a GPU -->
```bash
palu-unlearn --model big --output-dir out
```

```text
printed output, not code
```

```python
y = undefined_name + 1
```

```bash
palu-unlearn --model m --forget f.json --output-dir out
```

```bash
palu-nosuch --help
```

```bash
palu-broken --help
```
'''


def _broken_main(argv=None):
    print("usage: palu-broken")
    raise SystemExit(2)


def _silent_main(argv=None):
    return 0


FAKE_SCRIPTS = {"palu-unlearn": "palu_kernels.cli.unlearn:main",
                "palu-broken": f"{__name__}:_broken_main",
                "palu-silent": f"{__name__}:_silent_main"}


def test_extract_finds_blocks_markers_and_lines():
    blocks = extract(PLANTED)
    assert [(b.lang, b.line, b.skip) for b in blocks] == [
        ("python", 4, None), ("bash", 9, "needs a GPU"), ("text", 13, None),
        ("python", 17, None), ("bash", 21, None), ("bash", 25, None), ("bash", 29, None)]
    assert blocks[0].code == "x = 1"
    with pytest.raises(ValueError, match="never closed"):
        extract("```python\nx = 1\n")


def test_a_broken_python_snippet_fails_with_its_line():
    blocks = extract(PLANTED)
    assert run_python(blocks[0])["x"] == 1
    with pytest.raises(NameError, match="undefined_name") as e:
        run_python(blocks[3], "PAGE.md")
    tb = e.tb
    while tb.tb_next is not None:
        tb = tb.tb_next
    assert (tb.tb_frame.f_code.co_filename, tb.tb_lineno) == ("PAGE.md", 17)


def test_an_unmarked_command_that_is_not_help_fails():
    blocks = extract(PLANTED)
    with pytest.raises(AssertionError, match="line 21: .* is not a"):
        help_calls(blocks[4], FAKE_SCRIPTS)
    with pytest.raises(AssertionError, match="palu-nosuch"):  # not a console script
        help_calls(blocks[5], FAKE_SCRIPTS)


def test_a_help_call_that_exits_nonzero_or_prints_no_usage_fails():
    blocks = extract(PLANTED)
    assert help_calls(blocks[6], FAKE_SCRIPTS) == [["palu-broken", "--help"]]
    with pytest.raises(AssertionError, match="exited with status 2"):
        check_block(blocks[6], "PAGE.md", FAKE_SCRIPTS)
    with pytest.raises(AssertionError, match="printed no usage"):
        run_help(["palu-silent", "--help"], FAKE_SCRIPTS)
