"""Seed article 000: the error surface of a two-weight tanh net, with the SGD path on it.

The net is x -> w2 * tanh(w1 * x) (no biases), fitted with SGD from
(w1, w2) = (-1, -1) to the article's noisy function where it is 7.3 sin x
(x in [-2, 2), the middle piece, as ``fastscape demo`` does: over the whole
data one tanh unit cannot fit the linear and cubic tails, and the surface is a
shelf with no minimum in any frame). Its test MSE is computed over the raw
weights on a grid framed around the path and the basin; the path, recorded once
per epoch with ``fastscape.record``, is drawn on top with heights from
``fastscape.path_loss`` (the same evaluator, so the path lies exactly on the surface).

    PYTHONPATH=. python scripts/seed000_error_surface.py --out out/seed000 [--small]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import fastscape
from fastscape._demo import CAPTION, TwoWeightNet, middle_piece, piecewise_data


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out/seed000", help="output folder (default: %(default)s)")
    parser.add_argument("--small", action="store_true", help="a quick, coarse run (for CI)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    n, epochs, res = (10_000, 25, 41) if args.small else (10_000, 25, 201)  # --small: a coarse grid only

    torch.manual_seed(0)
    x, y = middle_piece(*piecewise_data(n, seed=42))
    n = len(x)
    split = int(0.8 * n)
    train, test = (x[:split], y[:split]), (x[split:], y[split:])
    model = TwoWeightNet()
    with torch.no_grad():  # the article's starting point
        model.net[0].weight.fill_(-1.0)
        model.net[2].weight.fill_(-1.0)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*train), batch_size=64, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)

    # the user's own loop; one line records it (a snapshot per epoch, plus the start)
    with fastscape.record(model, optimizer, every=None) as rec:
        for _ in range(epochs):
            for xb, yb in loader:
                optimizer.zero_grad()
                loss = F.mse_loss(model(xb), yb)
                loss.backward()
                optimizer.step()
                rec.log_loss(loss)
            rec.snapshot()
    traj = rec.trajectory

    names = ["net.0.weight", "net.2.weight"]
    directions = fastscape.axis_directions(model, names)
    origin = fastscape.axis_origin(model, names, at="zero")
    path = fastscape.project(traj, directions, origin=origin)  # = the raw (w1, w2) of each snapshot
    heights = fastscape.path_loss(model, test, traj, loss_fn=F.mse_loss, device="cpu")
    # the path and the basin around it, framed as the demo frames them
    surface = fastscape.loss_surface(model, test, directions, origin=origin, loss_fn=F.mse_loss,
                                     grid=path.frame(res), device="cpu", progress=False)

    labels = ("w\u2081 (hidden weight)", "w\u2082 (output weight)")
    ax = fastscape.plot.contour(surface, path=path, axis_labels=labels, path_label="epoch",
                                title="Test MSE over the raw weights, SGD path (a dot per epoch)")
    ax.figure.set_size_inches(7.6, 7.0)
    ax.figure.text(0.5, 0.005, CAPTION.format(var=float((test[1] ** 2).mean())), ha="center", va="bottom",
                   fontsize=7.5, wrap=True)
    ax.figure.get_layout_engine().set(rect=(0, 0.07, 1, 0.93))
    written = [fastscape.plot.save(ax, out / "error_surface_contour.png")]
    fig = fastscape.plot.surface3d(surface, path=path, path_loss=heights, axis_labels=labels, path_label="epoch",
                                   title="Error surface of the two-weight tanh net, with the SGD path")
    written.append(fastscape.plot.save(fig, out / "error_surface_3d.html"))

    w1, w2 = surface.argmin()
    i, j = np.unravel_index(int(np.nanargmin(surface.loss)), surface.loss.shape)
    where = "on the frame's edge" if i in (0, res - 1) or j in (0, res - 1) else "inside the frame"
    print(f"{len(traj)} snapshots over {rec.n_steps} SGD steps; final test MSE {heights[-1]:.4f} "
          f"at (w1, w2) = ({path[-1, 0]:.3f}, {path[-1, 1]:.3f})")
    print(f"surface {res}x{res}: {surface.meta['points_per_second']:,.0f} points/s; lowest grid point "
          f"(w1, w2) = ({w1:.3f}, {w2:.3f}), MSE {np.nanmin(surface.loss):.4f}, {where}")
    for p in written:
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
