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
    assert "trainer.export" in graph["trainer.controller"]
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
    training = {"trainer.loop", "trainer.controller", "trainer.training_state",
                "trainer.config", "trainer.step"}
    assert not reached & training, sorted(reached)


# ------------------------------------------------------------------------------------------------
# No private name crosses a module boundary
# ------------------------------------------------------------------------------------------------

CHECKED_FOLDERS = PACKAGES + ("benchmarks", "tests")


def private_uses(source: str, filename: str = "<source>") -> list[str]:
    """Private names (`_x`, not `__x__`) that `source` takes from another module of this repo.

    Two ways count: `from m import _x`, and `alias._x` where `alias` was bound by an import of
    one of this repo's modules (`import m as alias`, `from pkg import m as alias`), anywhere in
    the file. Attributes of objects (`self._x`, `bar._filter`) are not imports, and other
    libraries' names (`os._exit` is documented API) are not this rule's business.
    """
    def private(name: str) -> bool:
        return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))

    def ours(module: str | None) -> bool:
        return bool(module) and module.split(".")[0] in CHECKED_FOLDERS

    tree = ast.parse(source, filename)
    modules: set[str] = set()  # names bound to this repo's modules by an import
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update((alias.asname or alias.name).split(".")[0] for alias in node.names
                           if ours(alias.name))
        elif isinstance(node, ast.ImportFrom) and (node.level or ours(node.module)):
            for alias in node.names:
                if private(alias.name):
                    found.append(f"{filename}:{node.lineno}: from {node.module} import "
                                 f"{alias.name}")
                modules.add(alias.asname or alias.name)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and private(node.attr)
                and isinstance(node.value, ast.Name) and node.value.id in modules):
            found.append(f"{filename}:{node.lineno}: {node.value.id}.{node.attr}")
        # setattr(module, "_x", ...), monkeypatch.setattr(module, "_x", ...)
        if (isinstance(node, ast.Call) and len(node.args) >= 2
                and (getattr(node.func, "id", None) == "setattr"
                     or getattr(node.func, "attr", None) == "setattr")
                and isinstance(node.args[0], ast.Name) and node.args[0].id in modules
                and isinstance(node.args[1], ast.Constant)
                and isinstance(node.args[1].value, str) and private(node.args[1].value)):
            found.append(f"{filename}:{node.lineno}: {node.args[0].id}.{node.args[1].value}")
    return sorted(found, key=lambda line: int(line.split(":")[1]))


def test_the_private_name_finder_finds_both_forms():
    source = ("import os\nimport trainer.loop as loop\nfrom trainer import export\n"
              "from data_pipeline.corpus import _SCHEME, PUBLIC\n"
              "def f(bar, monkeypatch):\n    export._save(loop.__name__, bar._filter)\n"
              "    os._exit(1)\n    monkeypatch.setattr(loop, '_LIMIT', 1)\n")
    assert private_uses(source, "x.py") == ["x.py:4: from data_pipeline.corpus import _SCHEME",
                                            "x.py:6: export._save", "x.py:8: loop._LIMIT"]


def test_no_private_name_is_imported_from_another_module():
    """Each module's `_names` are its own: what another module needs gets a public name (and a
    docstring), benchmarks and tests included."""
    offences = []
    for folder in CHECKED_FOLDERS:
        for path in sorted((REPO / folder).rglob("*.py")):
            offences += private_uses(path.read_text(encoding="utf-8"),
                                     str(path.relative_to(REPO)))
    assert not offences, "\n".join(offences)
