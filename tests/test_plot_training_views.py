"""Views of training read as what they are, checked on the figure's data: learning-rate steps are
alternatives from the current point (closed form of a linear regression), the fit animation shows
only frames where the fit changes with the data over it, and several runs get distinct colours."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import fastscape
from fastscape import plot
from fastscape._surface import Surface
from tests.models import linear_regression_case


def _drawn(fig):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


# ----------------------------------------------------------------------------- learning-rate steps


def _linreg():
    return linear_regression_case(seed=7, n=80, noise=0.2, bias=0.5)


def test_lr_steps_are_alternatives_from_now_each_landing_where_the_closed_form_puts_it():
    model, x, y = _linreg()
    names = ["weight", "bias"]
    dirs, origin = fastscape.axis_directions(model, names), fastscape.axis_origin(model, names)
    lrs = (0.05, 0.2, 0.4)
    steps = fastscape.lr_steps(model, (x, y), dirs, origin=origin, loss_fn=F.mse_loss, lrs=lrs)
    # the closed form: MSE of w x + b, gradient 2 mean(r x), 2 mean(r) at (w, b) = (-0.5, 0.5)
    xn, yn = x.double().numpy().ravel(), y.double().numpy().ravel()
    now = np.array([-0.5, 0.5])
    r = now[0] * xn + now[1] - yn
    g = np.array([2 * np.mean(r * xn), 2 * np.mean(r)])
    landings = now - np.array(lrs)[:, None] * g
    w, b = np.linspace(-1.5, 4.0, 23), np.linspace(-1.5, 3.5, 21)
    surface = Surface(coords=[w, b], loss=np.array([[np.mean((wi * xn + bi - yn) ** 2) for bi in b] for wi in w]))
    ax = plot.lr_steps(steps, surface)
    arrows = [t for t in ax.texts if getattr(t, "arrow_patch", None) is not None]
    assert len(arrows) == len(lrs)
    r_ = _drawn(ax.figure)
    to_px = ax.transData.transform
    now_marker = next(c for c in ax.collections if c.get_label().startswith("now"))
    radius = np.sqrt(now_marker.get_sizes()[0]) / 2 * ax.figure.dpi / 72  # marker radius in pixels
    np.testing.assert_allclose(now_marker.get_offsets()[0], now, atol=1e-6)
    for arrow, lr, land in zip(arrows, lrs, landings):
        np.testing.assert_allclose(arrow.xy, land, rtol=1e-5, atol=1e-6)  # the tip: where this lr lands
        # the tail inside the "now" marker, not at another step's landing: an alternative, not a chain
        tail = np.asarray(arrow.xyann, dtype=float)
        assert np.hypot(*(to_px(tail) - to_px(now))) < radius
        others = [l for l in landings if not np.allclose(l, land)]
        assert all(np.hypot(*(to_px(tail) - to_px(o))) > 3 * radius for o in others)
    # each labelled with its learning rate next to its landing
    texts = {t.get_text(): t for t in ax.texts if t.get_text().startswith("lr=")}
    for lr, land in zip(lrs, landings):
        np.testing.assert_allclose(texts[f"lr={lr:g}"].xy, land, rtol=1e-5, atol=1e-6)
    # the arrows leave "now" side by side: no two tails in the same place
    tails = np.array([to_px(np.asarray(a.xyann, float)) for a in arrows])
    assert min(np.hypot(*(p - q)) for i, p in enumerate(tails) for q in tails[i + 1:]) > 4
    del r_


def test_a_step_off_the_grid_still_starts_at_now():
    w, b = np.linspace(-1.5, 4, 23), np.linspace(-1.5, 3.5, 21)
    surface = Surface(coords=[w, b], loss=1 + (w[:, None] - 2) ** 2 + (b[None, :] - 1) ** 2)
    steps = SimpleNamespace(lrs=np.array([0.05, 2.0]), start=np.array([-0.5, 0.5]),
                            ends=np.array([[0.0, 0.8], [9.5, 6.5]]), loss=12.4, losses=np.array([7.4, 400.0]))
    ax = plot.lr_steps(steps, surface)
    arrows = [t for t in ax.texts if getattr(t, "arrow_patch", None) is not None]
    _drawn(ax.figure)
    far = arrows[1]
    assert far.xy[0] == pytest.approx(w[-1]) or far.xy[1] == pytest.approx(b[-1])  # clipped at the grid's edge
    assert np.hypot(*(ax.transData.transform(far.xyann) - ax.transData.transform(steps.start))) < 10


# ----------------------------------------------------------------------------- the fit animation


def _settling_fit(t=120, settle=20, n=50):
    """A fit that moves from a line to a sine over the first ``settle`` snapshots and then stays put."""
    x = np.linspace(-3, 3, n)
    a = np.minimum(np.arange(t) / settle, 1.0)
    curves = (1 - a)[:, None] * (0.2 * x)[None, :] + a[:, None] * np.sin(x)[None, :]
    return SimpleNamespace(x=x, outputs=curves[:, :, None], steps=np.arange(t) * 10,
                           losses=np.linspace(1.0, 0.01, t))


def test_fit_animation_spends_its_frames_where_the_fit_changes(tmp_path):
    import re

    from PIL import Image

    from fastscape.plot._animate import HOLD_MS
    from fastscape.plot._common import mpl_form

    pred = _settling_fit()
    x = pred.x
    fig = plot.animate_fit(pred, data=(x, np.sin(x)), max_frames=12)
    idx = [int(f.name) for f in fig.frames]
    assert idx[0] == 0 and idx[-1] == 119 and len(idx) <= 12  # the start and the end are always shown
    assert all(i <= 20 for i in idx[:-1])  # every other frame where the fit still moves
    assert len(idx) >= 8  # ... and not just the two ends
    ys = [np.asarray(f.data[0].y, dtype=float) for f in fig.frames]
    for i, (a, b) in enumerate(zip(ys, ys[1:])):  # no two frames alike
        assert np.sqrt(np.mean((a - b) ** 2)) > 1e-3, (idx[i], idx[i + 1])
        np.testing.assert_allclose(b, pred.outputs[idx[i + 1], :, 0])
    # the slider and the title count the same thing: the snapshot's step
    slider = fig.layout.sliders[0]
    assert slider.currentvalue.prefix == "step "
    for step, frame, i in zip(slider.steps, fig.frames, idx):
        shown = re.search(r"step (\d+)", frame.layout.title.text).group(1)
        assert step.label == shown == str(pred.steps[i])
    # the data over the fit: in plotly and in the GIF's matplotlib drawing
    data, fit = fig.data
    assert data.name == "data" and fit.name == "fit" and data.zorder > fit.zorder
    form = mpl_form(fig)
    mfig, _ = form.make()
    ax = mfig.axes[0]
    fit_line = next(l for l in ax.lines if l.get_label() == "fit")
    dots = next(c for c in ax.collections if c.get_label() == "data")
    assert dots.get_zorder() > fit_line.get_zorder()
    # the GIF: one frame per chosen snapshot, the last one held
    out = plot.save(fig, tmp_path / "fit.gif", dpi=40, frame_ms=100)
    with Image.open(out) as im:
        assert im.n_frames == len(idx)
        durations = []
        for k in range(im.n_frames):
            im.seek(k)
            durations.append(im.info["duration"])
    assert durations[:-1] == [100] * (len(idx) - 1) and durations[-1] == 100 + HOLD_MS


def test_a_fit_that_changes_steadily_gets_evenly_spread_frames():
    from fastscape.plot._animate import change_frames

    t = np.arange(41)
    curves = t[:, None] * np.ones((1, 5))  # the same change at every snapshot
    np.testing.assert_array_equal(change_frames(curves, 11, 40.0), np.arange(0, 41, 4))
    assert list(change_frames(np.ones((7, 5)), 5, 1.0)) == [6]  # nothing moves: the end alone
    with pytest.raises(ValueError, match="`max_frames` must be a positive integer"):
        change_frames(curves, 0, 1.0)


# ----------------------------------------------------------------------------- several runs on one plane


def test_each_run_gets_its_own_qualitative_colour_and_dash_over_a_grey_loss():
    import colorsys

    from matplotlib.colors import to_rgb
    from matplotlib.contour import QuadContourSet

    t = np.linspace(0, 1, 12)[:, None]
    names = ["SGD", "SGD + momentum", "Adam", "RMSprop", "Adagrad", "Nesterov"]
    # SGD and momentum on the same track: the case where one used to hide the other
    coords = {n: np.array([[-3.0, -1.5]]) + t * [2.5 + 0.02 * (k > 1) * k, 1.5 + 0.3 * (k > 1) * k]
              for k, n in enumerate(names)}
    cmp = SimpleNamespace(coords=coords, explained_variance_ratio=np.array([0.8, 0.1]))
    x, y = np.linspace(-3.5, 1.5, 26), np.linspace(-2.0, 3.5, 24)
    surface = Surface(coords=[x, y], loss=0.05 + 0.2 * x[:, None] ** 2 + 0.3 * y[None, :] ** 2)
    ax = plot.optimizer_comparison(cmp, surface)
    runs = [next(l for l in ax.lines if l.get_label() == n) for n in names]
    colours = [np.array(to_rgb(l.get_color())) for l in runs]
    # every pair of runs told apart by colour (RGB distance) and by dash pattern
    assert min(np.linalg.norm(a - b) for i, a in enumerate(colours) for b in colours[i + 1:]) > 0.25
    dashes = [str(l.get_linestyle()) + str(getattr(l, "_unscaled_dash_pattern", None)) for l in runs]
    assert len(set(dashes)) == len(runs)
    # the first run (drawn first, underneath) is wider, so it shows at the sides of one on its track
    assert runs[0].get_linewidth() > runs[1].get_linewidth()
    # the loss under them is grey: no run's colour is also a loss colour
    filled = next(c for c in ax.collections if isinstance(c, QuadContourSet) and c.filled)
    greys = filled.cmap(np.linspace(0, 1, 16))[:, :3]
    assert np.allclose(greys, greys[:, :1], atol=0.02)
    assert all(colorsys.rgb_to_hsv(*c)[1] > 0.4 for c in colours if not np.allclose(c, c[0], atol=0.05))
    # a caller's colour map still wins
    ax = plot.optimizer_comparison(cmp, surface, cmap="viridis")
    filled = next(c for c in ax.collections if isinstance(c, QuadContourSet) and c.filled)
    assert filled.cmap.name == "viridis"
