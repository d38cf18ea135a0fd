"""The package's layers, from its source: no import cycle, no import up a layer, the lower
layers importable without Ray or torch, and Ray's private names in one module.

    cli, catalog, bench_report      the commands                          (top)
    analysis/                       answers from a run folder: no Ray, no torch
    tune/                           everything that talks to Ray
    study, searchers/, stopping/    plain data: what to search, and when to stop a trial
    run/                            the run folder's one owner: no Ray, no torch
    engine/                         plain PyTorch: no Ray, no pandas
    errors, optional                shared by all                         (bottom)

A module may import its own layer's modules and any layer below. Every import written counts,
inside functions and under `if TYPE_CHECKING:` too: the graph is read from the source, not
from what one run happened to import.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "tunefm"

# module prefix -> (rank, group); a module takes the longest prefix that matches
LAYERS = {
    "tunefm.errors": (0, "base"), "tunefm.optional": (0, "base"),
    "tunefm.engine": (1, "engine"),
    "tunefm.run": (2, "run"),
    "tunefm.study": (3, "plain data"), "tunefm.searchers": (3, "plain data"),
    "tunefm.stopping": (3, "plain data"),
    "tunefm.tune": (4, "tune"),
    "tunefm.analysis": (5, "analysis"),
    "tunefm.cli": (6, "commands"), "tunefm.catalog": (6, "commands"), "tunefm.bench_report": (6, "commands"),
    "tunefm": (6, "commands"),  # the package's own __init__ (imports nothing)
}
MAX_IMPORTS_IN_FUNCTIONS = 10


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> list[tuple[str, int, bool]]:
    """(imported tunefm module, line, inside a function) for every import the file writes."""
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, in_function) for a in child.names if a.name.startswith("tunefm"))
            elif isinstance(child, ast.ImportFrom) and child.module and child.module.startswith("tunefm"):
                for alias in child.names:  # `from tunefm.run import store` imports the module tunefm.run.store
                    target = f"{child.module}.{alias.name}"
                    found.append((target if target in known else child.module, child.lineno, in_function))
            visit(child, inner)

    visit(ast.parse(path.read_text()), False)
    return found


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: {target for target, _, _ in imports_of(path, set(found))} - {name} for name, path in found.items()}


def layer(module: str) -> tuple[int, str]:
    return LAYERS[max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)]


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def connect(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                connect(w)
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
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return out


def test_the_graph_is_read_from_every_module():
    edges = graph()
    assert {"tunefm.cli", "tunefm.engine.training", "tunefm.run.store", "tunefm.tune.search"} <= set(edges)
    assert "tunefm.run.store" in edges["tunefm.tune.search"]  # from tunefm.run import store
    assert "tunefm.tune.resume" in edges["tunefm.cli"]  # an import inside a function counts


def test_no_import_cycle():
    found = cycles(graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    """Each import of a module in another group at the same layer or above."""
    wrong = []
    for module, targets in edges.items():
        rank, group = layer(module)
        for target in targets:
            their_rank, their_group = layer(target)
            if their_group != group and their_rank >= rank:
                wrong.append(f"{module} ({group}) imports {target} ({their_group})")
    return sorted(wrong)


def test_no_module_imports_up_a_layer():
    wrong = upward_imports(graph())
    assert not wrong, "imports up a layer or across: " + "; ".join(wrong)


def test_the_checks_catch_a_module_that_reaches_up():
    """Both checks fail on the graph with one import up a layer added: run/store importing the
    Tune layer's lifecycle, which reaches the store back through the writer."""
    edges = graph()
    edges["tunefm.run.store"] = edges["tunefm.run.store"] | {"tunefm.tune.lifecycle"}
    assert any({"tunefm.run.store", "tunefm.tune.lifecycle"} <= set(c) for c in cycles(edges))
    assert upward_imports(edges) == ["tunefm.run.store (run) imports tunefm.tune.lifecycle (tune)"]


def test_imports_inside_functions_are_few_and_say_why():
    found = modules()
    inside = sorted({(name, line) for name, path in found.items()  # one per import statement
                     for _, line, in_function in imports_of(path, set(found)) if in_function})
    assert len(inside) <= MAX_IMPORTS_IN_FUNCTIONS, inside
    for name, line in inside:
        source = found[name].read_text().splitlines()[line - 1]
        assert "#" in source, f"{name}:{line} imports inside a function without saying why: {source.strip()}"


def test_ray_private_names_and_tune_formats_only_in_ray_internals():
    """Private Ray modules and attributes, and Tune's file names (experiment_state-<time>.json,
    checkpoint_000003/), are named in tune/ray_internals.py alone."""
    private = re.compile(r"ray\._private|ray\._raylet|ray\.tune\.execution|_local_tuner|experiment_state"
                         r"|checkpoint_(?:\d|\*|\{|[\"'])")
    named = [f"{name}: {found}" for name, path in modules().items() if name != "tunefm.tune.ray_internals"
             for found in private.findall(path.read_text())]
    assert not named, "outside ray_internals: " + "; ".join(named)
    assert private.findall((PACKAGE / "tune" / "ray_internals.py").read_text())  # the pattern finds them there


@pytest.mark.parametrize("package, forbidden", [
    ("tunefm.run", ("ray", "torch")),
    ("tunefm.analysis", ("ray", "torch")),
    ("tunefm.stopping", ("ray", "torch")),
    ("tunefm.engine", ("ray", "pandas")),
    ("tunefm.cli", ("ray", "torch", "matplotlib", "plotly", "optuna", "statsmodels", "mlflow")),  # start-up
])
def test_a_layer_imports_without_what_it_must_not_load(package, forbidden):
    """Every module of the layer, imported in a fresh interpreter."""
    names = sorted(n for n in modules() if n == package or n.startswith(package + "."))
    code = (f"import importlib, sys\nfor name in {names!r}:\n    importlib.import_module(name)\n"
            f"print(sorted(m for m in {forbidden!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"importing {package} loaded {done.stdout.strip()}"
