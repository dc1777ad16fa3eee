"""The package's import graph keeps its layers: no cycles, `_core` self-contained, compute never draws.

Every import counts, also those inside functions (a cycle held apart by a
function-level import is still a cycle). Run this file as a script to print the
graph: ``python tests/test_layout.py``; of another checkout's package (an older
commit, say): ``python tests/test_layout.py /path/to/checkout/fastscape``.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest


PACKAGE = Path(__file__).resolve().parent.parent / "fastscape"
#: modules that present results (drawing, the command line, the demo): they may import `plot`
FRONT_ENDS = ("fastscape.plot", "fastscape._cli", "fastscape._demo", "fastscape.__main__", "fastscape")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(importer: str, is_package: bool, level: int, module: str | None) -> str:
    if level == 0:
        return module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def import_graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports (anywhere in its body)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                found = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, is_package, node.level, node.module)
                # `from pkg import sub` imports the submodule when one exists
                found = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            for target in found:
                while target and target not in modules:  # `import fastscape.x.y` -> deepest module
                    target = target.rpartition(".")[0]
                if target and target.startswith("fastscape") and target != name:
                    targets.add(target)
        graph[name] = targets
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary cycle found by depth-first search (each reported once, rotated to its least name)."""
    found, seen = [], set()

    def visit(node, stack, on_stack):
        for nxt in sorted(graph.get(node, ())):
            if nxt == "fastscape":  # the facade re-exports; importing it is importing the public API
                continue
            if nxt in on_stack:
                cycle = stack[stack.index(nxt):]
                i = cycle.index(min(cycle))
                key = tuple(cycle[i:] + cycle[:i])
                if key not in seen:
                    seen.add(key)
                    found.append(list(key))
            elif len(stack) < 50:
                visit(nxt, stack + [nxt], on_stack | {nxt})

    for start in sorted(graph):
        visit(start, [start], {start})
    return found


def _is_front_end(name: str) -> bool:
    return any(name == f or name.startswith(f + ".") for f in FRONT_ENDS if f != "fastscape") or name == "fastscape"


def test_graph_sees_function_level_imports(tmp_path, monkeypatch):
    """The walker itself: an import inside a function is an edge (checked on a made-up package)."""
    pkg = tmp_path / "fastscape"
    (pkg / "_core").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "_core" / "__init__.py").write_text("")
    (pkg / "_core" / "a.py").write_text("def f():\n    from .. import _b\n")
    (pkg / "_b.py").write_text("from ._core import a\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)
    graph = import_graph()
    assert graph["fastscape._core.a"] == {"fastscape._b"}
    assert _cycles(graph) == [["fastscape._b", "fastscape._core.a"]]


def private_imports() -> list[str]:
    """``importer: module._name`` for each underscored name one module imports from another
    (a private module itself, such as ``from .. import _optional``, is not a name)."""
    modules = _modules()
    found = []
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, ast.ImportFrom):
                continue
            base = _resolve(name, path.name == "__init__.py", node.level, node.module)
            if not base.startswith("fastscape"):
                continue
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__") \
                        and f"{base}.{alias.name}" not in modules:
                    found.append(f"{name}: {base}.{alias.name}")
    return found


def test_no_private_name_crosses_modules():
    """A name another module needs is part of its module's interface: it has no underscore."""
    found = private_imports()
    assert not found, f"private names imported across modules: {found}"


def test_no_import_cycles():
    cycles = _cycles(import_graph())
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c + [c[0]]) for c in cycles)


def test_core_imports_nothing_outside_core():
    bad = {m: sorted(t for t in ts if not t.startswith("fastscape._core"))
           for m, ts in import_graph().items() if m.startswith("fastscape._core")}
    bad = {m: ts for m, ts in bad.items() if ts}
    assert not bad, f"_core modules importing outside _core: {bad}"


def test_the_store_never_runs_the_model():
    """`_store` keeps requests on disk: it imports neither the evaluator nor a strategy (run
    planning, which probes the model, lives beside loss_surface in `_units`)."""
    graph = import_graph()
    store = {m: ts for m, ts in graph.items() if m == "fastscape._store" or m.startswith("fastscape._store.")}
    assert store, "fastscape._store is a package"
    bad = {m: sorted(t for t in ts if t.startswith(("fastscape._core.evaluator", "fastscape._core.strategies",
                                                     "fastscape._core.auto", "fastscape._units",
                                                     "fastscape._landscape")))
           for m, ts in store.items()}
    bad = {m: ts for m, ts in bad.items() if ts}
    assert not bad, f"the store imports compute modules: {bad}"


def test_compute_modules_do_not_import_plot():
    bad = {m: sorted(t for t in ts if t == "fastscape.plot" or t.startswith("fastscape.plot."))
           for m, ts in import_graph().items() if not _is_front_end(m)}
    bad = {m: ts for m, ts in bad.items() if ts}
    assert not bad, f"compute modules importing the drawing layer: {bad}"


#: what the drawing layer may import from the package: itself and the optional-import helper
PLOT_MAY_IMPORT = ("fastscape.plot", "fastscape._optional", "fastscape._paths")


def test_plot_imports_no_compute_module():
    """`plot` stands on the data objects it is handed: it imports no module that computes."""
    bad = {m: sorted(t for t in ts if not any(t == a or t.startswith(a + ".") for a in PLOT_MAY_IMPORT))
           for m, ts in import_graph().items() if m == "fastscape.plot" or m.startswith("fastscape.plot.")}
    bad = {m: ts for m, ts in bad.items() if ts}
    assert not bad, f"plot modules importing compute modules: {bad}"


def test_front_ends_use_the_public_api():
    """The command line and the demo call only what `import fastscape` offers."""
    graph = import_graph()
    cli = sorted(m for m in graph if m == "fastscape._cli" or m.startswith("fastscape._cli."))
    assert "fastscape._cli.main" in cli  # the package's files are walked, not only its __init__
    for name in [*cli, "fastscape._demo"]:
        private = sorted(t for t in graph.get(name, ()) if t != "fastscape" and t != "fastscape.plot"
                         and not t.startswith("fastscape.plot.") and t != "fastscape._demo"
                         and not t.startswith("fastscape._cli"))  # its own files
        assert not private, f"{name} imports private modules {private}; use the public API"


def test_test_files_are_named_by_subject():
    """A test file is named after what it tests (``test_cli.py``, ``test_hessian.py``), never after the
    issue that asked for it (``test_errors11.py``): no digit in a test file's name."""
    import re

    numbered = sorted(p.name for p in Path(__file__).resolve().parent.glob("test_*.py") if re.search(r"\d", p.name))
    assert not numbered, f"test files named after a number: {numbered}"


MAX_PUBLIC_NAMES = 32


def test_the_top_level_fits_on_one_screen():
    """At most 32 public names; the ones that moved away still resolve, with a FutureWarning naming
    their new home, so an outside script learns where to look instead of failing."""
    import fastscape

    assert len(fastscape.__all__) <= MAX_PUBLIC_NAMES, sorted(fastscape.__all__)
    assert all(hasattr(fastscape, n) for n in fastscape.__all__)
    with pytest.warns(FutureWarning, match=r"fastscape\.curvature\.hessian_eigenpairs"):
        moved = fastscape.hessian_eigenpairs
    assert moved is fastscape.curvature.hessian_eigenpairs
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        fastscape.nonsense


# ----------------------------------------------------------------------------- one job per file

#: the most lines a module of the package may have, and code lines a function may have
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 500, 80
#: names of the points' device tables, private to ``_core/points.py`` (others use its methods)
POINTS_TABLES = {"_origin", "_dirs", "_coords", "_shapes"}


def _docstring_lines(tree: ast.AST) -> set[int]:
    """Line numbers of every module, class and function docstring in ``tree``."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                lines.update(range(first.lineno, first.end_lineno + 1))
    return lines


def long_functions(source: str, limit: int = MAX_FUNCTION_LINES) -> dict[str, int]:
    """``name: code lines`` of each function of ``source`` with more than ``limit`` code lines:
    lines that are not blank, not comments and not docstrings, nested functions included."""
    tree, lines = ast.parse(source), source.splitlines()
    docs = _docstring_lines(tree)
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = sum(1 for i in range(node.lineno, node.end_lineno + 1)
                    if i not in docs and lines[i - 1].strip() and not lines[i - 1].strip().startswith("#"))
            if n > limit:
                found[f"{node.name} (line {node.lineno})"] = n
    return found


def long_modules(inside_core: bool) -> dict[str, int]:
    """``path: lines`` of each module over :data:`MAX_MODULE_LINES`, in ``_core`` or outside it."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith("_core/") == inside_core:
            n = len(path.read_text().splitlines())
            if n > MAX_MODULE_LINES:
                found[rel] = n
    return found


def test_the_function_counter_counts_code_lines_only():
    body = "\n".join(f"    x{i} = {i}  # a comment" for i in range(5))
    src = f'def f():\n    """A\n    docstring."""\n\n    # a comment line\n{body}\n    return x0\n'
    assert long_functions(src, limit=7) == {}  # def + 5 assignments + return = 7 code lines
    assert long_functions(src, limit=6) == {"f (line 1)": 7}


def test_core_modules_are_short():
    found = long_modules(inside_core=True)
    assert not found, f"_core modules over {MAX_MODULE_LINES} lines: {found}"


def test_modules_outside_core_are_short():
    found = long_modules(inside_core=False)
    assert not found, f"modules over {MAX_MODULE_LINES} lines: {found}"


def test_no_function_is_over_80_code_lines():
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for name, n in long_functions(path.read_text()).items():
            found[f"{path.relative_to(PACKAGE).as_posix()}: {name}"] = n
    assert not found, f"functions over {MAX_FUNCTION_LINES} code lines: {found}"


def test_core_states_its_rule_one_line_per_file():
    """``_core/__init__.py`` says what the room is, and names every file and folder in it."""
    init = PACKAGE / "_core" / "__init__.py"
    assert init.is_file(), "fastscape/_core/__init__.py is missing"
    doc = ast.get_docstring(ast.parse(init.read_text())) or ""
    entries = [p.name + ("/" if p.is_dir() else "") for p in sorted((PACKAGE / "_core").iterdir())
               if p.name != "__init__.py" and not p.name.startswith("__") and (p.suffix == ".py" or p.is_dir())]
    missing = [e for e in entries if f"``{e}``" not in doc]
    assert not missing, f"_core/__init__.py does not say what these hold: {missing}"


def private_table_reads() -> list[str]:
    """``module:line .name`` for each read of a points table (:data:`POINTS_TABLES`) outside
    ``_core/points.py``."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel == "_core/points.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in POINTS_TABLES:
                found.append(f"{rel}:{node.lineno} .{node.attr}")
    return found


def test_no_private_points_table_is_read_outside_points():
    found = private_table_reads()
    assert not found, f"the points' private tables read outside _core/points.py: {found}"


#: the signatures earlier issues promised to outside scripts, exactly as they were
FIXED_SIGNATURES = {
    "random_directions": "(model: 'nn.Module', n: 'int' = 2, *, norm: 'str | None' = 'filter', "
                         "ignore: 'str | None' = 'biasbn', seed: 'int | None' = None, "
                         "generator: 'torch.Generator | None' = None, states: 'bool' = False, "
                         "params: 'str | list[str] | None' = None) -> 'Directions'",  # params: added last (issue 26)
    "loss_surface": "(model: 'nn.Module', data, directions, *, loss_fn: 'Callable', grid=(-1.0, 1.0, 51), "
                    "origin=None, metrics: 'Mapping[str, Callable] | None' = None, device=None, "
                    "dtype=torch.float32, chunk_size='auto', batch_size: 'int | None' = None, "
                    "strategy: 'str' = 'auto', progress: 'bool | Callable | None' = None, out=None, "
                    "recalibrate=None) -> 'Surface'",
    "Surface": "(coords: 'list[np.ndarray]', loss: 'np.ndarray', metrics: 'dict[str, np.ndarray]' = <factory>, "
               "meta: 'dict' = <factory>) -> None",
    "Surface.save": "(self, path) -> 'Path'",
    "load_surface": "(path) -> 'Surface'",
}


@pytest.mark.parametrize("name", sorted(FIXED_SIGNATURES))
def test_fixed_names_keep_their_signatures(name):
    import inspect

    import fastscape

    obj = fastscape
    for part in name.split("."):
        obj = getattr(obj, part)
    assert str(inspect.signature(obj)) == FIXED_SIGNATURES[name]


if __name__ == "__main__":
    # print the graph: one line per module, its imports after the arrow; then the cycles and the
    # private names crossing modules. Another checkout's package: python tests/test_layout.py DIR/fastscape
    if len(sys.argv) > 1:
        PACKAGE = Path(sys.argv[1]).resolve()
    graph = import_graph()
    for mod, targets in sorted(graph.items()):
        print(f"{mod} -> {', '.join(sorted(targets)) or '(nothing)'}")
    cyc = _cycles(graph)
    print(f"\n{len(cyc)} cycle(s)" + "".join("\n  " + " -> ".join(c + [c[0]]) for c in cyc))
    private = private_imports()
    print(f"{len(private)} private name(s) imported across modules" + "".join(f"\n  {p}" for p in private))
