"""The README picture for the coordinate systems: one small trained model seen
through three planes.

1. a filter-normalised random plane (Li et al. 2018), orthogonalised;
2. the plane of the top two Hessian eigenvectors ("sharpness view"), each
   scaled to the norm of the weights so the spans compare with panel 1;
3. the plane through three models trained from different seeds (Garipov et
   al. 2018), with each model marked at its position.

Run from the repository root::

    PYTHONPATH=. python scripts/directions_gallery.py [--out docs/directions_gallery.png]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import fastscape


def spirals(n: int = 600, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two interleaved noisy spirals: inputs (n, 2) float32, labels (n,) int64."""
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=g) * 3 * np.pi + 0.5
    label = torch.randint(0, 2, (n,), generator=g)
    sign = 1 - 2 * label.float()
    x = torch.stack([t * torch.cos(t) * sign, t * torch.sin(t) * sign], dim=1) / 5
    return x + 0.08 * torch.randn(n, 2, generator=g), label


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))


def fit(seed: int, x, y, steps: int = 500) -> nn.Module:
    torch.manual_seed(seed)
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/directions_gallery.png")
    parser.add_argument("--resolution", type=int, default=61)
    args = parser.parse_args(argv)

    x, y = spirals()
    models = [fit(seed, x, y) for seed in range(3)]
    model = models[0]
    data, res = (x, y), args.resolution
    common = dict(loss_fn=F.cross_entropy, device="cpu", progress=False)

    t0 = time.perf_counter()
    random = fastscape.orthogonalize(fastscape.random_directions(model, 2, seed=0))
    s_random = fastscape.loss_surface(model, data, random, grid=(-0.5, 0.5, res), **common)

    t1 = time.perf_counter()
    vecs, vals = fastscape.curvature.hessian_eigenpairs(model, data, loss_fn=F.cross_entropy, n=2, tol=1e-6,
                                              device="cpu")
    t_eig = time.perf_counter() - t1
    weights = dict(model.named_parameters())
    sharp = [fastscape.normalize(v, weights, norm="model", ignore=None) for v in vecs]
    s_hess = fastscape.loss_surface(model, data, fastscape.Directions(sharp, **vecs.info),
                                    grid=(-0.5, 0.5, res), **common)

    plane, pos = fastscape.interpolation_plane(*models)
    pad = 0.25 * float(np.ptp(pos, axis=0).max())
    grid = [(pos[:, 0].min() - pad, pos[:, 0].max() + pad, res), (pos[:, 1].min() - pad, pos[:, 1].max() + pad, res)]
    s_plane = fastscape.loss_surface(model, data, plane, origin=model, grid=grid, **common)
    total = time.perf_counter() - t0

    # one colour scale and one colour bar for the three planes: a colour is the same loss in each
    panels = {"random plane, filter-normalised": s_random,
              f"Hessian plane, $\\lambda_1$={vals[0]:.3g}, $\\lambda_2$={vals[1]:.3g}": s_hess,
              "plane through three trained models": s_plane}
    hess_title = list(panels)[1]
    axes = fastscape.plot.contour_grid(
        panels, equal=True, figsize=(16, 5.8),  # labelled lines; room under the panels for their legends
        panel_kw={"random plane, filter-normalised": dict(axis_labels=("filter-normalised direction δ",
                                                                       "filter-normalised direction η")),
                  hess_title: dict(axis_labels=("eigenvector $v_1$ (model norm)", "eigenvector $v_2$ (model norm)")),
                  # the three trained models as named points (rows of `pos` are labelled A, B, C)
                  "plane through three trained models": dict(
                      axis_labels=("$e_1$: towards B (parameter distance)", "$e_2$: towards C, $\\perp e_1$"),
                      points=pos)})
    fig = axes[0, 0].figure
    out = fastscape.plot.save(fig, args.out)
    n = 3 * res * res
    print(f"three {res}x{res} planes ({n} points) and top-2 eigenpairs in {total:.1f} s "
          f"(eigenpairs {t_eig:.1f} s, {vecs.info['iterations']} Hessian-vector products)")
    print(f"λ1 = {vals[0]:.4g}, λ2 = {vals[1]:.4g}; model positions in the plane: {np.round(pos, 3).tolist()}")
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
