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


# ------------------------------------------------------------------------------------------------
# No transformers TensorFlow model anywhere (issue #22)
# ------------------------------------------------------------------------------------------------

# Scripts that recreate what transformers 4.54.1's TF models computed, run once in an environment
# that has them; their output is committed and they are not imported by anything else.
TF_MODEL_SCRIPTS = {"tests/fixtures/encoder_reference/make_references.py"}


def transformers_tf_uses(source: str, filename: str = "<source>") -> list[str]:
    """Where `source` reaches transformers' TensorFlow models: a name starting with "TF" imported
    from transformers or read as `transformers.TF...`, a `modeling_tf_*` module, TF_MODEL_MAPPING,
    or a `from_pt=` argument (loading PyTorch weights into a TF model)."""
    found = []
    tree = ast.parse(source, filename)
    modules = {"transformers"}  # names bound to transformers (`import transformers as hf`)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "transformers":
                    modules.add(alias.asname or alias.name.split(".")[0])
    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            found += [f"{where}: import {a.name}" for a in node.names
                      if a.name.split(".")[0] == "transformers" and "modeling_tf_" in a.name]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == (
                "transformers"):
            names = [a.name for a in node.names]
            if "modeling_tf_" in node.module or any(
                    n.startswith("TF") for n in names):
                found.append(f"{where}: from {node.module} import {', '.join(names)}")
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
              and node.value.id in modules and node.attr.startswith("TF")):
            found.append(f"{where}: {node.value.id}.{node.attr}")
        elif isinstance(node, ast.Name) and node.id == "TF_MODEL_MAPPING":
            found.append(f"{where}: TF_MODEL_MAPPING")
        elif isinstance(node, ast.keyword) and node.arg == "from_pt":
            found.append(f"{where}: from_pt=")
    return sorted(set(found), key=lambda line: (int(line.split(":")[1]), line))


def test_the_tf_model_finder_finds_every_form():
    source = ("import transformers as hf\nfrom transformers import AutoConfig, TFBertModel\n"
              "from transformers.models.auto.modeling_tf_auto import TF_MODEL_MAPPING\n"
              "m = hf.TFAutoModel.from_pretrained('x', from_pt=True)\n"
              "import transformers.modeling_tf_utils\nconfig = hf.AutoConfig\n")
    assert transformers_tf_uses(source, "x.py") == [
        "x.py:2: from transformers import AutoConfig, TFBertModel",
        "x.py:3: from transformers.models.auto.modeling_tf_auto import TF_MODEL_MAPPING",
        "x.py:4: from_pt=", "x.py:4: hf.TFAutoModel",
        "x.py:5: import transformers.modeling_tf_utils"]


def test_no_module_uses_transformers_tensorflow_models():
    """transformers 5 has none: the encoder is models/transformer/, for every package,
    benchmark and test (only the scripts that made the committed references ran them)."""
    offences = []
    for folder in CHECKED_FOLDERS:
        for path in sorted((REPO / folder).rglob("*.py")):
            name = str(path.relative_to(REPO))
            if name not in TF_MODEL_SCRIPTS:
                offences += transformers_tf_uses(path.read_text(encoding="utf-8"), name)
    assert not offences, "\n".join(offences)
    for script in TF_MODEL_SCRIPTS:  # the exception is still needed (and names a real file)
        assert transformers_tf_uses((REPO / script).read_text(encoding="utf-8"), script)
