"""The layering of docs/architecture.md, checked on the source: every ``import`` of every module
(top-level and inside functions, parsed with ``ast``, nothing imported) must go from a layer to the
same or a lower one, no library module may import a command-line module, and no two modules may
import each other (directly or through others)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"

# Lowest first. A module belongs to the layer of its longest matching prefix; "sumrl" alone is the
# package's __init__ (the version). Same as docs/architecture.md ("Layers").
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("core", ("sumrl", "sumrl.errors", "sumrl.config", "sumrl.utils", "sumrl.recipes")),
    ("data", ("sumrl.data",)),
    ("models", ("sumrl.models",)),
    ("generation", ("sumrl.generation",)),
    ("evaluation", ("sumrl.evaluation",)),
    ("rewards", ("sumrl.rewards",)),
    ("training", ("sumrl.training",)),
    ("rl", ("sumrl.rl",)),
    ("report", ("sumrl.report",)),
    ("human", ("sumrl.human",)),
    ("demo", ("sumrl.demo",)),
]
# Command-line modules only parse arguments and call the library: they sit above every layer and
# only command-line modules import them (the ``sumrl`` entry point imports them by name).
CLI_MODULES = ("sumrl.cli", "sumrl.rewards.judge_cli")
# Imports that the layer order alone would allow but that would couple two peers.
FORBIDDEN = [
    ("sumrl.rl", "sumrl.training.sft", "RL shares training pieces through sumrl.training.common, not the SFT engine"),
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((SRC / "sumrl").rglob("*.py"))}


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported sumrl module, line) for every import statement of the module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from pkg import sub` imports the module pkg.sub; `from mod import name` imports mod
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]
        else:
            continue
        for t in targets:
            if t == "sumrl" or t.startswith("sumrl."):
                while t not in modules and "." in t:
                    t = t.rpartition(".")[0]
                if t != name:
                    out.append((t, node.lineno))
    return out


def _is_cli(name: str) -> bool:
    return name in CLI_MODULES or name.endswith(".cli")


def _layer(name: str) -> int:
    best, rank = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (name == p or (p != "sumrl" and name.startswith(p + "."))) and len(p) > best:
                best, rank = len(p), i
    if rank is None:
        raise AssertionError(f"{name}: in no layer of tests/test_layering.py (add it, and to docs/architecture.md)")
    return rank


def _graph() -> dict[str, list[tuple[str, int]]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_every_module_is_in_a_layer():
    for name in _modules():
        if not _is_cli(name):
            _layer(name)


def test_no_lower_layer_imports_a_higher_one_and_nothing_imports_a_cli():
    bad = []
    for name, imports in _graph().items():
        for target, line in imports:
            where = f"{name} (line {line}) imports {target}"
            if _is_cli(target) and not _is_cli(name):
                bad.append(f"{where}: a command-line module (CLIs only parse; import the library it calls)")
            elif not _is_cli(name) and not _is_cli(target) and _layer(target) > _layer(name):
                bad.append(f"{where}: {LAYERS[_layer(name)][0]} is below {LAYERS[_layer(target)][0]}")
            for src, dst, why in FORBIDDEN:
                if (name == src or name.startswith(src + ".")) and (target == dst or target.startswith(dst + ".")):
                    bad.append(f"{where}: {why}")
    assert not bad, "\n".join(bad)


def test_no_module_imports_another_modules_private_name():
    """A name starting with ``_`` is its module's own; another module that needs it gets a public name."""
    bad = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sumrl"):
                bad += [f"{name} (line {node.lineno}): {node.module}.{a.name}" for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")]
    assert not bad, "\n".join(bad)


def _cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, it = work[-1]
            for nxt in it:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(graph.get(nxt, []))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        m = stack.pop()
                        on_stack.discard(m)
                        comp.append(m)
                        if m == node:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def test_no_import_cycles():
    graph = {name: sorted({t for t, _ in imports}) for name, imports in _graph().items()}
    assert _cycles(graph) == []


def test_cycle_finder_finds_a_cycle():
    """The checks above can fail: a two-module and a three-module cycle are found, a chain is not."""
    assert _cycles({"a": ["b"], "b": ["a"], "c": []}) == [["a", "b"]]
    assert _cycles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c"]]
    assert _cycles({"a": ["b"], "b": ["c"], "c": []}) == []


@pytest.mark.parametrize("name,target,ok", [
    ("sumrl.data.loaders", "sumrl.models.loading", False),
    ("sumrl.rl.trainer", "sumrl.training.optim", True),
    ("sumrl.evaluation.harness", "sumrl.rewards.base", False),
    ("sumrl.report.build", "sumrl.evaluation.harness", True),
])
def test_layer_order_examples(name, target, ok):
    assert (_layer(target) <= _layer(name)) is ok


def _listed_in_doc(doc: str) -> set[str]:
    """The files of the ``src/sumrl/`` tree in docs/architecture.md's "Files" block: an entry is a
    line whose first word (indented less than the description column) is a name ending in ``.py``
    or ``/``; a folder entry opens the folder for the deeper entries below it."""
    import re

    block = doc.split("## Files", 1)[1].split("```", 2)[1]
    listed: set[str] = set()
    stack: list[tuple[int, str]] = []  # (indent, folder) of the open folders
    in_src = False
    for line in block.splitlines():
        m = re.match(r"^( *)(\S+?(?:\.py|/))(?:\s|$)", line)
        if not m or len(m.group(1)) >= 12:  # a description line, not an entry
            continue
        indent, name = len(m.group(1)), m.group(2)
        if indent == 0:
            in_src = name == "src/sumrl/"
            stack = []
            continue
        if not in_src:
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = "".join(f for _, f in stack) + name
        if name.endswith("/"):
            stack.append((indent, name))
        else:
            listed.add(path)
    return listed


def _tree() -> set[str]:
    """Every module of the package, subpackage ``__init__.py`` files only where they define something."""
    out = set()
    for p in (SRC / "sumrl").rglob("*.py"):
        rel = p.relative_to(SRC / "sumrl").as_posix()
        if p.name == "__init__.py" and rel != "__init__.py":
            tree = ast.parse(p.read_text(encoding="utf-8"))
            if not any(isinstance(n, (ast.FunctionDef, ast.ClassDef)) for n in tree.body):
                continue  # a package marker or re-exports: nothing to describe
        out.add(rel)
    return out


def test_architecture_doc_matches_the_tree_file_by_file():
    """docs/architecture.md lists src/sumrl file by file: a new module must be added there, and a
    removed or renamed one taken out."""
    listed = _listed_in_doc((SRC.parent / "docs" / "architecture.md").read_text(encoding="utf-8"))
    tree = _tree()
    assert not tree - listed, f"modules missing from docs/architecture.md: {sorted(tree - listed)}"
    assert not listed - tree, f"docs/architecture.md lists files that do not exist: {sorted(listed - tree)}"


def test_doc_tree_parser_reads_nesting_and_skips_descriptions():
    doc = """## Files

```
src/sumrl/
  a.py              about a.py and b.py:
                    c.py is named in a description only
  utils/x.py        a file in a folder, named with its folder
  pkg/
    b.py            b
    sub/
      d.py          d
  e.py
recipes/            not the package
  f.py
```
"""
    assert _listed_in_doc(doc) == {"a.py", "utils/x.py", "pkg/b.py", "pkg/sub/d.py", "e.py"}
