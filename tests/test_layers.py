"""The package reads as its layers: imports point down only. The commands (one module each at the
top) may use everything; nothing below them imports a command, and no import runs in a cycle."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "self_instruct"
COMMANDS = {"generate", "documents", "score", "evolve", "preferences", "evaluate", "dedup", "export", "report", "serve",
            "train", "select"}


def imports() -> dict[str, set[str]]:
    """Each module of the package -> the package's modules it imports (anywhere in it)."""
    modules = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                found.update(m for m in [base, *(f"{base}.{a.name}" for a in node.names)] if m in modules)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name in modules)
        graph[name] = {m for m in found if m != name and not name.startswith(m + ".") and m != "self_instruct"}
    return graph


def test_no_module_below_the_commands_imports_a_command():
    # the package's own __init__ is the library's front door, above the commands like a command
    below = {name: deps for name, deps in imports().items()
             if name != "self_instruct" and (name.split(".")[-1] not in COMMANDS or name.count(".") > 1)}
    upward = {name: sorted(m for m in deps if m.split(".")[-1] in COMMANDS and m.count(".") == 1)
              for name, deps in below.items()}
    assert {name: deps for name, deps in upward.items() if deps} == {}


def test_no_import_cycle():
    graph, state, cycles = imports(), {}, []

    def visit(module, path):
        state[module] = "open"
        for dep in sorted(graph[module]):
            if state.get(dep) == "open":
                cycles.append(" -> ".join(path[path.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, path + [dep])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_executors_use_nothing_of_the_package_but_errors():
    # where work runs (this process or Ray) is below everything that fans work out
    graph = imports()
    uses = {name: deps for name, deps in graph.items() if name.startswith("self_instruct.executors")}
    assert uses and all(all(dep == "self_instruct.errors" or dep.startswith("self_instruct.executors") for dep in deps)
                        for deps in uses.values())
