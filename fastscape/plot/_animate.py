"""Animations: the path crawling over a plane, and a regression net's fit improving.

Each returns a plotly figure with frames (interactive in ``.html``: a play
button and a slider) that also carries its matplotlib drawing, so
``fastscape.plot.save(fig, "x.gif")`` draws every frame natively with matplotlib
and writes them with Pillow: no browser, no ffmpeg.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ._common import (
    attach_mpl,
    axis_titles,
    check_path,
    check_surface,
    finite,
    log10_floor,
    new_figure,
    path_unit,
    require,
    resolve_value,
)
from ._common import use_log as log_rule
from ._contour import round_ticks, tick_text
from ._display import displays
from ._marks import path_heights, stored_path

if TYPE_CHECKING:  # the return annotations only
    import plotly.graph_objects as go

__all__ = ["animate_path", "animate_fit", "frame_indices", "change_frames", "HOLD_MS"]


def _controls(fig, names, duration_ms, prefix, labels=None):
    """Play/pause buttons at the left and a slider to their right whose label sits at its right end.

    ``names`` are the frames' names; ``labels`` what the slider prints for each
    (default the names): the same count the frame's title prints.

    The slider starts at a fifth of the width, so the two buttons (about 120
    pixels together) never cover the slider's current-value label.
    """
    play = dict(frame=dict(duration=duration_ms, redraw=True), fromcurrent=True, transition=dict(duration=0))
    fig.update_layout(
        updatemenus=[dict(
            type="buttons", direction="left", x=0.0, y=0.0, xanchor="left", yanchor="top",
            pad=dict(t=62, r=10), showactive=False,
            buttons=[dict(label="Play", method="animate", args=[None, play]),
                     dict(label="Pause", method="animate",
                          args=[[None], dict(frame=dict(duration=0, redraw=False), mode="immediate")])],
        )],
        sliders=[dict(
            x=0.2, len=0.8, y=0.0, xanchor="left", yanchor="top", pad=dict(t=40, b=10),
            currentvalue=dict(prefix=prefix, xanchor="right", font=dict(size=13)),
            steps=[dict(label=lab, method="animate",
                        args=[[n], dict(mode="immediate", frame=dict(duration=0, redraw=True))])
                   for n, lab in zip(names, names if labels is None else labels)],
        )],
        margin=dict(b=115),
    )


#: a GIF holds its last frame this long (ms), so the end of the animation can be read before it loops
HOLD_MS = 1500

#: a fit that moves less than this share of the picture's height (RMS) is the same picture
SAME_FIT = 0.002


def change_frames(curves: np.ndarray, max_frames: int, height: float) -> np.ndarray:
    """At most ``max_frames`` indices into the (T, N) ``curves``, spread evenly over how much the curve moves.

    The cumulative RMS change of the curve from snapshot to snapshot is split
    into equal parts, so frames fall where the fit changes and none is spent on
    a fit that no longer moves; the first and the last snapshot are kept, and a
    frame whose curve differs from the one before by less than :data:`SAME_FIT`
    of ``height`` is dropped (the last snapshot replaces its look-alike).
    """
    t = len(curves)
    if not isinstance(max_frames, (int, np.integer)) or isinstance(max_frames, bool) or max_frames < 1:
        raise ValueError(f"`max_frames` must be a positive integer; got {max_frames!r}.")
    c = np.where(np.isfinite(curves), curves, 0.0)
    move = np.sqrt(np.mean(np.diff(c, axis=0) ** 2, axis=1)) if t > 1 else np.zeros(0)
    walked = np.concatenate([[0.0], np.cumsum(move)])
    if t == 1 or max_frames == 1 or walked[-1] == 0.0:
        return np.array([t - 1] if max_frames == 1 or walked[-1] == 0.0 else [0])
    targets = np.linspace(0.0, walked[-1], max_frames - 1, endpoint=False)
    picks = np.unique(np.concatenate([np.searchsorted(walked, targets, side="left"), [t - 1]]))
    tol = SAME_FIT * (height if height > 0 else 1.0)
    kept = [int(picks[0])]
    for i in picks[1:]:
        if np.sqrt(np.mean((c[i] - c[kept[-1]]) ** 2)) < tol:
            if i == t - 1:
                kept[-1] = int(i)  # the end replaces the frame that already looked like it
            continue
        kept.append(int(i))
    return np.array(kept)


def frame_indices(t: int, max_frames: int) -> np.ndarray:
    """At most ``max_frames`` indices into ``t`` snapshots, evenly spread, first and last kept."""
    if not isinstance(max_frames, (int, np.integer)) or isinstance(max_frames, bool) or max_frames < 1:
        raise ValueError(f"`max_frames` must be a positive integer; got {max_frames!r}.")
    return np.unique(np.linspace(0, t - 1, min(t, max_frames)).round().astype(int))


@displays
def animate_path(surface, path=None, *, value: str = "loss", path_loss=None, log: bool = True, axis_labels=None,
                 explained_variance=None, title: str = "Optimiser path", max_frames: int = 60,
                 duration_ms: int = 120, colorscale: str = "Viridis", path_label: str | None = None) -> go.Figure:
    """The optimiser's path crawling over a plane's contours, one frame per recorded snapshot.

    Parameters
    ----------
    surface : Surface along two directions
        Drawn as filled contours with lines (log10 of a positive loss when ``log``).
    path : array of shape (T, 2), optional
        Plane coordinates of the path. Default: the path stored with the
        surface (``surface.path``).
    value : str
        ``"loss"`` or a metric of the surface.
    path_loss : array of shape (T,), optional
        The snapshots' own loss (e.g. ``trajectory.losses``), shown in each
        frame's title as "snapshot's loss". Default: ``value`` on the plane at
        the marker, interpolated from the grid and titled "on the plane" (on a
        PCA plane a snapshot lies off the plane, and its own loss differs from
        what the contours read under the marker).
    max_frames : int
        At most this many frames (snapshots are subsampled evenly; the last is kept).
    path_label : str, optional
        What one snapshot is, in the titles and the slider. Default: the unit
        the path carries ("epoch" for :func:`fastscape.project` of a
        :func:`fastscape.train` trajectory, numbered by its epochs), else
        "recorded snapshot".

    Returns
    -------
    plotly.graph_objects.Figure
        Traces ``"loss"`` (contour), ``"path"`` (so far) and ``"now"`` (current
        point); frame ``f`` shows the path up to snapshot ``int(frame.name)``,
        never the snapshots after it.
        Saved as ``.gif``, each frame is drawn by matplotlib with a colour bar
        and labelled contour lines.
    """
    go = require("plotly.graph_objects", "`fastscape.plot.animate_path`")
    check_surface(surface, 2, "animate_path")
    v = resolve_value(surface, value)
    path = stored_path(surface, path)
    path_label, counts = path_unit(path, path_label)
    path = check_path(path)
    if path is None:
        raise ValueError("`path` is required: pass the (T, 2) plane coordinates, or a surface with `surface.path`.")
    counts = np.arange(len(path)) if counts is None else counts
    if path_loss is None:
        path_loss, which = path_heights(surface, path, value), f"{v.label} on the plane"
    else:
        path_loss, which = np.asarray(path_loss, dtype=float).reshape(-1), f"snapshot's {v.label}"
        if len(path_loss) != len(path):
            raise ValueError(f"`path_loss` must hold one loss per path point ({len(path)}); got {len(path_loss)}.")
    z = finite(v.array).T
    vals = z[np.isfinite(z)]
    use_log = log_rule(vals, log, v.is_loss)
    zc = log10_floor(z) if use_log else z
    colorbar = dict(title=dict(text=f"{v.label} (log scale)" if use_log else v.label))
    if use_log:  # round ticks read in loss units, placed on the log10 heights
        ticks = round_ticks(10.0 ** float(np.nanmin(zc)), 10.0 ** float(np.nanmax(zc)), True)
        colorbar.update(tickvals=np.log10(ticks).tolist(), ticktext=[tick_text(t) for t in ticks])
    xl, yl = axis_titles(surface, axis_labels, explained_variance)

    def caption(i):
        return f"{title}: {path_label} {counts[i]}, {which} {path_loss[i]:.4g}"

    pad = 0.02 * (np.ptp(path, axis=0) + 1e-12)
    xr = [min(surface.coords[0].min(), path[:, 0].min() - pad[0]), max(surface.coords[0].max(), path[:, 0].max() + pad[0])]
    yr = [min(surface.coords[1].min(), path[:, 1].min() - pad[1]), max(surface.coords[1].max(), path[:, 1].max() + pad[1])]
    fig = go.Figure([
        go.Contour(x=surface.coords[0], y=surface.coords[1], z=zc, colorscale=colorscale, name=v.label,
                   ncontours=25, colorbar=colorbar, line=dict(width=0.5),
                   contours=dict(showlabels=not use_log, labelfont=dict(size=9))),
        go.Scatter(x=path[:1, 0], y=path[:1, 1], mode="lines+markers", name="path",
                   line=dict(color="crimson", width=2), marker=dict(size=5, color="crimson")),
        go.Scatter(x=path[:1, 0], y=path[:1, 1], mode="markers", name="now",
                   marker=dict(size=13, color="white", symbol="star", line=dict(width=1.5, color="black"))),
    ])
    steps = frame_indices(len(path), max_frames)
    fig.frames = [go.Frame(
        name=str(i), traces=[1, 2],
        data=[go.Scatter(x=path[: i + 1, 0], y=path[: i + 1, 1]),
              go.Scatter(x=path[i : i + 1, 0], y=path[i : i + 1, 1])],
        layout=go.Layout(title=dict(text=caption(i))),
    ) for i in steps]
    fig.update_layout(
        title=dict(text=caption(0)), template="plotly_white", autosize=True,
        xaxis=dict(title=dict(text=xl), range=xr), yaxis=dict(title=dict(text=yl), range=yr),
        legend=dict(x=0.01, y=0.99, bgcolor="rgba(255,255,255,0.7)"),
    )
    _controls(fig, [f.name for f in fig.frames], duration_ms, prefix=f"{path_label} ",
              labels=[str(counts[i]) for i in steps])

    def make():
        from ._contour import contour

        mfig = new_figure((7.4, 6.0))
        ax = contour(surface, value=value, ax=mfig.add_subplot(), levels=25, log=log, axis_labels=(xl, yl),
                     cmap=colorscale.lower() if isinstance(colorscale, str) else "viridis", legend=False,
                     path=False, minimum=False)  # the frames draw the path so far, never the whole one
        ax.set_xlim(*xr)
        ax.set_ylim(*yr)
        ax.scatter(*path[0], marker="o", s=60, facecolors="white", edgecolors="k", zorder=5)
        (trail,) = ax.plot(path[:1, 0], path[:1, 1], "-o", color="crimson", markersize=3, linewidth=1.6, zorder=6)
        now = ax.scatter(path[:1, 0], path[:1, 1], marker="*", s=220, color="white", edgecolors="k", zorder=7)

        def update(i):
            trail.set_data(path[: i + 1, 0], path[: i + 1, 1])
            now.set_offsets(path[i : i + 1])
            ax.set_title(caption(i), fontsize=10)

        update(int(steps[-1]))
        return mfig, update

    return attach_mpl(fig, make, frames=steps.tolist(), size=(900, 760), hold_ms=HOLD_MS)


@displays
def animate_fit(predictions, *, data=None, max_frames: int = 60, duration_ms: int = 120,
                title: str = "Fit during training") -> go.Figure:
    """A 1-D regression net's prediction improving during training, one frame per snapshot.

    Parameters
    ----------
    predictions : SnapshotPredictions
        From :func:`fastscape.snapshot_predictions` on inputs of shape (N,) or
        (N, 1) (e.g. a ``linspace`` over the data's range): the curve of each
        frame. Its ``steps`` and ``losses`` go into the frame titles.
    data : pair (x, y) of arrays of shape (N,) or (N, 1), optional
        The training data, drawn as points.
    max_frames : int
        At most this many frames, spread over how much the fit moves
        (:func:`change_frames`): many where it changes, none where it no longer
        does; the first and last snapshot are always shown.

    Returns
    -------
    plotly.graph_objects.Figure
        Traces ``"data"`` (when given, drawn over the fit) and ``"fit"``; frame
        ``f`` holds the fit of snapshot ``int(frame.name)``; its title and the
        slider both count the snapshot's step. Saved as ``.gif``, frames are
        drawn by matplotlib and the last one is held for :data:`HOLD_MS`.
    """
    go = require("plotly.graph_objects", "`fastscape.plot.animate_fit`")
    for attr in ("x", "outputs", "steps"):
        if not hasattr(predictions, attr):
            raise TypeError("`predictions` must be the result of fastscape.snapshot_predictions; got "
                            f"{type(predictions).__name__}.")
    xs = np.asarray(predictions.x, dtype=float)
    if xs.ndim > 2 or (xs.ndim == 2 and xs.shape[1] != 1):
        raise ValueError(f"`animate_fit` needs 1-D inputs of shape (N,) or (N, 1); got {xs.shape}.")
    xs = xs.reshape(-1)
    out = np.asarray(predictions.outputs, dtype=float)
    pred = out.reshape(out.shape[0], len(xs), -1)[:, :, 0]
    order = np.argsort(xs, kind="stable")
    xs, pred = xs[order], pred[:, order]
    steps = list(predictions.steps)
    losses = getattr(predictions, "losses", None)
    if data is not None:
        xd = np.asarray(data[0], dtype=float).reshape(-1)
        yd = np.asarray(data[1], dtype=float).reshape(-1)
        if xd.shape != yd.shape:
            raise ValueError(f"`data` x and y must hold the same number of points; got {xd.size} and {yd.size}.")
    else:
        xd = yd = np.empty(0)

    def caption(i):
        loss = f", loss {losses[i]:.4g}" if losses is not None and np.isfinite(losses[i]) else ""
        return f"{title}: step {steps[i]}{loss}"

    finite_pred = pred[np.isfinite(pred)]
    lo = min([*yd, *finite_pred]) if (yd.size or finite_pred.size) else 0.0
    hi = max([*yd, *finite_pred]) if (yd.size or finite_pred.size) else 1.0
    pad = 0.05 * (hi - lo + 1e-12)
    yr = [lo - pad, hi + pad]
    traces = []
    if data is not None:  # over the fit (zorder), dark dots on a lighter, wider line: both stay visible
        traces.append(go.Scatter(x=xd, y=yd, mode="markers", name="data", zorder=2,
                                 marker=dict(size=4, color="#08306b", opacity=0.85)))
    fit_index = len(traces)
    traces.append(go.Scatter(x=xs, y=pred[0], mode="lines", name="fit", zorder=1,
                             line=dict(color="#ff7f0e", width=4)))
    fig = go.Figure(traces)
    frames = change_frames(pred, max_frames, yr[1] - yr[0])
    fig.frames = [go.Frame(name=str(i), traces=[fit_index], data=[go.Scatter(x=xs, y=pred[i])],
                           layout=go.Layout(title=dict(text=caption(i)))) for i in frames]
    fig.update_layout(
        title=dict(text=caption(int(frames[0]))), template="plotly_white", autosize=True,
        xaxis=dict(title=dict(text="x"), range=[xs[0], xs[-1]]),
        yaxis=dict(title=dict(text="y"), range=yr),
    )
    # the slider counts what the titles count: the snapshot's step
    _controls(fig, [f.name for f in fig.frames], duration_ms, prefix="step ", labels=[str(steps[i]) for i in frames])

    def make():
        mfig = new_figure((7.4, 4.8))
        ax = mfig.add_subplot()
        if data is not None:
            ax.scatter(xd, yd, s=9, color="#08306b", alpha=0.85, label="data", edgecolors="none", zorder=3)
        (fit,) = ax.plot(xs, pred[0], color="#ff7f0e", linewidth=3.5, label="fit", zorder=2)
        ax.set_xlim(xs[0], xs[-1])
        ax.set_ylim(*yr)
        ax.set_xlabel("x")
        ax.set_ylabel("y")
        ax.legend(loc="upper right", fontsize=8)

        def update(i):
            fit.set_ydata(pred[i])
            ax.set_title(caption(i), fontsize=10)

        update(int(frames[-1]))
        return mfig, update

    return attach_mpl(fig, make, frames=frames.tolist(), size=(900, 600), hold_ms=HOLD_MS)
