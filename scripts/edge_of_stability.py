"""The top Hessian eigenvalue along full-batch gradient descent, next to 2 / lr (digits).

Cohen, Kaur, Li, Kolter and Talwalkar, "Gradient Descent on Neural Networks Typically
Occurs at the Edge of Stability", ICLR 2021: under full-batch gradient descent with step
``lr`` the sharpness (the top eigenvalue of the training-loss Hessian) rises until it
reaches about ``2 / lr``, then hovers there while the loss keeps falling, non-monotonically.
This script trains a tanh MLP on digits with MSE on one-hot targets (their setting) for
two learning rates and measures ``lambda_max`` with :func:`fastscape.curvature.hessian_eigenpairs`
every few steps. It prints the claim and what this run measured; it does not assert the claim.

    python scripts/edge_of_stability.py [--small] [--out DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fastscape  # noqa: E402
from fastscape import curvature  # noqa: E402
from _digits import load_digits_tensors, parser, write_summary  # noqa: E402

#: the learning rates compared (2/lr = 4 and 2)
LRS = (0.5, 1.0)
CLAIM = ("Cohen et al. (2021): under full-batch gradient descent the top Hessian eigenvalue rises to about "
         "2 / lr and then hovers there (the edge of stability).")


def _mse_onehot(output, target):
    return F.mse_loss(output, F.one_hot(target, 10).to(output.dtype))


def _run(x, y, lr: float, steps: int, every: int, seed: int):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    at, lam, losses = [], [], []
    for step in range(steps + 1):
        if step % every == 0:
            top = curvature.hessian_eigenpairs(model, (x, y), loss_fn=_mse_onehot, n=1, tol=1e-3, max_iter=40,
                                               device="cpu")[1][0]
            at.append(step)
            lam.append(float(top))
        opt.zero_grad()
        loss = _mse_onehot(model(x), y)
        losses.append(float(loss.detach()))
        loss.backward()
        opt.step()
    return np.array(at), np.array(lam), np.array(losses)


def main(argv=None) -> dict:
    p = parser("edge_of_stability: the top Hessian eigenvalue along gradient descent")
    args = p.parse_args(argv)
    steps, every = (300, 30) if args.small else (3000, 50)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    xtr, ytr, _, _ = load_digits_tensors(args.seed)
    x = xtr
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4), layout="constrained")
    axes = fig.subplots(1, 2)
    lines = [f"paper's claim: {CLAIM}", "measured in this run (full-batch GD, tanh MLP 64-64-10, MSE on one-hot):"]
    numbers = {}
    for ax, lr in zip(axes, LRS):
        at, lam, losses = _run(x, ytr, lr, steps, every, args.seed)
        fastscape.plot.edge_of_stability(at, lam, lr, ax=ax)
        ax.set_title(f"lr = {lr}: $\\lambda_{{\\max}}$ along training")
        loss_ax = ax.twinx()
        loss_ax.plot(np.arange(len(losses)), losses, color="0.6", lw=0.8, label="training loss (right axis)")
        loss_ax.set_ylabel("training loss (grey)")
        # one legend for both axes, under the plot: inside, the loss curve's spike ran through it
        handles = [h for a in (ax, loss_ax) for h in a.get_legend_handles_labels()[0]]
        ax.get_legend().remove()
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=2, fontsize=8,
                  frameon=False)
        numbers[str(lr)] = {"steps": at.tolist(), "lambda_max": lam.tolist(), "final_loss": losses[-1]}
        lines.append(f"lr {lr}: 2/lr = {2 / lr:.2f}; lambda_max at steps {at[0]}, {at[len(at) // 2]}, {at[-1]}: "
                     f"{lam[0]:.2f}, {lam[len(lam) // 2]:.2f}, {lam[-1]:.2f} (max {lam.max():.2f}); "
                     f"final loss {losses[-1]:.4f}")
    written = fastscape.plot.save(fig, out / "edge_of_stability.png")
    lines.append(f"wrote {written}")
    write_summary(out, lines, numbers)
    return numbers


if __name__ == "__main__":
    main()
