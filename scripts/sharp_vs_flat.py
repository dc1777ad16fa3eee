"""Sharp vs flat minima on digits (Keskar et al. 2017, revisited by Li et al. 2018).

Trains the same network from the same initialisation with a small and a large
batch size, then measures, on training and test data:

- the 1-D linear interpolation between the two solutions (Goodfellow et al. 2015
  style, coordinate 0 = small-batch solution, 1 = large-batch solution);
- a filter-normalised random line through each solution (Li et al. 2018);
- the top Hessian eigenvalue of each solution;
- the Hessian eigenvalue density of each (stochastic Lanczos quadrature, Ghorbani et al. 2019);
- the curvature map |lambda_min / lambda_max| over a filter-normalised random plane through
  each (Li et al. 2018, Fig. 9);
- three sharpness measures: epsilon-sharpness (Keskar et al. 2017), adaptive sharpness
  (Kwon et al. 2021), Monte-Carlo sharpness; against the generalisation gap of every model
  trained (``--batch-sizes`` adds models between the two).

It prints the papers' claim next to the measured numbers; it does not assert
the claim: what this run shows is what it prints.

    python scripts/sharp_vs_flat.py [--small] [--out DIR]
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fastscape  # noqa: E402
from _digits import DigitsMLP, load_digits_tensors, loader, parser, write_summary  # noqa: E402

CLAIM = ("Keskar et al. (2017): large-batch training converges to sharper minima, which generalise "
         "worse. Li et al. (2018): with filter-normalised directions the large-batch minimum looks "
         "sharper, and sharpness tracks the generalisation gap.")


def _width(coords, loss, factor=2.0):
    """Length of the interval around the centre where the loss stays below ``factor`` x its centre value."""
    c = int(np.argmin(np.abs(coords)))
    limit = factor * loss[c]
    lo = c
    while lo > 0 and loss[lo - 1] <= limit:
        lo -= 1
    hi = c
    while hi < len(loss) - 1 and loss[hi + 1] <= limit:
        hi += 1
    return float(coords[hi] - coords[lo])


def main(argv=None) -> dict:
    p = parser("sharp_vs_flat: sharp vs flat minima on digits")
    p.add_argument("--small-batch", type=int, default=16)
    p.add_argument("--large-batch", type=int, default=1024)
    p.add_argument("--batch-sizes", type=str, default="",
                   help="more batch sizes, comma-separated, for the sharpness-vs-generalisation figure")
    args = p.parse_args(argv)
    # both runs train to the same training loss (Keskar et al. compare minima of equal training
    # quality), checked every `rounds` epochs, up to a cap
    target, rounds, cap, res, iters = (0.3, 5, 300, 21, 40) if args.small else (0.01, 10, 3000, 101, 100)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    xtr, ytr, xte, yte = load_digits_tensors(args.seed)
    train, test = (xtr, ytr), (xte, yte)
    init = DigitsMLP()
    models, times, epochs = {}, {}, {}
    runs = [("small-batch", args.small_batch), ("large-batch", args.large_batch)]
    runs += [(f"batch {int(b)}", int(b)) for b in args.batch_sizes.split(",") if b.strip()]
    for label, bs in runs:
        m = copy.deepcopy(init)
        opt = torch.optim.Adam(m.parameters(), lr=1e-3)
        data = loader(xtr, ytr, bs, args.seed)
        t0 = time.perf_counter()
        done = 0
        while done < cap:
            traj = fastscape.train(m, data, loss_fn=F.cross_entropy, optimizer=opt, epochs=rounds,
                                   every=rounds, eval_data=train)
            done += rounds
            if traj.losses[-1] <= target:
                break
        times[label], epochs[label] = time.perf_counter() - t0, done
        models[label] = m.eval()
    small, large = models["small-batch"], models["large-batch"]
    common = dict(loss_fn=F.cross_entropy, metrics={"accuracy": fastscape.accuracy}, device="cpu", progress=False)

    interp = fastscape.interpolation_directions(small, large)
    line = {name: fastscape.loss_surface(small, data, interp, origin=small, grid=(-0.5, 1.5, res), **common)
            for name, data in (("train", train), ("test", test))}
    rand = {}
    for label, m in models.items():
        d = fastscape.random_directions(m, 1, norm="filter", ignore="biasbn", seed=args.seed)
        rand[label] = {name: fastscape.loss_surface(m, data, d, grid=(-1, 1, res), **common)
                       for name, data in (("train", train), ("test", test))}
    top = {label: float(fastscape.curvature.hessian_eigenpairs(m, train, loss_fn=F.cross_entropy, n=1, max_iter=iters)[1][0])
           for label, m in models.items()}

    curv = _curvature(models, train, test, args)

    written = [fastscape.plot.save(_interpolation_figure(line), out / "sharp_flat_interpolation.png"),
               fastscape.plot.save(_random_lines_figure(rand), out / "sharp_flat_random_lines.png"),
               fastscape.plot.save(_density_figure(curv["density"]), out / "sharp_flat_density.png"),
               fastscape.plot.save(_curvature_figure(curv["maps"]), out / "sharp_flat_curvature_map.png"),
               fastscape.plot.save(_sharpness_figure(curv["sharpness"], curv["gap"]), out / "sharp_flat_sharpness.png")]

    lines = [f"paper's claim: {CLAIM}",
             f"measured in this run (Adam, each run trained until its training loss <= {target} or {cap} epochs):"]
    header = f"{'':12s} {'batch':>6s} {'train loss':>10s} {'train acc':>9s} {'test acc':>8s} " \
             f"{'top eig':>8s} {'width@2x':>8s} {'epochs':>6s} {'time':>6s}"
    lines.append(header)
    for label, bs in (("small-batch", args.small_batch), ("large-batch", args.large_batch)):
        tr, te = rand[label]["train"], rand[label]["test"]
        c = int(np.argmin(np.abs(tr.coords[0])))
        lines.append(f"{label:12s} {bs:6d} {tr.loss[c]:10.4f} {tr.metrics['accuracy'][c]:9.3f} "
                     f"{te.metrics['accuracy'][c]:8.3f} {top[label]:8.3f} "
                     f"{_width(tr.coords[0], tr.loss):8.3f} {epochs[label]:6d} {times[label]:5.1f}s")
    pair = ("small-batch", "large-batch")  # the two in the table above (not the extra batch sizes)
    sharper = max(pair, key=top.get)
    centre = {k: int(np.argmin(np.abs(rand[k]["test"].coords[0]))) for k in pair}
    better = max(pair, key=lambda k: rand[k]["test"].metrics["accuracy"][centre[k]])
    lines.append(f"in this run the {sharper} solution has the larger top Hessian eigenvalue and the {better} "
                 "solution the higher test accuracy.")
    mid = line["train"]
    lines.append("interpolation: train loss at 0 / 0.5 / 1: "
                 + " / ".join(f"{np.interp(a, mid.coords[0], mid.loss):.4f}" for a in (0.0, 0.5, 1.0)))
    lines.append(f"{'':12s} {'eps-sharp %':>11s} {'adaptive':>9s} {'MC sharp':>9s} {'gap':>6s} "
                 f"{'trace (SLQ)':>12s} {'lam_min':>8s} {'max ratio':>9s}")
    for label in models:
        sh, d, cmap = curv["sharpness"][label], curv["density"].get(label), curv["maps"].get(label)
        lines.append(f"{label:12s} {sh['epsilon']:11.4f} {sh['adaptive']:9.4f} {sh['mc']:9.4f} "
                     f"{curv['gap'][label]:6.3f} "
                     + (f"{d.trace[0]:12.3f} {d.extremes()[0]:8.4f} {np.nanmax(cmap.metrics['ratio']):9.3f}"
                        if d is not None else ""))
    lines += [f"wrote {p}" for p in written]
    write_summary(out, lines, {"top_eigenvalue": top, "epochs": epochs, "sharpness": curv["sharpness"],
                               "generalisation_gap": curv["gap"]})
    return {"top_eigenvalues": top, "interpolation": line, "random_lines": rand, **curv}


def _curvature(models, train, test, args):
    """Density, curvature map, sharpness measures and generalisation gap of each model."""
    from fastscape import curvature

    kw = dict(loss_fn=F.cross_entropy, device="cpu")
    # --small: a coarse map, short Lanczos runs and few samples, so that the test suite runs it
    res, steps, iters, samples, ascent = (5, 20, 20, 32, 2) if args.small else (11, 60, 30, 256, 10)
    out = {"density": {}, "maps": {}, "sharpness": {}, "gap": {}}
    for label, m in models.items():
        if label in ("small-batch", "large-batch"):  # the density and the map of the two compared
            out["density"][label] = curvature.hessian_density(m, train, runs=4, steps=steps, **kw)
            d = fastscape.random_directions(m, 2, norm="filter", ignore="biasbn", seed=args.seed)
            out["maps"][label] = curvature.curvature_surface(m, train, d, grid=(-1, 1, res), max_iter=iters,
                                                             tol=1e-2, trace_probes=2, **kw)
        out["sharpness"][label] = {
            "epsilon": curvature.epsilon_sharpness(m, train, epsilon=1e-3, samples=samples, steps=ascent, **kw),
            "adaptive": curvature.adaptive_sharpness(m, train, rho=0.05, samples=samples, steps=ascent, **kw),
            "mc": curvature.mc_sharpness(m, train, sigma=0.01, samples=samples, **kw)[0]}
        with torch.no_grad():
            acc = {name: float(fastscape.accuracy(m(x), y)) for name, (x, y) in (("train", train), ("test", test))}
        out["gap"][label] = acc["train"] - acc["test"]
    return out


def _density_figure(densities):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.4), layout="constrained")
    ax = fig.subplots()
    for label, d in densities.items():
        fastscape.plot.spectral_density(d, ax=ax, top=3, label=f"{label} (dotted: its top 3 Ritz values)")
    ax.set_title("Hessian eigenvalue density (stochastic Lanczos quadrature)")
    return fig


def _curvature_figure(maps):
    """The two convexity maps on ONE colour scale (shared levels and norm) with one colour bar,
    so that one colour means one value of |lambda_min / lambda_max| in both panels."""
    from matplotlib.colors import Normalize
    from matplotlib.contour import QuadContourSet
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    ratios = np.concatenate([np.ravel(s.metrics["ratio"]) for s in maps.values()])
    ratios = ratios[np.isfinite(ratios)]
    levels = MaxNLocator(16).tick_values(float(ratios.min()), float(ratios.max()))  # round band edges
    norm = Normalize(levels[0], levels[-1])
    fig = Figure(figsize=(4.6 * len(maps) + 1.2, 4.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(maps)))
    for ax, (label, s) in zip(axes, maps.items()):
        fastscape.plot.curvature_map(s, ax=ax, levels=levels, norm=norm, colorbar=False, title=label)
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.yaxis.set_major_locator(MaxNLocator(4))
    filled = next(c for c in axes[0].collections if isinstance(c, QuadContourSet) and c.filled)
    fig.colorbar(filled, ax=axes.tolist(), label=r"$|\lambda_{\min} / \lambda_{\max}|$", shrink=0.9,
                 ticks=MaxNLocator(6).tick_values(levels[0], levels[-1]))
    fig.suptitle("convexity map over a filter-normalised random plane through each solution (Li et al. 2018, Fig. 9)")
    return fig


def _sharpness_figure(sharpness, gap):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4), layout="constrained")
    names = {"epsilon": "ε-sharpness, ε = 1e-3 (%)", "adaptive": "adaptive sharpness, ρ = 0.05",
             "mc": "Monte-Carlo sharpness, σ = 0.01"}
    for ax, (key, xlabel) in zip(fig.subplots(1, 3), names.items()):
        fastscape.plot.sharpness_generalization({k: v[key] for k, v in sharpness.items()}, gap, ax=ax,
                                                xlabel=xlabel, ylabel="train − test accuracy")
    return fig


def _interpolation_figure(line):
    """Train and test loss (solid, log scale) and accuracy (dashed) from the small- to the large-batch model."""
    return fastscape.plot.line(line, metric="accuracy", log=True, marks={"small batch": 0, "large batch": 1},
                               xlabel=r"$\alpha$  ($\theta = \theta_{\mathrm{small}}"
                                      r" + \alpha\,(\theta_{\mathrm{large}} - \theta_{\mathrm{small}})$)")


def _random_lines_figure(rand):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.6), layout="constrained")
    ax_l, ax_a = fig.subplots(1, 2)
    lines = {f"{label} {name}": s for label, by in rand.items() for name, s in by.items()}
    xlabel = "filter-normalised random direction"
    fastscape.plot.line(lines, ax=ax_l, metric=None, log=True, xlabel=xlabel)
    fastscape.plot.line(lines, ax=ax_a, value="accuracy", metric=None, xlabel=xlabel)
    return fig


if __name__ == "__main__":
    main()
