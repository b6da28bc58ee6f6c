"""The package's import graph: every subpackage imports only the layers ARCHITECTURE.md puts below
it, and no module imports itself round a circle (function-local imports counted too)."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ropesearch"


def layers() -> dict[str, int]:
    """Top-level module or subpackage -> its row in ARCHITECTURE.md's layer table."""
    text = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    table = text.split("## Subpackages, lowest layer first", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    return {name: row for row, line in enumerate(rows) for name in re.findall(r"`(\w+)`", line.split("|")[1])}


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def imports() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (anywhere in it)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    found = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("ropesearch"):
                for alias in node.names:
                    whole = f"{node.module}.{alias.name}"
                    targets.add(whole if whole in modules else node.module)
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.startswith("ropesearch")}
        found[name] = {t for t in targets if t in modules and t != name}
    return found


def top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_subpackage_imports_only_the_layers_below_it():
    rows = layers()
    graph = imports()
    assert set(map(top, graph)) <= set(rows), f"not in ARCHITECTURE.md's table: {set(map(top, graph)) - set(rows)}"
    upward = [f"{source} imports {target}" for source, targets in graph.items() for target in targets
              if rows[top(target)] > rows[top(source)]]
    assert not upward, upward


def test_no_module_imports_itself_round_a_circle():
    graph = imports()
    state, circles = {}, []

    def visit(module, path):
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                circles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not circles, circles
