"""The import graph of the sidecar package has no cycle.

A cycle (``metrics`` importing the store while ``store/metered.py`` imports ``metrics``) works only as long as
the import order happens to suit it, and it ties layers together that the README draws apart. Only imports
that run when a module loads count: those at module level, not under ``if TYPE_CHECKING:``, not in functions.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[2] / "sidecar"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE_ROOT.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _load_time_statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    for statement in body:
        yield statement
        if isinstance(statement, ast.If):
            if not _is_type_checking(statement.test):
                yield from _load_time_statements(statement.body)
            yield from _load_time_statements(statement.orelse)
        elif isinstance(statement, ast.Try):
            for block in (statement.body, statement.orelse, statement.finalbody):
                yield from _load_time_statements(block)
            for handler in statement.handlers:
                yield from _load_time_statements(handler.body)


def _with_parents(name: str, importer: str, known: dict[str, Path]) -> set[str]:
    """``name`` and the packages above it (importing a.b.c runs a and a.b first), except the importer's own
    packages: those are already loading when it runs, so reaching them again through a sibling is no cycle."""
    parts = name.split(".")
    parents = {".".join(parts[:i]) for i in range(1, len(parts))}
    own = {".".join(importer.split(".")[:i]) for i in range(1, importer.count(".") + 1)}
    return ({name} | (parents - own)) & set(known)


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for statement in _load_time_statements(tree.body):
        if isinstance(statement, ast.Import):
            for alias in statement.names:
                found |= _with_parents(alias.name, name, known)
        elif isinstance(statement, ast.ImportFrom):
            if statement.level:
                base = package.split(".")
                base = base[: len(base) - statement.level + 1]
                target = ".".join([*base, statement.module] if statement.module else base)
            else:
                target = statement.module or ""
            found |= _with_parents(target, name, known)
            for alias in statement.names:
                found |= _with_parents(f"{target}.{alias.name}", name, known)
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    known = all_modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for succ in edges:
                if succ not in index:
                    index[succ] = low[succ] = len(index)
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph[succ]))))
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_the_sidecar_package_has_no_import_cycle() -> None:
    graph = import_graph()
    assert len(graph) > 50, "the scan found too few modules to mean anything"
    assert cycles(graph) == []


def test_metrics_does_not_import_the_store() -> None:
    assert not any(name.startswith("sidecar.store") for name in import_graph()["sidecar.metrics"])


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]


def test_the_scan_reads_relative_and_submodule_imports(tmp_path: Path) -> None:
    names = ("sidecar", "sidecar.x", "sidecar.x.y", "sidecar.z", "sidecar.typing_only", "sidecar.lazy")
    known = dict.fromkeys(names, tmp_path)
    module = tmp_path / "z.py"
    module.write_text(
        "from typing import TYPE_CHECKING\nfrom .x import y\nif TYPE_CHECKING:\n    import sidecar.typing_only\n"
        "def later():\n    import sidecar.lazy\n",
        encoding="utf-8",
    )
    assert imports_of("sidecar.z", module, known) == {"sidecar.x", "sidecar.x.y"}
