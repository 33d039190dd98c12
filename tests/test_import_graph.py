"""The import graph of src/memla: no cycles between modules, and the package layering of DESIGN.md.

A helper that two packages need lives in the lower one under a public name: no package
imports another's ``_private`` module or name.

Every ``import memla...`` / ``from memla... import ...`` counts, at module level or inside a
function, guarded for an optional dependency or not: a lazy import still ties the two
modules together.  Parsed with `ast`; nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# Lowest first.  A module may import its own package and the units of lower layers only
# (siblings in one layer do not import each other).
LAYERS: tuple[frozenset[str], ...] = tuple(map(frozenset, (
    {"memla.errors"},
    {"memla.atomic", "memla.devices", "memla.gguf", "memla.hub", "memla.outputs"},
    {"memla.langs", "memla.config", "memla.hooks", "memla.models", "memla.seeding"},
    {"memla", "memla.tokens", "memla.data"},  # memla: __version__ and the lazy re-export of models
    {"memla.neurons", "memla.build", "memla.samples"},
    {"memla.editors"},
    {"memla.evaluate"},
    {"memla.report", "memla.compare"},
    {"memla.explore"},
    {"memla.cli"},
    {"memla.__main__"},
)))
RANK = {unit: rank for rank, layer in enumerate(LAYERS) for unit in layer}


def module_files() -> dict[str, Path]:
    """Every module under src/memla by dotted name (a package by its own name)."""
    out = {}
    for path in sorted((SRC / "memla").rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports() -> list[tuple[str, str, str | None, int]]:
    """Every import of a memla module: ``(importer, imported module, imported name or None, line)``.

    ``from memla.a import b`` imports the module ``memla.a.b`` when there is one (name None),
    else the name ``b`` of ``memla.a``.
    """
    modules = module_files()

    def known(name: str) -> str:
        while name not in modules:
            name = name.rpartition(".")[0]
        return name

    out = []
    for mod, path in modules.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [(a.name, None) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [(f"{base}.{a.name}", None) if f"{base}.{a.name}" in modules else (base, a.name)
                           for a in node.names]
            else:
                continue
            out += [(mod, known(target), name, node.lineno) for target, name in targets
                    if target == "memla" or target.startswith("memla.")]
    return out


def import_graph() -> dict[str, dict[str, int]]:
    """``{module: {imported memla module: line of the first such import}}``."""
    graph: dict[str, dict[str, int]] = {mod: {} for mod in module_files()}
    for mod, target, _, line in imports():
        if target != mod:
            graph[mod].setdefault(target, line)
    return graph


def unit(module: str) -> str:
    """The layering unit of a module: its top-level package or module (``memla.evaluate``)."""
    return ".".join(module.split(".")[:2])


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle (first node repeated at the end) per strongly connected component of two or more modules."""
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    comps: list[set[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        order[v] = low[v] = len(order)
        stack.append(v)
        for w in graph[v]:
            if w not in order:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], order[w])
        if low[v] == order[v]:
            comp = set()
            while True:
                w = stack.pop()
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(comp)

    for v in sorted(graph):
        if v not in order:
            visit(v)
    out = []
    for comp in comps:  # walk inside the component until a module repeats
        path = [min(comp)]
        while path.count(path[-1]) < 2:
            path.append(min(w for w in graph[path[-1]] if w in comp))
        out.append(path[path.index(path[-1]):])
    return out


def test_every_unit_has_a_layer():
    assert {unit(m) for m in module_files()} <= set(RANK)


def test_no_import_cycles():
    graph = import_graph()
    found = cycles(graph)
    lines = [" -> ".join(f"{a}:{graph[a][b]}" for a, b in zip(c, c[1:])) + f" -> {c[-1]}" for c in found]
    assert not found, "import cycles (module:line of its import of the next):\n" + "\n".join(lines)


def test_imports_point_down_the_layers():
    wrong = [
        f"{mod} (line {line}) imports {target}"
        for mod, edges in import_graph().items()
        for target, line in edges.items()
        if unit(mod) != unit(target) and RANK[unit(target)] >= RANK[unit(mod)]
    ]
    assert not wrong, "imports against DESIGN.md's layering:\n" + "\n".join(wrong)


def test_no_private_imports_across_units():
    def private(name: str | None) -> bool:
        return name is not None and name.startswith("_") and not name.startswith("__")

    wrong = [
        f"{mod} (line {line}) imports {target}{'' if name is None else '.' + name}"
        for mod, target, name, line in imports()
        if unit(mod) != unit(target) and (private(name) or any(map(private, target.split("."))))
    ]
    assert not wrong, "private names imported from another package (DESIGN.md, Layout):\n" + "\n".join(wrong)
