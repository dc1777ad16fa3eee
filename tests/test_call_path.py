"""Where is the loss computed? ``loss_surface`` reaches the line that calls ``loss_fn`` in three hops.

The chain, on every strategy that calls ``loss_fn`` and on both routes (in memory, and
unit by unit into a file): ``loss_surface -> evaluate -> <Strategy>.run -> PointLoss.__call__``,
all of it in ``fastscape/_core``. The test records the Python stack at each call of
``loss_fn`` and keeps the frames of fastscape's own files (torch's vmap frames and
decorators from the standard library are not hops a reader follows).
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import fastscape
from fastscape._core.strategies import STRATEGIES
from tests.models import MLP, SmallCNN, trained_bn_stats

PACKAGE = Path(fastscape.__file__).resolve().parent


def _fastscape_frames() -> list[tuple[str, str]]:
    """(module path relative to the package, function) of the fastscape frames on the stack, outermost first."""
    frames = []
    for info in inspect.stack()[2:]:  # not this helper, not the recording loss
        path = Path(info.filename).resolve()
        if PACKAGE in path.parents:
            frames.append((path.relative_to(PACKAGE).as_posix(), info.function))
    return frames[::-1]


class RecordingLoss:
    """A loss that records the fastscape frames above each of its calls."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []
        self.fastscape_fingerprint = f"recording {fn.__name__}"  # its values are fn's (see loss_surface's `out`)

    def __call__(self, out, y):
        self.calls.append(_fastscape_frames())
        return self.fn(out, y)


def _hops(frames: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The frames below ``loss_surface``: the hops from it to the line that called the loss."""
    names = [f for _, f in frames]
    assert "loss_surface" in names, frames
    return frames[len(names) - 1 - names[::-1].index("loss_surface") + 1:]


def _case(name):
    torch.manual_seed(0)
    if name == "cnn":
        model = trained_bn_stats(SmallCNN(), torch.randn(16, 1, 8, 8)).eval()
        return model, (torch.randn(24, 1, 8, 8), torch.randint(0, 4, (24,))), F.cross_entropy
    model = MLP()
    if name == "mse":
        return model, (torch.randn(24, 5), torch.randn(24, 3)), F.smooth_l1_loss
    return model, (torch.randn(24, 5), torch.randint(0, 3, (24,))), F.cross_entropy


#: the registry's eager strategies (a compiled one calls the loss only while it traces)
EAGER = [name for name, cls in STRATEGIES.items() if not cls.compiled]


@pytest.mark.parametrize("case", ["mlp", "mse", "cnn"])
@pytest.mark.parametrize("strategy", EAGER)
@pytest.mark.parametrize("to_file", [False, True])
def test_loss_fn_is_three_hops_from_loss_surface(strategy, case, to_file, tmp_path):
    model, data, fn = _case(case)
    loss = RecordingLoss(fn)
    dirs = fastscape.random_directions(model, n=2, seed=1)
    try:
        fastscape.loss_surface(model, data, dirs, loss_fn=loss, grid=(-1, 1, 5), strategy=strategy, chunk_size=4,
                               batch_size=8, out=tmp_path / "s.h5" if to_file else None)
    except ValueError as err:  # the strategy refuses this model (or loss): nothing to trace
        if "cannot evaluate this model" not in str(err):
            raise
        pytest.skip(str(err))
    assert loss.calls
    chains = [_hops(frames) for frames in loss.calls]
    # the values of the grid: every chunk's calls go through the strategy's run
    grid_calls = [c for c in chains if any(f == "run" for _, f in c)]
    assert grid_calls
    for chain in grid_calls:
        assert len(chain) == 3, chain
        (m1, f1), (m2, f2), (m3, f3) = chain
        assert (m1, f1) == ("_core/evaluator.py", "evaluate")
        assert m2.startswith("_core/strategies/") and f2 == "run", chain
        assert (m3, f3) == ("_core/strategies/base.py", "__call__")
    # nothing else calls the loss from deeper than that (the probe that validates it is one hop)
    assert max(len(c) for c in chains) <= 3, max(chains, key=len)


def test_the_loss_line_is_in_one_place():
    """The one line of the package that calls ``loss_fn`` on a model's output for a surface."""
    sources = [p.read_text() for p in (PACKAGE / "_core").rglob("*.py")]
    assert sum(src.count("self.loss_fn(out, y)") for src in sources) == 1
    assert (PACKAGE / "_core" / "strategies" / "base.py").read_text().count("self.loss_fn(out, y)") == 1
