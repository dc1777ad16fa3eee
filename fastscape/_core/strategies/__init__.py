"""How the evaluator computes one chunk of points on one data batch: the registry.

Every strategy is a :class:`~.base.Strategy` subclass in its own file, registered in
:data:`STRATEGIES` under its ``name``; it is built as ``cls(ctx)`` (raising
:class:`~.base.NotApplicable` when it cannot evaluate the model), with its structural
``rank`` and the chunk it runs best at (``best_chunk``); a compiled one names the
``eager`` strategy it compiles. Every strategy returns the same numbers (up to float32
rounding); they differ only in speed. Each file's docstring says what its strategy does.

Adding a strategy edits two files: its own file here (a ``Strategy`` subclass) and the
:data:`STRATEGIES` dict below. ``strategy="auto"`` (:mod:`fastscape._core.auto`), the
``strategy`` argument's check and the tests (``tests/test_strategies.py`` compares every
registered name with a per-point reference) read the registry.
"""

from __future__ import annotations

from .affine import AffineStrategy
from .base import Context, NotApplicable, PointLoss, Strategy, compiler_available
from .compiled import AffineCompiled, VmapCompiled
from .loop import LoopStrategy
from .mlp import MlpStrategy
from .prefix import PrefixStrategy
from .quadratic import QuadraticStrategy
from .vmap import VmapStrategy

__all__ = ["STRATEGIES", "Strategy", "Context", "PointLoss", "NotApplicable", "make_strategy", "strategy_names",
           "compiler_available", "LoopStrategy", "VmapStrategy", "AffineStrategy", "MlpStrategy",
           "QuadraticStrategy", "PrefixStrategy", "VmapCompiled", "AffineCompiled"]

STRATEGIES: dict[str, type[Strategy]] = {
    "vmap": VmapStrategy,
    "loop": LoopStrategy,
    "affine": AffineStrategy,
    "vmap_compiled": VmapCompiled,
    "affine_compiled": AffineCompiled,
    "mlp": MlpStrategy,
    "quadratic": QuadraticStrategy,
    "prefix": PrefixStrategy,
}


def strategy_names() -> list[str]:
    """Valid values of ``strategy``: "auto" and the registered names."""
    return ["auto", *STRATEGIES]


def make_strategy(name: str, ctx) -> Strategy:
    """Build strategy ``name``; raises NotApplicable when it cannot evaluate the model."""
    return STRATEGIES[name](ctx)

