"""Draw every fastscape view, headless, into one folder (the README's gallery).

    PYTHONPATH=. python scripts/gallery.py                 # docs/gallery/, full size
    PYTHONPATH=. python scripts/gallery.py --small --out /tmp/g   # CI size: small grids, short training

Each view is written through ``fastscape.plot.save``: matplotlib views as PNG,
plotly views as PNG through kaleido and a local Chromium (or, without one, the
view's own matplotlib drawing with a warning), animations as GIF (frames drawn by
matplotlib, written by Pillow; no ffmpeg, no browser).
``--html`` also writes the interactive plotly pages.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

import fastscape
from fastscape import plot
from fastscape._demo import TwoWeightNet, middle_piece, piecewise_data


def _loader(x, y, batch, seed):
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch, shuffle=True,
                                       generator=torch.Generator().manual_seed(seed))


def error_surface(small):
    """Source article 000: the two-weight tanh net, its MSE over (w1, w2), the SGD path (on the middle
    piece of the article's data, as the demo: there the net fits and the basin has a minimum)."""
    torch.manual_seed(0)
    x, y = middle_piece(*piecewise_data(2_000 if small else 10_000))
    n_train = int(0.8 * len(x))
    model = TwoWeightNet()
    with torch.no_grad():
        model.net[0].weight.fill_(-1.0)
        model.net[2].weight.fill_(-1.0)
    traj = fastscape.train(model, _loader(x[:n_train], y[:n_train], 64, 0), loss_fn=F.mse_loss,
                           optimizer=torch.optim.SGD(model.parameters(), lr=1e-2), epochs=6 if small else 25,
                           eval_data=(x[n_train:], y[n_train:]))
    names = ["net.0.weight", "net.2.weight"]
    dirs, origin = fastscape.axis_directions(model, names), fastscape.axis_origin(model, names, at="zero")
    path = fastscape.project(traj, dirs, origin=origin)  # the raw (w1, w2) of each epoch
    surface = fastscape.loss_surface(model, (x[n_train:], y[n_train:]), dirs, origin=origin, loss_fn=F.mse_loss,
                                     grid=path.frame(41 if small else 121), progress=False)
    return surface, path, np.array(traj.losses)


def pca_plane(small):
    """Source article 002: a ReLU MLP on a noisy parabola, the PCA plane of its trajectory."""
    g = torch.Generator().manual_seed(2)
    x = torch.rand(512, 1, generator=g) * 4 - 2
    y = x**2 + 0.3 * torch.randn(512, 1, generator=g)
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(1, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))
    traj = fastscape.train(model, _loader(x, y, 32, 2), loss_fn=F.mse_loss,
                           optimizer=torch.optim.SGD(model.parameters(), lr=0.02), epochs=12 if small else 40)
    dirs, ratio = fastscape.pca_directions(traj, n=4)
    dirs = dirs[:2]  # the plane; the other two components say how much of the path it misses
    path, off = fastscape.project(traj, dirs, return_residuals=True)  # origin: the final weights
    surface = fastscape.loss_surface(model, (x, y), dirs, loss_fn=F.mse_loss, progress=False,
                                     grid=path.frame(31 if small else 81, pad=0.3))
    return surface, path, (off, ratio)


def ring_data(n, seed):
    """Two classes: a disc of radius 1 inside a ring of radii 3 to 4 (source article 003)."""
    g = torch.Generator().manual_seed(seed)
    r = torch.cat([torch.rand(n, generator=g), 3 + torch.rand(n, generator=g)])
    t = torch.rand(2 * n, generator=g) * 2 * torch.pi
    x = torch.stack([r * torch.cos(t), r * torch.sin(t)], dim=1)
    y = torch.cat([torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.long)])
    return x, y


def classifier(small):
    x, y = ring_data(300 if small else 600, 3)
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(2, 3), nn.Sigmoid(), nn.Linear(3, 2))
    init = {k: v.clone() for k, v in model.state_dict().items()}
    fastscape.train(model, [(x, y)], loss_fn=F.cross_entropy,
                    optimizer=torch.optim.Adam(model.parameters(), lr=0.05), epochs=300)
    return model, init, x, y


def regression_net(small):
    """A 1-10-1 sigmoid net fitted to a damped sine, snapshots as it trains."""
    x = torch.linspace(-4, 4, 200).reshape(-1, 1)
    y = torch.sin(2 * x) * torch.exp(-x / 6)
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(1, 10), nn.Sigmoid(), nn.Linear(10, 1))
    with torch.no_grad():  # spread the units' switching points over the data
        model[0].weight.copy_(torch.linspace(2, 4, 10).reshape(-1, 1) * torch.tensor([1, -1] * 5).reshape(-1, 1))
        model[0].bias.copy_(-model[0].weight.reshape(-1) * torch.linspace(-3.5, 3.5, 10))
    traj = fastscape.train(model, [(x, y)], loss_fn=F.mse_loss,
                           optimizer=torch.optim.Adam(model.parameters(), lr=0.03),
                           epochs=600 if small else 2500, every=5)  # fine early, where the fit changes
    return model, traj, x, y


def linear_regression():
    """Source article 004: y = 2x + 1 + noise, fitted by one nn.Linear(1, 1)."""
    g = torch.Generator().manual_seed(5)
    x = torch.rand(100, 1, generator=g) * 2
    y = 2 * x + 1 + 0.3 * torch.randn(100, 1, generator=g)
    model = nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.fill_(-0.5)
        model.bias.fill_(0.5)
    return model, x, y


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/gallery", help="output folder (default: %(default)s)")
    parser.add_argument("--small", action="store_true", help="small grids and short training (CI)")
    parser.add_argument("--html", action="store_true", help="also write the interactive plotly pages")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    small = args.small
    written = []

    def save(fig, name):
        t0 = time.perf_counter()
        path = plot.save(fig, out / name)
        if args.html and hasattr(fig, "to_plotly_json"):
            plot.save(fig, (out / name).with_suffix(".html"))
        written.append(path)
        print(f"wrote {path} ({time.perf_counter() - t0:.1f} s)")

    surface, path, losses = error_surface(small)
    labels = ("w\u2081 (hidden weight)", "w\u2082 (output weight)")
    save(plot.surface3d(surface, path=path, path_loss=losses, axis_labels=labels, path_label="epoch",
                        title="Test MSE over the two weights, with the SGD path"), "surface3d.png")

    pca_surface, pca_path, (off_plane, ratio) = pca_plane(small)
    # the path from fastscape.project of a train() trajectory says it counts epochs: no path_label needed
    ax = plot.contour(pca_surface, path=pca_path, title="PCA plane of the training path (log levels)")
    save(ax, "contour.png")
    save(plot.animate_path(pca_surface, pca_path, max_frames=20 if small else 41), "path_animation.gif")
    fig = plot.pca_fidelity(pca_path, off_plane, ratio)[0].figure
    save(fig, "pca_fidelity.png")

    model, init, x, y = classifier(small)
    final = {k: v.clone() for k, v in model.state_dict().items()}
    interp = fastscape.loss_surface(model, (x, y), [{k: final[k] - init[k] for k in final}], origin=init,
                                    loss_fn=F.cross_entropy, metrics={"accuracy": fastscape.accuracy},
                                    grid=(-0.25, 1.25, 41 if small else 121), progress=False)
    rand = fastscape.random_directions(model, 1, seed=0)
    # a random line placed so that coordinate 1 is the trained model, like the interpolation
    shifted = {k: final[k] - rand[0].get(k, 0.0) for k in final}
    line = fastscape.loss_surface(model, (x, y), rand, loss_fn=F.cross_entropy, origin=shifted,
                                  metrics={"accuracy": fastscape.accuracy},
                                  grid=(-0.25, 1.25, 41 if small else 121), progress=False)
    ax = plot.line({"initial \u2192 trained": interp, "random direction through trained": line},
                   marks={"initial": 0.0, "trained": 1.0}, xlabel="coordinate along the line",
                   title="Loss and accuracy along two lines")
    save(ax, "line.png")
    save(plot.hidden_lines(model, x, y), "hidden_lines.png")
    save(plot.hidden_space(fastscape.hidden_activations(model, x), y, units=(0, 1, 2)), "hidden_space.png")
    vol = fastscape.loss_surface(model, (x, y), fastscape.random_directions(model, 3, seed=1),
                                 loss_fn=F.cross_entropy, grid=(-1.0, 1.0, 13 if small else 31), progress=False)
    # log-spaced shells: nested around the minimum, where a linear spacing would put them all near the walls
    save(plot.volume(vol, kind="isosurface", levels=4, log=True, title="Loss volume: shells of equal loss"),
         "volume.png")
    save(plot.volume(vol, kind="slices", title="Loss volume: slices through the minimum"), "volume_slices.png")

    net, traj, xr, yr = regression_net(small)
    save(plot.thresholded(fastscape.thresholded_prediction(net, xr), yr), "thresholded.png")
    curve = torch.linspace(float(xr.min()), float(xr.max()), 200).reshape(-1, 1)
    save(plot.animate_fit(fastscape.snapshot_predictions(net, traj, curve), data=(xr, yr),
                          max_frames=20 if small else 51), "fit_animation.gif")

    lin, xl, yl = linear_regression()
    save(plot.cross_sections(fastscape.cross_sections(lin, (xl, yl), loss_fn=F.mse_loss, span=3.0)),
         "cross_sections.png")
    names = ["weight", "bias"]
    dirs, origin = fastscape.axis_directions(lin, names), fastscape.axis_origin(lin, names)
    steps = fastscape.lr_steps(lin, (xl, yl), dirs, origin=origin, loss_fn=F.mse_loss, lrs=(0.05, 0.2, 0.4))
    # the article's frame, extended so that every step lands on the grid
    frame = [(-1.5, 4.0), (-1.5, 3.5)]
    n = 41 if small else 81
    grid = [(min(a, lo), max(b, hi), n) for (a, b), (lo, hi) in zip(frame, steps.span())]
    plane = fastscape.loss_surface(lin, (xl, yl), dirs, origin=origin, loss_fn=F.mse_loss, grid=grid,
                                   progress=False)
    save(plot.lr_steps(steps, plane, axis_labels=("weight", "bias")), "lr_steps.png")
    print(f"{len(written)} files in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
