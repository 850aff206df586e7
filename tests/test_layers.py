"""The application's layers point one way:
core <- io <- spans <- train <- eval <- experiments <- demo <- cli.

Walks every module of ``palu_kernels`` with ``ast`` (module-level and function-level imports,
absolute and relative) and fails on an import from a lower layer to a higher one and on any
import circle between modules. A module's layer is its package under ``palu_kernels`` (no
table of exceptions): ``io`` reads records and loads models, ``spans`` finds sensitive spans
with them, ``train`` runs jobs (``palu-unlearn --spans`` calls ``spans``).
"""

import ast
import os

import palu_kernels

ROOT = os.path.dirname(palu_kernels.__file__)
LAYERS = ("core", "io", "spans", "train", "eval", "experiments", "demo", "cli")
RANK = {name: i for i, name in enumerate(LAYERS)}


def layer(module: str) -> str:
    """``palu_kernels.train.job`` -> ``train``; anything not in a listed package is core."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in RANK and parts[1] != "core" else "core"


def modules() -> dict:
    """``{module name: (path, is_package)}`` of every ``.py`` file under palu_kernels."""
    out = {}
    for dirpath, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(dirpath, f), os.path.dirname(ROOT))
                parts = rel[:-3].split(os.sep)
                pkg = parts[-1] == "__init__"
                if pkg:
                    parts = parts[:-1]
                out[".".join(parts)] = (os.path.join(dirpath, f), pkg)
    return out


def imports(name: str, path: str, is_pkg: bool, known) -> set:
    """The palu_kernels modules ``name`` imports (anywhere in the file)."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    package = name if is_pkg else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        for t in targets:
            if not t.startswith("palu_kernels"):
                continue
            # the longest known module the name refers to
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def graph() -> dict:
    mods = modules()
    return {name: imports(name, path, pkg, mods) for name, (path, pkg) in mods.items()}


def upward(g: dict) -> list:
    """``"a (layer) imports b (layer)"`` for every import of ``g`` that points up."""
    return [f"{a} ({layer(a)}) imports {b} ({layer(b)})"
            for a, targets in g.items() for b in sorted(targets)
            if RANK[layer(b)] > RANK[layer(a)]]


def test_no_upward_import():
    bad = upward(graph())
    assert not bad, "imports from a lower layer to a higher one:\n" + "\n".join(bad)


def test_upward_finds_a_planted_import_and_spans_is_its_own_floor():
    g = graph()
    planted = {**g, "palu_kernels.spans.find": g["palu_kernels.spans.find"]
               | {"palu_kernels.train.job"}}
    assert upward(planted) == ["palu_kernels.spans.find (spans) imports palu_kernels.train.job "
                               "(train)"]
    # spans reads through io and is called by train.job: the floor between them is in use
    assert layer("palu_kernels.spans.find") == "spans"
    assert any(layer(b) == "io" for a, t in g.items() if layer(a) == "spans" for b in t)
    assert "palu_kernels.spans" in g["palu_kernels.train.job"]


def _is_package_init_of(a: str, b: str) -> bool:
    return b.startswith(a + ".")


def test_no_import_circle():
    g = graph()
    # a package's __init__ importing its own submodules is not a circle through the package
    edges = {a: {b for b in t if not _is_package_init_of(a, b) and not _is_package_init_of(b, a)}
             for a, t in g.items()}
    state, stack, cycles = {}, [], []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                cycles.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(edges):
        if n not in state:
            visit(n)
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_only_cli_parses_argv():
    offenders = []
    for name, (path, _) in modules().items():
        if layer(name) != "cli" and "argparse" in open(path, encoding="utf-8").read():
            offenders.append(name)
    assert not offenders, f"argv parsed outside palu_kernels.cli: {offenders}"

