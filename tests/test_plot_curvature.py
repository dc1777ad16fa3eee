"""Curvature views: what they draw is the data they were given."""

import numpy as np
import pytest
import torch

import fastscape
from fastscape.curvature import SpectralDensity


def _density():
    values = np.array([[-1.0, 0.5, 3.0], [-0.8, 0.2, 2.9]])
    weights = np.array([[0.2, 0.7, 0.1], [0.3, 0.6, 0.1]])
    grid = np.linspace(-2, 4, 200)
    return SpectralDensity(grid, np.full(200, 0.1), values, weights, 0.05, 10)


def _curvature_surface():
    x, y = np.linspace(-1, 1, 5), np.linspace(-1, 1, 4)
    X, Y = np.meshgrid(x, y, indexing="ij")
    lam_max, lam_min = 2.0 + X ** 2, X - 0.2  # lambda_min changes sign at x = 0.2
    return fastscape.Surface(coords=[x, y], loss=X ** 2 + Y ** 2,
                             metrics={"lambda_max": lam_max, "lambda_min": lam_min,
                                      "ratio": np.abs(lam_min / lam_max), "trace": lam_max + lam_min})


def test_spectral_density_marks_the_top_ritz_values():
    d = _density()
    ax = fastscape.plot.spectral_density(d, top=2)
    assert ax.get_yscale() == "log"
    marked = sorted(line.get_xdata()[0] for line in ax.lines[1:])
    assert marked == [0.5, 3.0]  # the two largest of the run reaching the largest value
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), d.grid)


def test_curvature_map_draws_the_zero_line_of_lambda_min():
    s = _curvature_surface()
    ax = fastscape.plot.curvature_map(s)
    zero = [c for c in ax.collections if list(getattr(c, "levels", [])) == [0.0]]
    assert len(zero) == 1
    xs = np.concatenate([p.vertices[:, 0] for p in zero[0].get_paths()])
    np.testing.assert_allclose(xs, 0.2, atol=1e-9)
    assert ax.figure.axes[-1].get_ylabel() == r"$|\lambda_{\min} / \lambda_{\max}|$"  # mathtext, not "λ_min"
    for value in ("lambda_max", "lambda_min", "ratio", "trace"):  # every view draws these by name
        fastscape.plot.contour(s, value=value)
        fastscape.plot.surface3d(s, value=value)


def test_curvature_map_marks_the_points_that_stopped_at_max_iter():
    s = _curvature_surface()
    s.metrics["converged"] = np.ones((5, 4))
    s.metrics["converged"][1, 2] = s.metrics["converged"][4, 0] = 0.0
    ax = fastscape.plot.curvature_map(s)
    (marks,) = [line for line in ax.lines if line.get_marker() == "x"]
    x, y = s.coords
    assert sorted(zip(marks.get_xdata(), marks.get_ydata())) == sorted([(x[1], y[2]), (x[4], y[0])])
    labels = ax.get_legend_handles_labels()[1]
    assert "stopped at max_iter (2)" in labels and r"$\lambda_{\min} = 0$" in labels
    s.metrics["converged"][:] = 1.0  # every point converged: nothing marked
    assert not [line for line in fastscape.plot.curvature_map(s).lines if line.get_marker() == "x"]


def test_curvature_map_panels_share_one_colour_scale():
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    a = _curvature_surface()
    b = _curvature_surface()
    b.metrics["ratio"] = 3.0 * a.metrics["ratio"]  # another range: on its own scale it would look the same
    levels = np.linspace(0.0, float(np.nanmax(b.metrics["ratio"])), 11)
    norm = Normalize(levels[0], levels[-1])
    fig = Figure()
    axes = fig.subplots(1, 2)
    for ax, s in zip(axes, (a, b)):
        fastscape.plot.curvature_map(s, ax=ax, levels=levels, norm=norm, colorbar=False)
    assert len(fig.axes) == 2  # no colour bar drawn by either panel
    sets = [next(c for c in ax.collections if getattr(c, "filled", False)) for ax in axes]
    for cs in sets:  # one value, one colour: the same bands and the same norm in both panels
        np.testing.assert_allclose(cs.levels, levels)
        assert (cs.norm.vmin, cs.norm.vmax) == (levels[0], levels[-1])
    np.testing.assert_allclose(sets[0].to_rgba(0.5), sets[1].to_rgba(0.5))


def test_sharpness_generalization_places_each_model():
    ax = fastscape.plot.sharpness_generalization({"small": 1.0, "large": 3.0}, {"small": 0.02, "large": 0.05})
    pts = sorted(tuple(c.get_offsets()[0]) for c in ax.collections)
    assert pts == [(1.0, 0.02), (3.0, 0.05)]
    with pytest.raises(ValueError, match="same labels; unmatched: \\['b'\\]"):
        fastscape.plot.sharpness_generalization({"a": 1.0, "b": 2.0}, {"a": 0.1})


def test_sharpness_labels_stay_inside_the_axes():
    """Model names near the sides stay inside the frame and clear of each other (the sharp-vs-flat
    figure's "large-batch" ran into the frame, then "small-batch" into "batch 64"): measured on the
    drawn figure, in the script's geometry."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # the sharp-vs-flat figure's middle panel: two models at one height, one midway, one at the right
    names = {"small-batch": (0.000286, 0.0244), "large-batch": (0.000163, 0.0222),
             "batch 64": (0.00041, 0.0244), "batch 256": (0.000194, 0.0267)}
    fig = Figure(figsize=(12, 4), layout="constrained")  # the script's three panels
    ax = fastscape.plot.sharpness_generalization({k: v[0] for k, v in names.items()},
                                                 {k: v[1] for k, v in names.items()}, ax=fig.subplots(1, 3)[1])
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    frame = ax.get_window_extent(renderer)
    texts = [t for t in ax.texts if t.get_text() in names]
    assert len(texts) == len(names)
    for t in texts:
        box = t.get_window_extent(renderer)
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1, t.get_text()
    boxes = [t.get_window_extent(renderer) for t in texts]
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            assert not boxes[i].overlaps(boxes[j]), (texts[i].get_text(), texts[j].get_text())


def test_edge_of_stability_draws_two_over_lr():
    ax = fastscape.plot.edge_of_stability([0, 10, 20], [1.0, 5.0, 9.0], lr=0.25)
    assert ax.lines[1].get_ydata()[0] == pytest.approx(8.0)
    with pytest.raises(ValueError, match="`lr` must be a positive number"):
        fastscape.plot.edge_of_stability([0], [1.0], lr=0)
    with pytest.raises(ValueError, match="same length"):
        fastscape.plot.edge_of_stability([0, 1], [1.0], lr=0.1)


def test_spectral_density_refuses_other_objects():
    with pytest.raises(TypeError, match="`density` must be a SpectralDensity"):
        fastscape.plot.spectral_density(torch.zeros(3))
