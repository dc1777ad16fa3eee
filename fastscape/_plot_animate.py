"""Animations as plotly figures with frames: the path crawling over the landscape, and a
regression net's fit improving during training.

A figure with frames is interactive when written to ``.html`` (play button and
slider) and becomes an animated GIF with ``save_figure(fig, "x.gif")``, each
frame drawn by matplotlib and assembled by Pillow: no ffmpeg, no browser.
"""

from __future__ import annotations

import numpy as np
import torch

from ._plot_common import axis_titles, check_path, check_surface, finite

__all__ = ["animate_path", "animate_fit", "snapshot_predictions"]


def _controls(fig, names, duration_ms):
    """Play/pause buttons and a slider over the frames ``names``."""
    play = dict(frame=dict(duration=duration_ms, redraw=True), fromcurrent=True, transition=dict(duration=0))
    fig.update_layout(
        updatemenus=[dict(
            type="buttons", direction="left", x=0.0, y=-0.08, xanchor="left", yanchor="top",
            buttons=[dict(label="Play", method="animate", args=[None, play]),
                     dict(label="Pause", method="animate",
                          args=[[None], dict(frame=dict(duration=0, redraw=False), mode="immediate")])],
        )],
        sliders=[dict(
            x=0.15, y=-0.05, len=0.85, currentvalue=dict(prefix="frame "),
            steps=[dict(label=n, method="animate",
                        args=[[n], dict(mode="immediate", frame=dict(duration=0, redraw=True))])
                   for n in names],
        )],
    )


def _frame_indices(t: int, max_frames: int) -> np.ndarray:
    if not isinstance(max_frames, (int, np.integer)) or max_frames < 1:
        raise ValueError(f"`max_frames` must be a positive integer; got {max_frames!r}.")
    return np.unique(np.linspace(0, t - 1, min(t, max_frames)).round().astype(int))


def animate_path(surface, path, *, path_loss=None, log: bool = True, axis_labels=None,
                 explained_variance=None, title: str = "Optimiser path", max_frames: int = 60,
                 duration_ms: int = 120, colorscale: str = "Viridis"):
    """The optimiser's path crawling over a plane's contours, one frame per recorded step.

    Parameters
    ----------
    surface : Surface along two directions
        Drawn as filled contours (log10 of the loss when ``log`` and it is positive).
    path : array of shape (T, 2)
        Plane coordinates of the path.
    path_loss : array of shape (T,), optional
        Loss at each step, shown in each frame's title.
    max_frames : int
        At most this many frames (steps are subsampled evenly; the last one is kept).

    Returns
    -------
    plotly.graph_objects.Figure
        Traces ``"loss"`` (contour), ``"path"`` (so far) and ``"now"`` (current
        point); frame ``f`` shows the path up to step ``steps[f]``, with
        ``frame.name == str(step)``.
    """
    import plotly.graph_objects as go

    check_surface(surface, 2, "animate_path")
    path = check_path(path)
    if path_loss is not None:
        path_loss = np.asarray(path_loss, dtype=float).reshape(-1)
        if len(path_loss) != len(path):
            raise ValueError(f"`path_loss` must hold one loss per path point ({len(path)}); got {len(path_loss)}.")
    z = finite(surface.loss).T
    vals = z[np.isfinite(z)]
    use_log = log and vals.size and vals.min() > 0
    zc = np.log10(z) if use_log else z
    xl, yl = axis_titles(surface, axis_labels, explained_variance)
    fig = go.Figure([
        go.Contour(x=surface.coords[0], y=surface.coords[1], z=zc, colorscale=colorscale, name="loss",
                   ncontours=25, colorbar=dict(title=dict(text="log10 loss" if use_log else "loss")),
                   line=dict(width=0.5)),
        go.Scatter(x=path[:1, 0], y=path[:1, 1], mode="lines+markers", name="path",
                   line=dict(color="crimson", width=2), marker=dict(size=5, color="crimson")),
        go.Scatter(x=path[:1, 0], y=path[:1, 1], mode="markers", name="now",
                   marker=dict(size=13, color="white", symbol="star", line=dict(width=1.5, color="black"))),
    ])

    def caption(i):
        loss = f", loss {path_loss[i]:.4g}" if path_loss is not None else ""
        return f"{title}: step {i}{loss}"

    steps = _frame_indices(len(path), max_frames)
    fig.frames = [go.Frame(
        name=str(i), traces=[1, 2],
        data=[go.Scatter(x=path[: i + 1, 0], y=path[: i + 1, 1]),
              go.Scatter(x=path[i : i + 1, 0], y=path[i : i + 1, 1])],
        layout=go.Layout(title=dict(text=caption(i))),
    ) for i in steps]
    pad = 0.02 * (np.ptp(path, axis=0) + 1e-12)
    fig.update_layout(
        title=dict(text=caption(0)), width=760, height=640, template="plotly_white",
        xaxis=dict(title=dict(text=xl), range=[min(surface.coords[0].min(), path[:, 0].min() - pad[0]),
                                               max(surface.coords[0].max(), path[:, 0].max() + pad[0])]),
        yaxis=dict(title=dict(text=yl), range=[min(surface.coords[1].min(), path[:, 1].min() - pad[1]),
                                               max(surface.coords[1].max(), path[:, 1].max() + pad[1])]),
        legend=dict(x=0.01, y=0.99, bgcolor="rgba(255,255,255,0.7)"),
        margin=dict(b=110),
    )
    _controls(fig, [f.name for f in fig.frames], duration_ms)
    return fig


def _snapshots(snapshots) -> list[dict]:
    if hasattr(snapshots, "__getitem__") and hasattr(snapshots, "__len__") and not isinstance(snapshots, dict):
        out = [snapshots[i] for i in range(len(snapshots))]
    else:
        raise TypeError(
            "`snapshots` must be a fastscape Trajectory or a list of parameter dicts; "
            f"got {type(snapshots).__name__}."
        )
    if not out:
        raise ValueError("`snapshots` is empty; expected at least one parameter snapshot.")
    return out


@torch.no_grad()
def snapshot_predictions(model: torch.nn.Module, snapshots, x: torch.Tensor) -> np.ndarray:
    """The model's outputs on ``x`` at every snapshot, without touching the model.

    All snapshots are evaluated at once: ``torch.func.vmap`` over
    ``functional_call`` on the stacked snapshot parameters (eval mode for the
    call; the model's weights and flags are left as they were).

    Parameters
    ----------
    model : nn.Module
    snapshots : Trajectory or list of dicts name -> Tensor
        Parameters keyed like ``model.named_parameters()`` (missing names keep
        the model's own values).
    x : Tensor of shape (N, ...)

    Returns
    -------
    ndarray of shape (T, N, ...)
        float64 outputs, one row per snapshot.
    """
    from torch.func import functional_call, vmap

    from ._core.params import model_buffers, model_device, model_parameters, model_state_guard

    snaps = _snapshots(snapshots)
    device = model_device(model)
    own = model_parameters(model)
    keys = [k for k in snaps[0] if k in own]
    if not keys:
        raise ValueError(
            f"`snapshots` share no parameter name with the model; expected names like {list(own)[:4]}."
        )
    dtype = own[keys[0]].dtype
    stacked = {k: torch.stack([s[k] for s in snaps]).to(device, dtype) for k in keys}
    shared = {**model_buffers(model), **{k: v for k, v in own.items() if k not in stacked}}
    x = torch.as_tensor(x).to(device, dtype)
    with model_state_guard(model):
        out = vmap(lambda p: functional_call(model, {**shared, **p}, (x,)))(stacked)
    return out.detach().cpu().double().numpy()


def animate_fit(model: torch.nn.Module, snapshots, x, y, *, steps=None, losses=None, num: int = 200,
                max_frames: int = 60, duration_ms: int = 120, title: str = "Fit during training"):
    """A 1-D regression net's prediction improving during training, one frame per snapshot.

    Parameters
    ----------
    model : nn.Module mapping inputs of shape (N, 1) to outputs of shape (N, 1)
        Only read: predictions come from :func:`snapshot_predictions`.
    snapshots : Trajectory or list of parameter dicts
        E.g. the result of :func:`fastscape.train`.
    x, y : array-like of shape (N,) or (N, 1)
        The training data, drawn as points.
    steps, losses : sequences of length T, optional
        Shown in the frame titles (default: ``snapshots.steps`` / ``.losses`` when present).
    num : int
        Points of the prediction curve across the data's x range.

    Returns
    -------
    plotly.graph_objects.Figure
        Traces ``"data"`` and ``"fit"``; frame ``f`` holds the fit of snapshot ``f``.
    """
    import plotly.graph_objects as go

    xd = np.asarray(x, dtype=float).reshape(-1)
    yd = np.asarray(y, dtype=float).reshape(-1)
    if xd.shape != yd.shape:
        raise ValueError(f"`x` and `y` must hold the same number of points; got {xd.size} and {yd.size}.")
    xs = np.linspace(xd.min(), xd.max(), num)
    pred = snapshot_predictions(model, snapshots, torch.tensor(xs, dtype=torch.float32).reshape(-1, 1))
    pred = pred.reshape(pred.shape[0], num, -1)[:, :, 0]
    t = pred.shape[0]
    steps = list(steps if steps is not None else getattr(snapshots, "steps", range(t)))
    losses = losses if losses is not None else getattr(snapshots, "losses", None)

    def caption(i):
        loss = f", loss {losses[i]:.4g}" if losses is not None and np.isfinite(losses[i]) else ""
        return f"{title}: step {steps[i]}{loss}"

    span = [min(yd.min(), np.nanmin(pred)), max(yd.max(), np.nanmax(pred))]
    pad = 0.05 * (span[1] - span[0] + 1e-12)
    fig = go.Figure([
        go.Scatter(x=xd, y=yd, mode="markers", name="data", marker=dict(size=4, color="steelblue", opacity=0.6)),
        go.Scatter(x=xs, y=pred[0], mode="lines", name="fit", line=dict(color="crimson", width=3)),
    ])
    frames = _frame_indices(t, max_frames)
    fig.frames = [go.Frame(name=str(i), traces=[1], data=[go.Scatter(x=xs, y=pred[i])],
                           layout=go.Layout(title=dict(text=caption(i)))) for i in frames]
    fig.update_layout(
        title=dict(text=caption(0)), width=760, height=520, template="plotly_white",
        xaxis=dict(title=dict(text="x"), range=[xs[0], xs[-1]]),
        yaxis=dict(title=dict(text="y"), range=[span[0] - pad, span[1] + pad]),
        margin=dict(b=110),
    )
    _controls(fig, [f.name for f in fig.frames], duration_ms)
    return fig
