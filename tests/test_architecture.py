"""The structure is a checked contract: no import circles, one service registry.

The layer contracts themselves are import-linter's (``make lint``, pyproject.toml);
these are the rules it cannot state.
"""

from __future__ import annotations

import re
from pathlib import Path

import grimp

SSO = Path(__file__).resolve().parent.parent / "sso"


def _strongly_connected(graph: grimp.ImportGraph) -> list[list[str]]:
    """Tarjan's algorithm, iterative: every group of modules that import each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    counter = 0
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append(
                        (child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    return groups


def test_no_import_circles_in_sso():
    # Function-level imports count: a lazy import only hides a circle, it does not break it.
    graph = grimp.build_graph("sso", exclude_type_checking_imports=True, cache_dir=None)
    assert len(graph.modules) > 40  # the whole package was read
    assert _strongly_connected(graph) == []


def test_the_cycle_finder_finds_cycles():
    graph = grimp.ImportGraph()
    for name in ("a", "b", "c", "d"):
        graph.add_module(name)
    graph.add_import(importer="a", imported="b")
    graph.add_import(importer="b", imported="c")
    graph.add_import(importer="c", imported="a")
    graph.add_import(importer="c", imported="d")
    assert _strongly_connected(graph) == [["a", "b", "c"]]


def test_services_are_found_through_the_registry_only():
    """No ``current_app.extensions["keycard...`` lookups: views ask ``registry()``."""
    lookup = re.compile(r"""extensions(\.(get|setdefault|pop|update))?[\[(]\s*["']keycard""")
    offenders = [
        f"{path.relative_to(SSO.parent)}:{number}"
        for folder in (SSO, SSO.parent / "tests", SSO.parent / "bench")
        for path in sorted(folder.rglob("*.py"))
        if path.name != "test_architecture.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if lookup.search(line)
    ]
    assert offenders == []
    assert "extensions[EXTENSION]" in (SSO / "registry.py").read_text()
