"""The main job: the error surface of source article 000, trained and drawn headless.

A one-hidden-neuron tanh net without biases (two weights, w1 and w2) is fitted
with SGD to the article's noisy function where it is ``7.3 sin x`` (x in [-2, 2),
its middle piece); its MSE surface is computed over the raw weights on a fine
grid framed around the path and the basin, and drawn with the SGD path: an
interactive HTML page and a static PNG contour with a caption.

Why the middle piece: over the article's whole data (x ~ N(1, 4.5), mostly on
the linear and cubic tails) one tanh unit cannot fit the function, and the MSE
keeps falling along the valley w1 -> 0, w2 -> infinity (the net turns linear), so
no frame holds a minimum: the picture was a shelf at MSE ~130 with the grid's
minimum on its edge. On the middle piece the net fits the sine, the basin has a
minimum (MSE ~1, the noise's variance) and SGD visibly descends into it.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["piecewise_data", "middle_piece", "TwoWeightNet", "run_demo", "CAPTION"]

#: what the demo's picture shows, printed under it
CAPTION = ("Seed article 000's net x \u2192 w\u2082\u00b7tanh(w\u2081\u00b7x) (two weights, no biases), SGD lr 0.01, batch 64, "
           "from (\u22121, \u22121);\nthe article's data where y = 7.3 sin x + N(0, 1) noise (x in [\u22122, 2)). "
           "Test MSE in squared target units: 1 is the noise floor, {var:.0f} predicting 0.")


def piecewise_data(n: int = 10_000, seed: int = 42) -> tuple[torch.Tensor, torch.Tensor]:
    """``x ~ N(1, 4.5)``; ``y = 2x+5`` for x < -2, ``7.3 sin x`` on [-2, 2), ``-0.03x^3+2``
    above, plus N(0, 1) noise. Returns float32 tensors of shape (n, 1)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(1.0, 4.5, n)
    y = np.piecewise(x, [x < -2, (x >= -2) & (x < 2), x >= 2],
                     [lambda v: 2 * v + 5, lambda v: 7.3 * np.sin(v), lambda v: -0.03 * v**3 + 2])
    y = y + rng.normal(0.0, 1.0, n)
    as_t = lambda a: torch.tensor(a, dtype=torch.float32).reshape(-1, 1)  # noqa: E731
    return as_t(x), as_t(y)


def middle_piece(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The samples with x in [-2, 2): where the article's function is ``7.3 sin x``."""
    keep = ((x >= -2) & (x < 2)).reshape(-1)
    return x[keep], y[keep]


class TwoWeightNet(nn.Module):
    """x -> w2 * tanh(w1 * x): one hidden tanh neuron, no biases, two weights."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, 1, bias=False), nn.Tanh(), nn.Linear(1, 1, bias=False))

    def forward(self, x):
        return self.net(x)


def run_demo(out="fastscape-out", *, resolution: int = 401, epochs: int = 25, lr: float = 1e-2,
             seed: int = 0, log=print) -> dict:
    """Train, compute the surface over (w1, w2) around [-2, 2]^2 and the path, write HTML and PNG.

    Returns a dict of what was written and measured.
    """
    # the demo is a user of the public API, nothing more
    from fastscape import axis_directions, axis_origin, loss_surface, plot, project, train

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    x, y = middle_piece(*piecewise_data())
    split = int(0.8 * len(x))
    x_train, y_train, x_test, y_test = x[:split], y[:split], x[split:], y[split:]
    model = TwoWeightNet()
    with torch.no_grad():  # the article's starting point
        model.net[0].weight.fill_(-1.0)
        model.net[2].weight.fill_(-1.0)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x_train, y_train),
                                         batch_size=64, shuffle=True,
                                         generator=torch.Generator().manual_seed(seed))
    loss_fn = nn.functional.mse_loss
    t0 = time.perf_counter()
    traj = train(model, loader, loss_fn=loss_fn, optimizer=torch.optim.SGD(model.parameters(), lr=lr),
                 epochs=epochs, eval_data=(x_test, y_test))
    t_train = time.perf_counter() - t0

    names = ["net.0.weight", "net.2.weight"]
    dirs, origin = axis_directions(model, names), axis_origin(model, names, at="zero")
    path = project(traj, dirs, origin=origin)  # the two raw weights per epoch (it knows it counts epochs)
    surface = loss_surface(model, (x_test, y_test), dirs, origin=origin, loss_fn=loss_fn,
                           grid=path.frame(resolution), device="cpu", progress=False)
    labels = ("w\u2081 (hidden weight)", "w\u2082 (output weight)")
    caption = CAPTION.format(var=float((y_test**2).mean()))
    fig3d = plot.surface3d(surface, path=path, path_loss=np.array(traj.losses), axis_labels=labels,
                           path_label="epoch", log=True, title="Test MSE over the two raw weights, with the SGD path")
    html = plot.save(fig3d, out / "surface3d.html")
    ax = plot.contour(surface, path=path, axis_labels=labels,
                      title="Test MSE over the raw weights, SGD path (a dot per epoch)")
    ax.figure.set_size_inches(7.6, 7.0)
    ax.figure.text(0.5, 0.005, caption, ha="center", va="bottom", fontsize=7.5, wrap=True)
    ax.figure.get_layout_engine().set(rect=(0, 0.07, 1, 0.93))
    png = plot.save(ax, out / "contour.png")
    h5 = surface.save(out / "surface.h5")
    n = surface.loss.size
    secs = surface.meta["seconds"]
    log(f"trained {epochs} epochs of SGD in {t_train:.1f} s; final test MSE {traj.losses[-1]:.4f}")
    log(f"grid {resolution}x{resolution} = {n} points over {surface.meta['n_samples']} samples: "
        f"{secs:.2f} s, {n / secs:,.0f} points/s ({surface.meta['strategy']}, chunk "
        f"{surface.meta['chunk_size']}, {surface.meta['device']})")
    w1, w2 = surface.argmin()
    log(f"lowest grid point: w1={w1:.3f}, w2={w2:.3f}, MSE {np.nanmin(surface.loss):.4f}")
    for p in (html, png, h5):
        log(f"wrote {p}")
    return {"html": html, "png": png, "h5": h5, "surface": surface, "trajectory": traj,
            "seconds": secs, "points": n}
