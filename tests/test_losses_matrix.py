"""Surfaces of every loss x model x strategy that applies, against a plain per-point
float64 loop (issue 11: the matrix that catches a loss or a model a mechanism breaks on)."""

import numpy as np
import pytest
import torch
from torch import nn

import fastscape
from tests.matrix_cases import LOSSES, MODELS, STRATEGIES, make_case, reference_line_or_plane
from tests.models import assert_unchanged, snapshot

AXES = [np.array([-1.0, 0.0, 0.5]), np.array([-0.5, 0.0, 1.0])]  # non-square steps, origin included
_REFERENCE: dict = {}

CASES = [(m, loss, s) for m in MODELS for loss in LOSSES for s in STRATEGIES[m]]


def _reference(model_name, loss_name, model, x, y, loss_fn, dirs):
    key = (model_name, loss_name)
    if key not in _REFERENCE:
        _REFERENCE[key] = reference_line_or_plane(model, x, y, loss_fn, dirs, AXES)
    return _REFERENCE[key]


@pytest.mark.parametrize("model_name, loss_name, strategy", CASES)
def test_surface_matches_per_point_float64_loop(model_name, loss_name, strategy):
    model, x, y, loss_fn = make_case(model_name, loss_name)
    snap = snapshot(model)
    dirs = fastscape.random_directions(model, 2, seed=0)
    kwargs = dict(loss_fn=loss_fn, grid=AXES, device="cpu", chunk_size=4, batch_size=3, strategy=strategy,
                  progress=False)
    if model_name == "lstm" and strategy == "auto":
        with pytest.warns(fastscape.FallbackWarning):
            surf = fastscape.loss_surface(model, (x, y), dirs, **kwargs)
    else:
        surf = fastscape.loss_surface(model, (x, y), dirs, **kwargs)
    if strategy != "auto":
        assert surf.meta["strategy"] == strategy
    ref = _reference(model_name, loss_name, model, x, y, loss_fn, dirs)
    np.testing.assert_allclose(surf.loss, ref, rtol=2e-5, atol=2e-6)
    assert_unchanged(model, snap)


def test_cli_losses_are_all_in_the_matrix():
    from fastscape._cli import LOSSES as CLI_LOSSES

    assert set(CLI_LOSSES) <= set(LOSSES)


def test_mlp_strategy_accepts_a_sequential_that_starts_with_flatten():
    """Issue 11, defect 3: the README lists nn.Flatten among what "mlp" takes; images
    flattened by the Sequential's first module are the commonest MNIST MLP."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(9, 4), nn.ReLU(), nn.Linear(4, 3))
    x, y = torch.randn(8, 1, 3, 3, generator=g), torch.randint(0, 3, (8,), generator=g)
    loss_fn = LOSSES["cross_entropy"][0]
    dirs = fastscape.random_directions(model, 2, seed=0)
    surf = fastscape.loss_surface(model, (x, y), dirs, loss_fn=loss_fn, grid=AXES, device="cpu", chunk_size=4,
                                  strategy="mlp", progress=False)
    assert surf.meta["strategy"] == "mlp"
    ref = reference_line_or_plane(model, x, y, loss_fn, dirs, AXES)
    np.testing.assert_allclose(surf.loss, ref, rtol=2e-5, atol=2e-6)
    # and "affine", which "mlp" builds on, takes the flattened input too
    surf = fastscape.loss_surface(model, (x, y), dirs, loss_fn=loss_fn, grid=AXES, device="cpu", chunk_size=4,
                                  strategy="affine", progress=False)
    np.testing.assert_allclose(surf.loss, ref, rtol=2e-5, atol=2e-6)
