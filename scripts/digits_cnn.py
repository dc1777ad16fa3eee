"""A CNN with BatchNorm on scikit-learn's digits: three views of its landscape.

Trains the network while recording its trajectory, then draws, each with loss
and accuracy on the training set:

- a filter-normalised random plane through the final weights (Li et al. 2018);
- the PCA plane of the trajectory, with the path projected onto it;
- the plane of the top two Hessian eigenvectors (the "sharpness view");

and reports the top Hessian eigenvalue and the Hessian trace at the end of
training.

    python scripts/digits_cnn.py [--small] [--out DIR]
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


def _span(path, floor=1.0):
    return max(floor, 1.2 * float(np.abs(path).max()))


def main(argv=None) -> dict:
    args = parser("digits_cnn: a CNN with BatchNorm on digits").parse_args(argv)
    small = args.small
    epochs, res, top_iters = (3, 9, 30) if small else (20, 41, 100)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    xtr, ytr, xte, yte = load_digits_tensors(args.seed)
    if small:
        xtr, ytr = xtr[:400], ytr[:400]
    train_data = (xtr, ytr)
    model = DigitsCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    t0 = time.perf_counter()
    traj = fastscape.train(model, loader(xtr, ytr, 64, args.seed), loss_fn=F.cross_entropy, optimizer=opt,
                           epochs=epochs, eval_data=train_data)
    t_train = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        test_acc = (model(xte).argmax(1) == yte).float().mean().item()

    metrics = {"accuracy": fastscape.accuracy}
    common = dict(loss_fn=F.cross_entropy, metrics=metrics, device="cpu", progress=False)
    lines = [f"digits CNN with BatchNorm: {len(xtr)} training / {len(xte)} test images, {epochs} epochs "
             f"in {t_train:.1f} s",
             f"final training loss {traj.losses[-1]:.4f}, test accuracy {test_acc:.3f}"]

    # 1. filter-normalised random plane
    rand = fastscape.random_directions(model, 2, norm="filter", ignore="biasbn", seed=args.seed)
    s_rand = fastscape.loss_surface(model, train_data, rand, grid=(-1, 1, res), **common)

    # 2. PCA plane of the trajectory, path projected on it
    pca, evr = fastscape.pca_directions(traj, n=2)
    path = fastscape.project(traj, pca)
    span = _span(path, floor=0.1)
    s_pca = fastscape.loss_surface(model, train_data, pca, grid=(-span, span, res), **common)

    # 3. top-two Hessian plane, eigenvectors filter-normalised like random directions
    t0 = time.perf_counter()
    evecs, evals = fastscape.curvature.hessian_eigenpairs(model, train_data, loss_fn=F.cross_entropy, n=2,
                                                max_iter=top_iters)
    weights = dict(model.named_parameters())
    hess = [fastscape.normalize(v, weights, norm="filter", ignore="biasbn") for v in evecs]
    trace, trace_err = fastscape.curvature.hessian_trace(model, train_data, loss_fn=F.cross_entropy, tol=0.05,
                                               max_iter=20 if small else 300)
    t_hess = time.perf_counter() - t0
    # the sharpest directions: a quarter of the random plane's span shows the same rise in loss
    s_hess = fastscape.loss_surface(model, train_data, hess, grid=(-0.25, 0.25, res), **common)

    written = []
    # the Hessian axes are filter-normalised: lambda is the curvature along the unit eigenvector, not
    # along these axes, and the labels say so
    views = [("random", s_rand, None, ("filter-normalised random direction 1",
                                       "filter-normalised random direction 2")),
             ("pca", s_pca, path, ("PC1", "PC2")),  # plot_contour adds the explained variance
             ("hessian", s_hess, None, tuple(f"Hessian eigenvector {i + 1}, filter-normalised\n"
                                             f"($\\lambda_{i + 1}$ = {float(evals[i]):.3g} along the unit eigenvector)"
                                             for i in range(2)))]
    for name, surf, p, labels in views:
        ax = fastscape.plot.contour(surf, path=p, axis_labels=labels, path_label="epoch",
                                    title=f"training loss: {name} plane")
        written.append(fastscape.plot.save(ax, out / f"cnn_{name}_loss.png"))
        ax = fastscape.plot.contour(surf, value="accuracy", path=p, axis_labels=labels, path_label="epoch",
                                    title=f"training accuracy: {name} plane")
        written.append(fastscape.plot.save(ax, out / f"cnn_{name}_accuracy.png"))
        surf.save(out / f"cnn_{name}.h5")
    # log heights: on a linear scale the basin is a flat floor under the walls
    fig = fastscape.plot.surface3d(s_pca, path=path, axis_labels=views[1][3], log=True, path_label="epoch",
                                   title="PCA plane with the SGD path (log10 of the training loss)")
    written.append(fastscape.plot.save(fig, out / "cnn_pca_surface3d.html"))

    for name, surf, _, _ in views:
        lines.append(f"{name} plane {res}x{res}: loss {np.nanmin(surf.loss):.4f}..{np.nanmax(surf.loss):.4f}, "
                     f"accuracy {np.nanmin(surf.metrics['accuracy']):.3f}..{np.nanmax(surf.metrics['accuracy']):.3f}, "
                     f"{surf.meta['points_per_second']:,.0f} points/s")
    lines.append(f"PCA explained variance: PC1 {evr[0]:.3f}, PC2 {evr[1]:.3f}")
    lines.append(f"top Hessian eigenvalues {float(evals[0]):.4f}, {float(evals[1]):.4f}; "
                 f"Hutchinson trace {trace:.3f} ± {trace_err:.3f} ({t_hess:.1f} s)")
    lines += [f"wrote {p}" for p in written]
    write_summary(out, lines, {"final_train_loss": traj.losses[-1], "test_accuracy": test_acc,
                               "eigenvalues": [float(e) for e in evals], "trace": trace, "trace_stderr": trace_err,
                               "explained_variance_ratio": [float(r) for r in evr]})
    return {"surfaces": {v[0]: v[1] for v in views}, "eigenvalues": evals, "trace": trace, "trace_stderr": trace_err}


if __name__ == "__main__":
    main()
