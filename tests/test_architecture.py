"""The layout's rules, checked on the source: services never import the UI, no import cycle,
no oversized module (see docs/DEVELOPING.md)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("services", "components", "pages")
MAX_LINES = 500


def _python_files() -> list[Path]:
    skip = {".venv", ".git", "node_modules", "build", "dist"}
    return sorted(p for p in ROOT.rglob("*.py") if not skip & set(p.relative_to(ROOT).parts))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Modules imported anywhere in the file (function bodies included), except under
    `if TYPE_CHECKING:`; `from a.b import c` counts as a.b.c when that is a module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    type_only = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_only |= {id(n) for n in ast.walk(node)}
    out = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def _project_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in _python_files() if p.relative_to(ROOT).parts[0] in PACKAGES}
    graph = {}
    for name, path in files.items():
        deps = set()
        for imp in _imports(path):
            # the module itself, else its closest enclosing project module
            while imp and imp not in files:
                imp = imp.rpartition(".")[0]
            if imp and imp != name and not name.startswith(imp + "."):
                deps.add(imp)
        graph[name] = deps
    return graph


def test_services_never_import_streamlit_or_components():
    offenders = []
    for path in _python_files():
        if path.relative_to(ROOT).parts[0] != "services":
            continue
        bad = {i for i in _imports(path) if i.split(".")[0] in ("streamlit", "components", "pages")}
        if bad:
            offenders.append(f"{path.relative_to(ROOT)}: {', '.join(sorted(bad))}")
    assert not offenders, "services/ must not depend on the UI:\n" + "\n".join(offenders)


# services' layers, lowest first: a layer imports only layers below it (and itself)
LAYERS = ["services.config", "services.jsonable", "services.data", "services.retrieval",
          "services.generation", "services.evaluation", "services.reporting", "services.cli"]


def test_service_layers_point_one_way():
    graph = _project_graph()
    rank = {name: i for i, name in enumerate(LAYERS)}

    def layer(module: str) -> str | None:
        return next((lay for lay in LAYERS if module == lay or module.startswith(lay + ".")), None)

    upward = []
    for module, deps in graph.items():
        own = layer(module)
        for dep in deps:
            other = layer(dep)
            if own and other and rank[other] > rank[own]:
                upward.append(f"{module} -> {dep}")
    assert not upward, "a lower layer imports a higher one:\n" + "\n".join(sorted(upward))
    assert "services.data.trial" in graph["services.generation.base"]   # the walk sees real edges


def test_components_hold_no_figure_builders_or_domain_modules():
    # Plotly figure builders live in services/reporting/figures (the report uses them too)
    names = {p.stem for p in (ROOT / "components").glob("*.py")}
    assert not {n for n in names if n.startswith("figures")}, names


def find_cycles(graph: dict[str, set[str]]) -> list[str]:
    """Every back edge of a depth-first walk, as 'a -> b -> a'."""
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return cycles


def test_no_import_cycle():
    graph = _project_graph()
    assert "services.generation.base" in graph["services.generation.local.generator"]
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_python_file_over_the_size_limit():
    big = [f"{p.relative_to(ROOT)}: {n} lines" for p in _python_files()
           if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES]
    assert not big, f"files over {MAX_LINES} lines (split them by concept):\n" + "\n".join(big)


def test_the_checks_see_function_level_imports_and_cycles(tmp_path):
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("import b\n")
    b.write_text("def f():\n    from a import x\n")
    assert "b" in _imports(a) and "a" in _imports(b)
    assert find_cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == ["a -> b -> a"]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_cache_versions_match_their_history():
    """A stored figure is served again while its VERSION stays; each constant's comment lists
    why it was bumped ("N: reason"). Twice a bump wrote the reason but left the number, so the
    figures of the old code were served: the last number in the history must be the value."""
    import re

    found = 0
    for path in sorted((ROOT / "services").rglob("*.py")):
        for line in path.read_text(encoding="utf-8").splitlines():
            m = re.match(r"([A-Z_]+_VERSION) = (\d+)\s+#(.*)$", line)
            if m:
                found += 1
                history = [int(n) for n in re.findall(r"[(;]\s*(\d+):", m.group(3))]
                assert history, f"{path.name}: {m.group(1)} has no 'N: reason' history"
                assert history[-1] == int(m.group(2)), (
                    f"{path.name}: {m.group(1)} is {m.group(2)} but its history ends at {history[-1]}")
    assert found >= 3
