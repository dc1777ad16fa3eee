"""Sharp vs flat minima on digits (Keskar et al. 2017, revisited by Li et al. 2018).

Trains the same network from the same initialisation with a small and a large
batch size, then measures, on training and test data:

- the 1-D linear interpolation between the two solutions (Goodfellow et al. 2015
  style, coordinate 0 = small-batch solution, 1 = large-batch solution);
- a filter-normalised random line through each solution (Li et al. 2018);
- the top Hessian eigenvalue of each solution.

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
    for label, bs in (("small-batch", args.small_batch), ("large-batch", args.large_batch)):
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

    written = [fastscape.plot.save(_interpolation_figure(line), out / "sharp_flat_interpolation.png"),
               fastscape.plot.save(_random_lines_figure(rand), out / "sharp_flat_random_lines.png")]

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
    sharper = max(top, key=top.get)
    better = max(rand, key=lambda k: rand[k]["test"].metrics["accuracy"][int(np.argmin(np.abs(rand[k]['test'].coords[0])))])
    lines.append(f"in this run the {sharper} solution has the larger top Hessian eigenvalue and the {better} "
                 "solution the higher test accuracy.")
    mid = line["train"]
    lines.append("interpolation: train loss at 0 / 0.5 / 1: "
                 + " / ".join(f"{np.interp(a, mid.coords[0], mid.loss):.4f}" for a in (0.0, 0.5, 1.0)))
    lines += [f"wrote {p}" for p in written]
    write_summary(out, lines, {"top_eigenvalue": top, "epochs": epochs})
    return {"top_eigenvalues": top, "interpolation": line, "random_lines": rand}


def _interpolation_figure(line):
    """Train and test loss (solid, log scale) and accuracy (dashed) from the small- to the large-batch model."""
    return fastscape.plot.line(line, metric="accuracy", log=True, marks={"small batch": 0, "large batch": 1},
                               xlabel="α  (θ = θ_small + α (θ_large − θ_small))")


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
