"""Seed article 002: a random slice and a PCA slice of an MLP's loss, with the training path.

A 1-64-64-64-1 ReLU MLP is fitted with Adam to a noisy parabola
(y = x^2 + noise, 256 points). Two planes through the final weights:

- a random plane (filter-normalised Gaussian directions): the path barely
  shows on it, because two random directions miss the few directions
  training actually moves along;
- the PCA plane of the recorded path (Li et al. 2018): the path lies almost
  in it, and the projection residuals say how much is left out.

Both grids use the cubed spacing ``linspace(-1, 1, n)**3 * range``, which puts
more points near the minimum at the centre. A third figure trains the same
initial MLP with SGD, SGD with momentum and Adam, and draws the three paths on
one shared PCA plane.

    PYTHONPATH=. python scripts/seed002_random_and_pca.py --out out/seed002 [--small]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import fastscape


def parabola_data(n: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """x ~ N(0, 1), y = x^2 + N(0, 0.25^2); float32 tensors of shape (n, 1)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, generator=g)
    return x, x**2 + 0.25 * torch.randn(n, 1, generator=g)


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(1, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                         nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))


def cubed(n: int, span: float) -> np.ndarray:
    """n coordinates in [-span, span], dense near 0: linspace(-1, 1, n)**3 * span."""
    return np.linspace(-1.0, 1.0, n) ** 3 * span


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out/seed002", help="output folder (default: %(default)s)")
    parser.add_argument("--small", action="store_true", help="a quick, coarse run (for CI)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    steps, res, cmp_epochs = (30, 15, 3) if args.small else (400, 61, 40)

    x, y = parabola_data()
    torch.manual_seed(0)
    model = mlp()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    with fastscape.record(model, optimizer, every=1) as rec:  # every step
        for _ in range(steps):
            idx = torch.randint(0, len(x), (64,), generator=g)
            optimizer.zero_grad()
            loss = F.mse_loss(model(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
            rec.log_loss(loss)
    traj = rec.trajectory
    written = []

    # --- a random slice through the final weights
    rand = fastscape.random_directions(model, 2, seed=0)
    r_path, r_res = fastscape.project(traj, rand, return_residuals=True)
    axis = cubed(res, 1.0)
    r_surf = fastscape.loss_surface(model, (x, y), rand, loss_fn=F.mse_loss, grid=[axis, axis],
                                    device="cpu", progress=False)
    ax = fastscape.plot.contour(r_surf, path=r_path, path_label="Adam step", title="Random slice, cubed grid",
                                axis_labels=("filter-normalised random direction 1",
                                             "filter-normalised random direction 2"))
    written.append(fastscape.plot.save(ax, out / "random_slice.png"))

    # --- the PCA slice of the path
    pcs, ratio = fastscape.pca_directions(traj, n=2)
    p_path, p_res = fastscape.project(traj, pcs, return_residuals=True)
    span = 1.25 * float(np.abs(p_path).max())
    axis = cubed(res, span)
    p_surf = fastscape.loss_surface(model, (x, y), pcs, loss_fn=F.mse_loss, grid=[axis, axis],
                                    device="cpu", progress=False)
    labels = (f"PC1 ({100 * ratio[0]:.1f}% of variance)", f"PC2 ({100 * ratio[1]:.1f}% of variance)")
    ax = fastscape.plot.contour(p_surf, path=p_path, axis_labels=labels, path_label="Adam step",
                                title="PCA slice of the training path, cubed grid")
    written.append(fastscape.plot.save(ax, out / "pca_slice.png"))
    heights = fastscape.path_loss(model, (x, y), traj, loss_fn=F.mse_loss, directions=pcs, device="cpu")
    # the default camera looks from the valley's side, so the path's end is in view
    fig = fastscape.plot.surface3d(p_surf, path=p_path, path_loss=heights, axis_labels=labels, log=True,
                                   path_label="Adam step",
                                   title="PCA slice with the Adam path (heights at the projected points)")
    written.append(fastscape.plot.save(fig, out / "pca_slice_3d.html"))

    # --- three optimizers from the same initial weights, on one shared PCA plane
    start = mlp()
    start.load_state_dict(initial)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64, shuffle=True)
    result = fastscape.compare_optimizers(
        start, loader,
        {"SGD": lambda p: torch.optim.SGD(p, lr=0.05),
         "SGD + momentum": lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9),
         "Adam": lambda p: torch.optim.Adam(p, lr=3e-3)},
        loss_fn=F.mse_loss, epochs=cmp_epochs, origin="Adam", seed=0)
    c_surf = result.loss_surface((x, y), loss_fn=F.mse_loss, n=res, device="cpu", progress=False)
    ax = fastscape.plot.optimizer_comparison(result, c_surf, title="SGD, SGD with momentum and Adam on one PCA plane")
    written.append(fastscape.plot.save(ax, out / "optimizers.png"))

    dist = np.linalg.norm(traj.matrix().double().numpy() - traj.matrix()[-1].double().numpy(), axis=1)
    print(f"{len(traj)} snapshots ({rec.n_steps} Adam steps), final loss {heights[-1]:.4f}")
    print(f"random plane: median residual {np.median(r_res / np.maximum(dist, 1e-12)):.1%} of each "
          f"snapshot's distance to the end")
    print(f"PCA plane: PC1 + PC2 explain {ratio.sum():.1%} of the path's variance; median residual "
          f"{np.median(p_res / np.maximum(dist, 1e-12)):.1%}")
    for name, t in result.trajectories.items():
        print(f"{name}: final loss {t.losses[-1]:.4f}")
    for p in written:
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
