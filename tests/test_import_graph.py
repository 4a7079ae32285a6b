"""`etl/` has no import cycle, deferred imports inside functions included (a deferred import is
how a cycle hides: delta_commits and table_datasink imported each other that way)."""

import ast
from pathlib import Path

ETL = Path(__file__).resolve().parents[1] / "etl"


def import_graph(root: Path) -> dict[str, set[str]]:
    modules = {".".join(f.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__"): f
               for f in root.rglob("*.py")}
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            else:
                continue
            # a module importing its own package (or the package its re-exports) is not a cycle
            graph[name] |= {t for t in targets if t in modules and t != name and not name.startswith(t + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_etl_has_no_import_cycle():
    graph = import_graph(ETL)
    assert "etl.stages.write" in graph and "etl.sinks.bucket_files" in graph["etl.stages.write"]
    assert cycles(graph) == []


def test_a_cycle_through_a_deferred_import_is_found(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.b import g\n")
    (package / "b.py").write_text("def g():\n    from pkg.a import f\n")
    assert cycles(import_graph(package)) == [["pkg.a", "pkg.b"]]
