"""Mode connectivity of two CNNs with BatchNorm on scikit-learn's digits.

Trains the same CNN from two seeds, then measures, with BatchNorm statistics recomputed at
every point from the training images:

- the barrier on the straight line between them (Frankle et al., ICML 2020);
- the barrier after permuting the second network's units to match the first by weight
  matching (Ainsworth et al., "Git Re-Basin", ICLR 2023);
- a quadratic Bezier curve between them, its bend trained on the loss expected along it
  (Garipov et al., NeurIPS 2018), drawn on the plane through both networks and the bend.

    python scripts/mode_connectivity.py [--quick] [--out DIR]
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
import fastscape.connect as connect  # noqa: E402
from _digits import DigitsCNN, load_digits_tensors, loader, parser, write_summary  # noqa: E402


def train(seed: int, x, y, epochs: int) -> DigitsCNN:
    torch.manual_seed(seed)
    model = DigitsCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(epochs):
        model.train()
        for xb, yb in loader(x, y, 64, seed):
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
    return model.eval()


def _plane(a, b, curve, data, calibration, res: int):
    """The train loss on the plane through A, B and the bend, and the curve's path on it."""
    bend = DigitsCNN()
    bend.load_state_dict({**b.state_dict(), **curve.bend})
    plane, positions = fastscape.interpolation_plane(a, b, bend)
    xs, ys = positions[:, 0], positions[:, 1]
    pad_x, pad_y = 0.2 * (xs.max() - xs.min()), 0.35 * (ys.max() - ys.min())
    grid = [(xs.min() - pad_x, xs.max() + pad_x, res), (min(ys.min(), 0) - pad_y, ys.max() + pad_y, res)]
    surf = fastscape.loss_surface(a, data, plane, origin=a, loss_fn=F.cross_entropy, grid=grid, device="cpu",
                                  progress=False, recalibrate=calibration)
    path = curve.plane_path(positions, np.linspace(0, 1, 41))
    return surf, positions, path


def main(argv=None) -> dict:
    p = parser("mode_connectivity: two digits CNNs, a line, an aligned line and a curve")
    p.add_argument("--quick", dest="small", action="store_true", help="a quick run at small size (CI)")
    args = p.parse_args(argv)
    quick = args.small
    epochs, curve_epochs, n_t, res = (2, 3, 11, 7) if quick else (12, 30, 41, 21)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    xtr, ytr, xte, yte = load_digits_tensors(args.seed)
    if quick:
        xtr, ytr, xte, yte = xtr[:300], ytr[:300], xte[:200], yte[:200]
    t0 = time.perf_counter()
    a, b = train(args.seed, xtr, ytr, epochs), train(args.seed + 1, xtr, ytr, epochs)
    data = {"train": (xtr, ytr), "test": (xte, yte)}
    calibration = [(xtr[i:i + 128], ytr[i:i + 128]) for i in range(0, len(xtr), 128)]
    metrics = {"accuracy": fastscape.accuracy}
    common = dict(loss_fn=F.cross_entropy, metrics=metrics, n=n_t, recalibrate=calibration, device="cpu")
    raw = connect.barrier(a, b, data, label="raw", **common)
    alignment = connect.align(a, b, seed=args.seed)
    aligned = connect.barrier(a, alignment.model, data, label="aligned (weight matching)", **common)
    curve = connect.train_curve(a, b, (xtr, ytr), loss_fn=F.cross_entropy, epochs=curve_epochs, lr=0.05,
                                batch_size=64, seed=args.seed)
    profile = connect.evaluate_curve(curve, a, data, **common)
    surf, positions, path = _plane(a, b, curve, {"train": (xtr, ytr)}, calibration, res)
    seconds = time.perf_counter() - t0

    plot = fastscape.plot
    for value in ("loss", "accuracy"):
        plot.save(plot.curve_profile(profile, value=value), out / f"curve_{value}.png")
        plot.save(plot.barriers([raw, aligned], value=f"test/{value}"), out / f"barrier_alignment_{value}.png")
    ax = plot.contour(surf, path=path, path_label="point on the Bezier curve (0 = A)",
                      points={"A": positions[0], "B": positions[1], "bend": positions[2]},
                      axis_labels=["along B \u2212 A (parameter distance)", "towards the bend (parameter distance)"],
                      title="train loss, plane through A, B and the bend\n(BatchNorm recalibrated)")
    plot.save(ax, out / "curve_plane.png")

    numbers = {
        "barrier_raw": raw.heights, "barrier_aligned": aligned.heights, "barrier_curve": profile.heights["curve"],
        "barrier_line_on_curve_call": profile.heights["line"], "align_sweeps": alignment.meta["sweeps"],
        "curve_train_loss": curve.meta["train_loss"], "seconds": seconds,
    }
    row = "{:<28s} {:>10.4f} {:>10.4f} {:>10.4f} {:>10.4f}"
    lines = [f"digits CNN with BatchNorm, seeds {args.seed} and {args.seed + 1}: {len(xtr)} train / {len(xte)} test "
             f"images, {epochs} epochs each; Bezier bend trained {curve_epochs} epochs; {n_t} points per path, "
             "BatchNorm recalibrated at every point",
             "barrier height (max rise above the interpolation of the ends; accuracy: fall)",
             "{:<28s} {:>10s} {:>10s} {:>10s} {:>10s}".format("path", "train loss", "test loss", "train acc",
                                                            "test acc")]
    for label, h in (("straight line (raw)", raw.heights), ("straight line (aligned)", aligned.heights),
                     ("Bezier curve (raw ends)", profile.heights["curve"])):
        keys = ("train/loss", "test/loss", "train/accuracy", "test/accuracy")
        lines.append(row.format(label, *(h[k] + 0.0 for k in keys)))  # + 0.0: no "-0.0000"
    lines.append(f"total {seconds:.1f} s")
    write_summary(out, lines, numbers)
    return numbers


if __name__ == "__main__":
    main()
