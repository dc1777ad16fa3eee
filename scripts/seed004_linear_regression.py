"""Seed article 004: gradient descent on a linear regression, drawn on its loss surface over (w, b).

Ten points x ~ U(0, 5), y = 0.5 (x + e) + 1 with e ~ N(0, 0.5) (numpy seed 0);
the model y = w x + b is torch's ``nn.Linear(1, 1)``, fitted by full-batch SGD
(learning rate 0.01), every step recorded through the optimizer hook. The MSE
over the raw (w, b) is computed on a grid and then refined twice around its
lowest point, and a quadratic fitted to the nine grid points around it gives
the minimum between grid points. That minimum is the least-squares fit, so it
is compared with scikit-learn's ``LinearRegression`` (all in ``summary.json``).

    PYTHONPATH=. python scripts/seed004_linear_regression.py --out out/seed004 [--small]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import fastscape


def article_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The article's data: float32 arrays x, y of shape (10, 1)."""
    rng = np.random.RandomState(seed)
    x = np.array(rng.uniform(0, 5, size=10), dtype="float32")
    e = np.array(rng.normal(loc=0.0, scale=0.5, size=10), dtype="float32")
    return x.reshape(-1, 1), (0.5 * (x + e) + 1).reshape(-1, 1)


def quadratic_vertex(surface) -> tuple[float, float]:
    """Minimum of the quadratic fitted (least squares) to the 3 x 3 grid points around the lowest one.

    The MSE of a linear model is exactly quadratic in (w, b), so this lands on
    the least-squares solution between grid points, even along a narrow valley.
    """
    (cw, cb), z = surface.coords, surface.loss
    i, j = np.unravel_index(int(np.nanargmin(z)), z.shape)
    i, j = min(max(i, 1), len(cw) - 2), min(max(j, 1), len(cb) - 2)
    W, B = np.meshgrid(cw[i - 1:i + 2], cb[j - 1:j + 2], indexing="ij")
    w, b = (W - cw[i]).ravel(), (B - cb[j]).ravel()
    A = np.stack([np.ones_like(w), w, b, w * w, w * b, b * b], axis=1)
    c = np.linalg.lstsq(A, z[i - 1:i + 2, j - 1:j + 2].ravel(), rcond=None)[0]
    dw, db = np.linalg.solve([[2 * c[3], c[4]], [c[4], 2 * c[5]]], [-c[1], -c[2]])
    return float(cw[i] + dw), float(cb[j] + db)


def main(argv=None) -> int:
    from sklearn.linear_model import LinearRegression

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out/seed004", help="output folder (default: %(default)s)")
    parser.add_argument("--small", action="store_true", help="a quick, coarse run (for CI)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    steps, res = (200, 41) if args.small else (1000, 201)

    x_np, y_np = article_data()
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    torch.manual_seed(0)
    model = nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    with fastscape.record(model, optimizer) as rec:  # a snapshot after every step
        for _ in range(steps):
            optimizer.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            optimizer.step()
            rec.log_loss(loss)
    traj = rec.trajectory

    names = ["weight[0, 0]", "bias[0]"]
    directions = fastscape.axis_directions(model, names)
    origin = fastscape.axis_origin(model, names, at="zero")
    path = fastscape.project(traj, directions, origin=origin)  # the raw (w, b) of every step
    data = (x.double(), y.double())
    opts = dict(loss_fn=F.mse_loss, origin=origin, device="cpu", dtype=torch.float64, progress=False)
    surface = fastscape.loss_surface(model, data, directions, grid=[(-0.5, 1.5, res), (0.0, 2.0, res)], **opts)

    # refine twice: a grid ten times finer around the current lowest point
    best, step = surface.argmin(), [c[1] - c[0] for c in surface.coords]
    for _ in range(2):
        fine = fastscape.loss_surface(
            model, data, directions, **opts,
            grid=[(b - 2 * h, b + 2 * h, 41) for b, h in zip(best, step)])
        best, step = fine.argmin(), [c[1] - c[0] for c in fine.coords]

    vertex = quadratic_vertex(fine)

    lm = LinearRegression().fit(x_np.astype(np.float64), y_np.astype(np.float64))
    w_ref, b_ref = float(lm.coef_[0, 0]), float(lm.intercept_[0])

    labels = ("weight w", "bias b")
    ax = fastscape.plot.contour(surface, path=path, axis_labels=labels, path_label="gradient-descent step",
                                points={"least squares": (w_ref, b_ref)},
                                title=f"MSE over (w, b), {steps} gradient-descent steps")
    written = [fastscape.plot.save(ax, out / "linear_regression_contour.png")]
    heights = fastscape.path_loss(model, data, traj, loss_fn=F.mse_loss, device="cpu", dtype=torch.float64)
    fig = fastscape.plot.surface3d(surface, path=path, path_loss=heights, axis_labels=labels,
                                   path_label="gradient-descent step",
                                   title="Loss function of y = w x + b, with the gradient-descent path")
    written.append(fastscape.plot.save(fig, out / "linear_regression_3d.html"))
    summary = {"surface_min": {"w": best[0], "b": best[1]}, "grid_step": {"w": step[0], "b": step[1]},
               "quadratic_min": {"w": vertex[0], "b": vertex[1]},
               "sklearn": {"w": w_ref, "b": b_ref},
               "final_gd": {"w": float(path[-1, 0]), "b": float(path[-1, 1]), "loss": float(heights[-1])},
               "steps": rec.n_steps}
    summary_path = out / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=2))
    written.append(summary_path)

    print(f"gradient descent, {rec.n_steps} steps: w = {path[-1, 0]:.4f}, b = {path[-1, 1]:.4f}, "
          f"MSE {heights[-1]:.5f}")
    print(f"surface minimum (refined to a {step[0]:.1e} grid): w = {best[0]:.5f}, b = {best[1]:.5f}")
    print(f"vertex of a quadratic fitted around it:     w = {vertex[0]:.5f}, b = {vertex[1]:.5f}")
    print(f"scikit-learn LinearRegression:             w = {w_ref:.5f}, b = {b_ref:.5f}")
    for p in written:
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
