"""The packages' import rules, read from the source with `ast` (function-level imports included).

    data_pipeline/   imports none of the other packages
    models/          imports neither trainer/ nor data_pipeline/ (the trainer wires them together)
    serving/         imports data_pipeline/ only: serving needs neither the model code nor the
                     training stack
    trainer/         no import cycle between its modules; export.py (run directory -> serving)
                     reaches neither the training loop nor the training config
"""

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("data_pipeline", "models", "serving", "trainer")
FORBIDDEN = {
    "data_pipeline": {"models", "serving", "trainer"},
    "models": {"data_pipeline", "serving", "trainer"},
    "serving": {"models", "trainer"},
}


def imported_modules(path: pathlib.Path) -> set[str]:
    """Every module a file imports, anywhere in it, as absolute dotted names."""
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    return imported_names(path.read_text(encoding="utf-8"), package, str(path))


def imported_names(source: str, package: str, filename: str = "<source>") -> set[str]:
    """Every module `source` (a module of `package`) imports, as absolute dotted names."""
    names = set()
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the file's package upwards
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            names.add(module)
            # `from trainer import export` imports the module trainer.export.
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def module_files(package: str) -> dict[str, pathlib.Path]:
    files = sorted((REPO / package).rglob("*.py"))
    assert files, package
    return {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p
            for p in files}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_package_imports_only_what_it_may(package):
    offences = []
    for module, path in module_files(package).items():
        for name in sorted(imported_modules(path)):
            if name.split(".")[0] in FORBIDDEN[package]:
                offences.append(f"{path.relative_to(REPO)} imports {name}")
    assert not offences, offences


def trainer_import_graph() -> dict[str, set[str]]:
    modules = module_files("trainer")
    return {module: {name for name in imported_modules(path) if name in modules
                     and name != module and name != "trainer"}
            for module, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as [a, b, ..., a], or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for successor in sorted(graph[node]):
            if state.get(successor) == "open":
                return stack[stack.index(successor):] + [successor]
            if successor not in state:
                found = visit(successor)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
    graph = trainer_import_graph()
    assert "trainer.checkpointing" in graph["trainer.loop"]  # `from trainer import checkpointing`
    assert "trainer.export" in graph["trainer.loop"]
    # What the import reader sees of function-level imports (where a cycle would hide).
    hidden = "def f():\n    from trainer import loop\n    from . import step\n"
    assert {"trainer.loop", "trainer.step"} <= imported_names(hidden, "trainer")


def test_no_import_cycle_between_trainer_modules():
    cycle = find_cycle(trainer_import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_export_reaches_neither_the_loop_nor_the_config():
    """The export builds the model from the run directory (model_config.json), not from the
    training flags: nothing it imports, directly or through other trainer modules, is the loop
    or the config."""
    graph = trainer_import_graph()
    reached, todo = set(), ["trainer.export"]
    while todo:
        for successor in graph[todo.pop()] - reached:
            reached.add(successor)
            todo.append(successor)
    assert not reached & {"trainer.loop", "trainer.config", "trainer.step"}, sorted(reached)
