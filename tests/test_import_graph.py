"""The import graph of cityseg: no cycle, counting imports inside functions (which hide cycles from
the interpreter, not from the design); inference never reaches into the training engine.

Also a script: ``python tests/test_import_graph.py [SRC]`` prints the graph's size, the
function-local imports, and every cycle (strongly connected component) it finds.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def module_name(path: Path, src: Path = SRC) -> str:
    """``src/cityseg/data/png.py`` -> ``cityseg.data.png``; a package's ``__init__.py`` -> the package."""
    parts = path.relative_to(src).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_names(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """Dotted names an import statement may load (``from a import b``: ``a`` and, if a module, ``a.b``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    assert isinstance(node, ast.ImportFrom)
    base = node.module or ""
    if node.level:  # relative: resolve against this module's package
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[: len(package) - node.level + 1]
        base = ".".join(package + ([base] if base else []))
    return [base] + [f"{base}.{alias.name}" for alias in node.names]


def _resolve(name: str, modules: set[str]) -> str | None:
    """The module ``name`` names, or the nearest enclosing one (``a.b.func`` -> ``a.b``); None outside cityseg."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(src: Path = SRC) -> tuple[dict[str, set[str]], list[tuple[str, int, str]]]:
    """(module -> cityseg modules it imports anywhere in its file, [(module, line, target) of imports
    inside functions]). Importing ``a.b.c`` also loads packages ``a.b`` and ``a``: those count too,
    except the importer's own enclosing packages (already loaded when it runs)."""
    paths = {module_name(p, src): p for p in sorted((src / "cityseg").rglob("*.py"))}
    modules = set(paths)
    graph: dict[str, set[str]] = {}
    local: list[tuple[str, int, str]] = []
    for name, path in paths.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        own_parents = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        deps: set[str] = set()
        for func in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
            for node in ast.walk(func):
                if isinstance(node, ast.ImportFrom | ast.Import):
                    found = {_resolve(t, modules) for t in _imported_names(node, name, path.name == "__init__.py")}
                    found.discard(None)
                    # ``from cityseg import viz`` names cityseg.viz; the package itself is no news
                    local += [(name, node.lineno, t) for t in found if not any(o.startswith(t + ".") for o in found)]
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for target in _imported_names(node, name, path.name == "__init__.py"):
                found = _resolve(target, modules)
                while found:
                    if found != name and found not in own_parents:
                        deps.add(found)
                    found = found.rpartition(".")[0] or None
        graph[name] = deps
    return graph, sorted(set(local))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted; [] when acyclic."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph) + 100))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_even_through_function_local_imports():
    graph, _ = import_graph()
    assert len(graph) > 40  # the scan found the package
    assert cycles(graph) == []


def test_inference_does_not_import_the_training_engine():
    graph, _ = import_graph()
    bad = {m: sorted(d for d in deps if d.startswith("cityseg.engine")) for m, deps in graph.items()
           if m.startswith("cityseg.inference")}
    assert {m: d for m, d in bad.items() if d} == {}


def test_models_are_architectures_only():
    graph, _ = import_graph()
    zoo = [m for m in graph if m == "cityseg.models" or m.startswith("cityseg.models.")]
    assert "cityseg.models.build" in zoo  # the package was found
    assert [m for m in zoo if "cityseg.checkpoint" in graph[m]] == []
    # weights are downloaded below the zoo (its builders fetch them) and read and written above it
    assert not any(d.startswith("cityseg.models") for d in graph["cityseg.weights"])
    # the ImageNet constants live in cityseg.imaging: only modules that build models import the zoo
    users = sorted(m for m, deps in graph.items() if "cityseg.models" in deps)
    assert users == ["cityseg.checkpoint", "cityseg.commands.benchmark", "cityseg.engine.build", "cityseg.engine.train",
                     "cityseg.pretrained"]


#: The layers of README's Layout, lowest first: a module imports only from its own layer or below.
#: A module is placed by its longest prefix here (``cityseg.data.png`` by ``cityseg.data``).
LAYERS = [
    # foundations: errors, names on disk, the label table, devices, processes, messages, downloads
    ["cityseg._version", "cityseg.errors", "cityseg.utils", "cityseg.layout", "cityseg.labels", "cityseg.device",
     "cityseg.processes", "cityseg.logs", "cityseg.weights"],
    # descriptions: datasets, normalisation, the typed config, what a model says about itself
    ["cityseg.datasets", "cityseg.imaging", "cityseg.config", "cityseg.modelinfo"],
    # data, metrics, pictures, losses, the transformers adapter
    ["cityseg.data", "cityseg.metrics", "cityseg.viz", "cityseg.losses", "cityseg.stats", "cityseg.hf"],
    ["cityseg.models"],
    ["cityseg.checkpoint", "cityseg.pretrained"],
    ["cityseg.inference"],
    ["cityseg.engine"],
    ["cityseg.sweep", "cityseg.report", "cityseg.serve"],
    ["cityseg.commands", "cityseg.cli", "cityseg.__main__", "cityseg"],
]


def _placed_by(module: str, prefix: str) -> bool:
    # the package itself (``cityseg``) places only its __init__, not everything below it
    return module == prefix or (prefix != "cityseg" and module.startswith(prefix + "."))


def layer_of(module: str) -> int:
    """The index in :data:`LAYERS` of ``module``'s longest listed prefix; ValueError when none."""
    best = max((p for layer in LAYERS for p in layer if _placed_by(module, p)), key=len)
    return next(i for i, layer in enumerate(LAYERS) if best in layer)


def test_no_module_imports_one_from_a_higher_layer():
    graph, _ = import_graph()
    unplaced = [m for m in graph if not any(_placed_by(m, p) for layer in LAYERS for p in layer)]
    assert unplaced == [], "place these modules in LAYERS (and README's Layout)"
    upward = sorted((m, d) for m, deps in graph.items() for d in deps if layer_of(d) > layer_of(m))
    assert upward == []


def test_the_layer_check_sees_an_upward_import():
    assert layer_of("cityseg.metrics.pred_dir") < layer_of("cityseg.engine.train")
    assert layer_of("cityseg") == len(LAYERS) - 1 and layer_of("cityseg.checkpoint") == 4
    with pytest.raises(ValueError):  # a module no layer names is not silently put under the package
        layer_of("cityseg.somewhere_new")


def test_cycle_finder_finds_a_planted_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def main(src: Path = SRC) -> int:
    graph, local = import_graph(src)
    edges = sum(len(d) for d in graph.values())
    print(f"{len(graph)} modules, {edges} import edges (function-local imports included)")
    print(f"{len(local)} function-local imports of cityseg modules:")
    for module, line, target in local:
        print(f"  {module}:{line} -> {target}")
    found = cycles(graph)
    print(f"cycles: {len(found)}")
    for component in found:
        print("  " + " <-> ".join(component))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else SRC))
