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


# what a module may wait to import until it is used: torch and the optional backends (the CLI and
# plan parsing start without them); everything else is imported at the top of the module
HEAVY = {"torch", "transformers", "accelerate", "safetensors", "pymoo", "vllm", "ray", "lm_eval", "gguf",
         "matplotlib", "datasets"}


def _top_level(tree: ast.Module) -> list[ast.AST]:
    """The imports a module runs when it is imported (under if/try at the top too)."""
    return [node for statement in tree.body
            for node in ([statement] if not isinstance(statement, (ast.If, ast.Try)) else ast.walk(statement))
            if isinstance(node, (ast.Import, ast.ImportFrom))]


def _targets(node, modules) -> tuple[set[str], set[str]]:
    """(the package's modules, the outside packages) an import statement names."""
    own, outside = set(), set()
    if isinstance(node, ast.ImportFrom) and node.level == 0:
        if (node.module or "").startswith("ropesearch"):
            own |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                    for a in node.names}
        else:
            outside.add((node.module or "").split(".")[0])
    elif isinstance(node, ast.Import):
        for alias in node.names:
            (own if alias.name.startswith("ropesearch") else outside).add(alias.name if alias.name.startswith("ropesearch")
                                                                           else alias.name.split(".")[0])
    return own, outside


def test_a_function_imports_the_package_locally_only_to_defer_a_heavy_dependency():
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    trees = {name: ast.parse(path.read_text(encoding="utf-8")) for name, path in modules.items()}
    at_import = {}
    for name, tree in trees.items():
        own, outside = set(), set()
        for node in _top_level(tree):
            found = _targets(node, modules)
            own, outside = own | found[0], outside | found[1]
        parents = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        at_import[name] = (own | (parents & set(modules)), outside)
    heavy: dict[str, bool] = {}

    def is_heavy(name, seen=frozenset()):
        if name not in heavy:
            own, outside = at_import[name]
            heavy[name] = bool(outside & HEAVY) or any(is_heavy(t, seen | {name}) for t in own - seen - {name})
        return heavy[name]

    needless = []
    for name, tree in trees.items():
        for function in ast.walk(tree):
            if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(function):
                    own, _ = _targets(node, modules)
                    needless += [f"{name}:{node.lineno} imports {t}" for t in sorted(own) if not is_heavy(t)]
    assert not needless, sorted(set(needless))


def test_no_function_outside_the_cli_takes_more_than_ten_parameters():
    long = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "cli.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names = [a.arg for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs]
                count = len(names) - (names[:1] in (["self"], ["cls"]))
                if count > 10:
                    long.append(f"{module_name(path)}.{node.name}: {count}")
    assert not long, long
