"""What the prose says agrees with the code: every ``fastscape.…`` a docstring names exists,
every keyword the README's examples pass is one the function takes, and each constant of
``strategy="auto"`` has the value benchmarks/README.md records for it."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import textwrap
from pathlib import Path

import pytest

import fastscape

ROOT = Path(__file__).resolve().parents[1]
ROLE = re.compile(r":(?:func|class|data|meth|mod|attr|exc):`~?(fastscape(?:\.\w+)+)")


def _modules():
    """Every module of the package (``_core`` included, with or without an ``__init__.py``)."""
    names = []
    for path in sorted((ROOT / "fastscape").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__main__":
            continue
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return [importlib.import_module(n) for n in names]


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):  # the longest importable module, then attributes
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_every_name_a_docstring_points_at_exists():
    """A renamed or removed module leaves no docstring pointing at it (``fastscape._grid.make_axes``)."""
    dangling = []
    for module in _modules():
        source = inspect.getsource(module)
        dangling += [f"{module.__name__}: {ref}" for ref in sorted(set(ROLE.findall(source))) if not _resolves(ref)]
    assert not dangling, dangling


def test_the_reference_check_sees_a_dangling_name():
    assert _resolves("fastscape._core.grid.make_axes") and _resolves("fastscape.plot.contour")
    assert not _resolves("fastscape._grid.make_axes") and not _resolves("fastscape.loss_surface.nothing")


def _readme_calls():
    """``(call text, function, keyword names)`` for each call in the README's Python examples that
    names a fastscape function, or a method of an object a fastscape function returned there."""
    text = (ROOT / "README.md").read_text()
    found = []
    for block in re.findall(r"```python\n(.*?)```", text, flags=re.S):
        try:
            tree = ast.parse(block)
        except SyntaxError:
            continue
        types: dict[str, type] = {}
        for node in ast.walk(tree):  # `result = fastscape.compare_optimizers(...)`: result's type
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and len(node.targets) == 1 \
                    and isinstance(node.targets[0], ast.Name):
                fn = _function(node.value.func, {})
                ret = inspect.signature(fn).return_annotation if fn is not None else inspect.Signature.empty
                if isinstance(ret, str) and hasattr(fastscape, ret):
                    types[node.targets[0].id] = getattr(fastscape, ret)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                fn = _function(node.func, types)
                if fn is not None:
                    kws = [k.arg for k in node.keywords if k.arg is not None]
                    found.append((ast.unparse(node)[:80], fn, kws))
    return found


def _function(func, types):
    """The fastscape callable an example's call names, or None."""
    if not isinstance(func, ast.Attribute):
        return None
    base = func.value
    if isinstance(base, ast.Name) and base.id == "fastscape":
        return getattr(fastscape, func.attr, None)
    if isinstance(base, ast.Attribute) and isinstance(base.value, ast.Name) and base.value.id == "fastscape" \
            and base.attr == "plot":
        return getattr(importlib.import_module("fastscape.plot"), func.attr, None)
    if isinstance(base, ast.Name) and base.id in types:
        return getattr(types[base.id], func.attr, None)
    return None


def _accepts(fn, keyword: str) -> bool:
    """Whether ``fn`` takes ``keyword``, following ``**kwargs`` into the one function it passes them to."""
    params = inspect.signature(fn).parameters
    if keyword in params:
        return True
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return False
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and any(k.arg is None for k in node.keywords) \
                and isinstance(node.func, ast.Name):
            target = fn.__globals__.get(node.func.id)
            if target is not None:
                return _accepts(target, keyword)
    return True  # kwargs go somewhere this check cannot follow


def test_the_readme_examples_pass_only_keywords_the_functions_take():
    calls = _readme_calls()
    assert any(fn.__name__ == "loss_surface" and "loss_fn" in kws for _, fn, kws in calls)  # the walk finds calls
    wrong = [f"{text}: `{k}`" for text, fn, kws in calls for k in kws if not _accepts(fn, k)]
    assert not wrong, wrong


def test_the_keyword_check_follows_kwargs():
    """``OptimizerComparison.loss_surface(**kwargs)`` passes them to ``loss_surface``: ``num`` is not one."""
    method = fastscape.OptimizerComparison.loss_surface
    assert _accepts(method, "n") and _accepts(method, "chunk_size") and not _accepts(method, "num")


def _benchmarked_constants() -> dict[str, str]:
    text = (ROOT / "benchmarks" / "README.md").read_text()
    section = text.split("## The constants of auto", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^\| `(\w+)` \| ([^|]+) \|", section, flags=re.M))


def _constant(name: str):
    for module in _modules():
        if name in vars(module):
            return vars(module)[name]
    raise LookupError(name)


@pytest.mark.parametrize("name", ["TIE", "COMPILE_SPEEDUP", "COMPILE_SECONDS"])
def test_autos_constants_have_the_values_benchmarks_readme_records(name):
    recorded = _benchmarked_constants()[name]
    value = _constant(name)
    numbers = [float(v) for v in re.findall(r"\d+(?:\.\d+)?", recorded)]
    if isinstance(value, dict):  # COMPILE_SECONDS: {device: (base, per module)}
        assert all(f"{d.upper() if d == 'cpu' else 'CUDA'}" in recorded for d in value)
        want = [float(v) for pair in value.values() for v in pair]
    else:
        want = [float(value)]
    assert numbers[:len(want)] == want, (name, recorded, value)


def test_the_readme_states_no_value_of_autos_constants():
    """The README names the constants and points at benchmarks/README.md; a value written there
    too would drift (it said auto compiled at a 4x gain while the code used 6)."""
    row = next(line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith('| `"auto"`'))
    assert "COMPILE_SPEEDUP" in row and "benchmarks/README.md" in row
    assert not re.search(r"\d+(\.\d+)?\s*(×|x)\s*speed", row) and "1.25" not in row
