"""The import graph of ``src/spared_tools``: no circles, no arrow from a lower layer to a higher one.

Every ``import`` / ``from ... import`` statement of every module is read with :mod:`ast` (also those
inside functions and under ``if TYPE_CHECKING:``: a lazy import is still an arrow), resolved to the
module it names, and checked against the layer table below, which ``docs/architecture.md`` shows too.
A module may import from its own layer or any layer below; the graph of modules has no cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "spared_tools"
PKG = "spared_tools"

#: Layers, lowest first: (layer name, top-level entries of ``spared_tools`` in it). "" is the package's
#: own ``__init__`` (``import spared_tools as sp``), which imports every namespace.
#: foundation: names, settings, checks, logging, docstring fragments, atomic writes (no AnnData logic);
#: _kernels: array code (never AnnData); models: tensors only (encoders, networks, training plans);
#: io / pp: AnnData readers and preprocessing; datasets: download + read + preprocess; tl: the models on
#: AnnData (train, predict, evaluate); pl: plots of what pp / tl wrote.
LAYERS: list[tuple[str, set[str]]] = [
    ("foundation", {"_keys", "_settings", "_validation", "_checks", "_logging", "_docs", "_atomic", "_heap"}),
    ("_kernels", {"_kernels"}),
    ("models", {"models"}),
    ("io / pp", {"io", "pp"}),
    ("datasets", {"datasets"}),
    ("tl", {"tl"}),
    ("pl", {"pl"}),
    ("package", {""}),
    (
        "cli",
        {"cli", "_cli_commands"},
    ),  # the command line: a front end on the public API (``import spared_tools as sp``)
]
RANK = {entry: rank for rank, (_, entries) in enumerate(LAYERS) for entry in entries}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _resolve(name: str) -> str | None:
    """The longest prefix of ``name`` that is a module of the package (``None`` outside it)."""
    parts = name.split(".")
    while parts:
        cand = ".".join(parts)
        if cand in MODULES:
            return cand
        parts.pop()
    return None


def _imports(module: str) -> Iterator[tuple[str, int]]:
    """(imported module of the package, line) for every import statement of ``module``."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _resolve(alias.name)
                if target:
                    yield target, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join([*base, node.module] if node.module else base)
            else:
                stem = node.module or ""
            if not (stem == PKG or stem.startswith(PKG + ".")):
                continue
            for alias in node.names:  # ``from . import io`` names a submodule; ``from .x import f`` does not
                target = _resolve(f"{stem}.{alias.name}") if f"{stem}.{alias.name}" in MODULES else None
                target = target or _resolve(stem)
                if target:
                    yield target, node.lineno


GRAPH: dict[str, set[str]] = {m: {t for t, _ in _imports(m) if t != m} for m in MODULES}


def _entry(module: str) -> str:
    """The top-level entry of ``spared_tools`` that holds ``module`` ("" for the package itself)."""
    return module.split(".")[1] if "." in module else ""


def _layer(module: str) -> int:
    return RANK[_entry(module)]


def test_every_module_has_a_layer():
    unknown = sorted({_entry(m) for m in MODULES} - set(RANK))
    assert not unknown, f"add {unknown} to LAYERS here and in docs/architecture.md"


def test_the_reader_sees_the_known_arrows():
    # the graph is read correctly: arrows that must be there (relative, absolute, package-level)
    assert "spared_tools._keys" in GRAPH["spared_tools._validation"]
    assert {"spared_tools.pp", "spared_tools.tl", "spared_tools.pl"} <= GRAPH["spared_tools"]
    assert "spared_tools.pp._tpm" in GRAPH["spared_tools.pp"]
    assert len(MODULES) > 50


# Arrows the redesign of tl/ and models/ (issue 18) removes; listed so that nothing else creeps in.
# Each entry must still be found (a fixed one is removed from here).
PENDING_UPWARD: set[tuple[str, str]] = set()
PENDING_CYCLES: set[frozenset[str]] = set()


def _upward() -> list[str]:
    out = []
    for module in sorted(MODULES):
        for target, line in sorted(set(_imports(module)), key=lambda t: t[1]):
            if _layer(target) > _layer(module) and (module, target) not in PENDING_UPWARD:
                src_layer, dst_layer = LAYERS[_layer(module)][0], LAYERS[_layer(target)][0]
                out.append(f"{module}:{line} ({src_layer}) imports {target} ({dst_layer})")
    return out


def test_no_arrow_points_up():
    upward = _upward()
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(GRAPH[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    cycles = [c for c in _cycles() if frozenset(c) not in PENDING_CYCLES]
    assert not cycles, "import circles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_pending_exemptions_are_still_needed():
    upward = {(m, t) for m in MODULES for t in GRAPH[m] if _layer(t) > _layer(m)}
    fixed = sorted(PENDING_UPWARD - upward) + sorted(
        map(sorted, PENDING_CYCLES - set(map(frozenset, _cycles())))
    )
    assert not fixed, f"fixed, remove from PENDING_UPWARD / PENDING_CYCLES: {fixed}"


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"a"}, "c": {"a"}}, [["a", "b"]]),
        ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"d"}}, [["a", "b", "c"]]),
    ],
)
def test_cycle_finder(monkeypatch, graph, expected):
    monkeypatch.setattr(f"{__name__}.GRAPH", graph)
    assert _cycles() == expected
