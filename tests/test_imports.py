"""The import graph of distface, read from the source with `ast` (nothing is imported): acyclic, config at the bottom.

Every import statement counts, including those inside functions: a lazy import only postpones a cycle.
"""
import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "distface"


def module_names() -> dict[str, Path]:
    """'distface.heads.margins' -> its file, 'distface.heads' -> heads/__init__.py."""
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The distface modules `name` imports. `from pkg import x` names pkg.x when x is a module, else pkg."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: distface imports are absolute (this reader relies on it)"
            base = node.module
            found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names)
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search, white/grey/black)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "grey"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "grey":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = "black"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_reader_sees_lazy_imports_and_cycles():
    graph = import_graph()
    assert "distface.config" in graph["distface.checked_config"]
    assert "distface.models" in graph["distface.checked_config"]  # imported inside check()
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_distface_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_config_imports_nothing_from_distface():
    assert import_graph()["distface.config"] == set()


def test_config_components_and_launcher_import_without_tensorflow():
    code = ("import sys, distface.config, distface.checked_config, distface.launch.cli; "
            "sys.exit('tensorflow' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent, timeout=120).returncode == 0


def test_tensorflow_internals_stay_in_the_ops_package():
    """Raw ops and private TensorFlow modules are used only in distface/ops/ (its docstring lists what each
    relies on; tests/test_ops_assumptions.py pins it), and ops/ builds on nothing else of distface."""
    modules = module_names()
    outside = []
    for name, path in modules.items():
        if name.startswith("distface.ops"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            raw = isinstance(node, ast.Attribute) and node.attr == "raw_ops"
            private = isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tensorflow.python")
            private |= isinstance(node, ast.Import) and any(a.name.startswith("tensorflow.python") for a in node.names)
            if raw or private:
                outside.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert outside == []
    graph = import_graph()
    assert all(m.startswith("distface.ops") for name in graph if name.startswith("distface.ops") for m in graph[name])


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_training_never_reaches_serving():
    """docs/design.md: serving (inference, images, export, embed, verify) sits above training; nothing that
    training imports, directly or through eval, data or models, is a serving module."""
    graph = import_graph()
    training = [n for n in graph if n.startswith("distface.training")]
    assert "distface.training.trainer" in training and "distface.serving.export" in graph
    for name in training:
        served = sorted(m for m in reachable(graph, name) if m.startswith("distface.serving"))
        assert not served, f"{name} reaches {served}"


def test_top_level_holds_the_commands_and_a_few_modules():
    """docs/design.md's layer map: the commands' entry points and the modules every layer or command shares."""
    commands = {"cli", "__main__", "train", "export", "embed", "verify", "checkpoint", "figures", "plan"}
    shared = {"__init__", "config", "checked_config", "console", "progress"}
    assert {p.stem for p in PACKAGE.glob("*.py")} == commands | shared
