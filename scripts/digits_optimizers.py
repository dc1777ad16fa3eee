"""SGD, SGD with momentum and Adam on digits, from the same initialisation,
their paths on one shared PCA plane (the PCA of all three trajectories pooled).

    python scripts/digits_optimizers.py [--small] [--out DIR]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fastscape  # noqa: E402
from _digits import DigitsCNN, load_digits_tensors, loader, parser, write_summary  # noqa: E402

OPTIMIZERS = {
    "SGD": lambda p: torch.optim.SGD(p, lr=0.05),
    "SGD + momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    "Adam": lambda p: torch.optim.Adam(p, lr=3e-3),
}


def main(argv=None) -> dict:
    args = parser("digits_optimizers: optimizers compared on digits").parse_args(argv)
    epochs, res = (3, 15) if args.small else (15, 61)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    xtr, ytr, xte, yte = load_digits_tensors(args.seed)
    if args.small:
        xtr, ytr = xtr[:400], ytr[:400]
    train = (xtr, ytr)
    t0 = time.perf_counter()
    cmp = fastscape.compare_optimizers(DigitsCNN(), loader(xtr, ytr, 64, args.seed), OPTIMIZERS,
                                       loss_fn=F.cross_entropy, epochs=epochs, eval_data=train, seed=args.seed)
    t_train = time.perf_counter() - t0
    surface = cmp.loss_surface(train, loss_fn=F.cross_entropy, n=res, metrics={"accuracy": fastscape.accuracy},
                               device="cpu", progress=False)
    ax = fastscape.plot.optimizer_comparison(cmp, surface, title="SGD, SGD + momentum and Adam on one PCA plane")
    written = [fastscape.plot.save(ax, out / "optimizers_pca_plane.png")]
    surface.save(out / "optimizers_plane.h5")
    written.append(out / "optimizers_plane.h5")

    evr = cmp.explained_variance_ratio
    lines = [f"digits CNN, {len(xtr)} training images, {epochs} epochs per optimizer ({t_train:.1f} s in all)",
             f"shared PCA plane: PC1 {evr[0]:.3f}, PC2 {evr[1]:.3f} of the pooled variance; origin: final "
             f"weights of {cmp.origin_name}",
             f"plane {res}x{res}: {surface.meta['points_per_second']:,.0f} points/s"]
    for name, traj in cmp.trajectories.items():
        model = cmp.models[name].eval()
        with torch.no_grad():
            acc = (model(xte).argmax(1) == yte).float().mean().item()
        resid = cmp.residuals[name]
        lines.append(f"{name:15s} final training loss {traj.losses[-1]:.4f}, test accuracy {acc:.3f}, "
                     f"path length in the plane {np.linalg.norm(np.diff(cmp.coords[name], axis=0), axis=1).sum():.3f}, "
                     f"largest distance from the plane {resid.max():.3f}")
    lines += [f"wrote {p}" for p in written]
    write_summary(out, lines, {"final_train_loss": {k: t.losses[-1] for k, t in cmp.trajectories.items()},
                               "explained_variance_ratio": [float(r) for r in evr]})
    return {"comparison": cmp, "surface": surface}


if __name__ == "__main__":
    main()
