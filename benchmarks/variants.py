"""Issue 12's other widths and sample counts, timed warm against the per-point loop in one process.

    PYTHONPATH=. python benchmarks/variants.py cnn12 auto 11 3     # workload, strategies, grid, rounds
    PYTHONPATH=. python benchmarks/variants.py mlp300 auto,mlp 21 3

``cnn12``: the benchmark CNN with 12/24 channels on 1500 images; ``mlp300``: a 784-300-100-10
ReLU MLP on 8000 samples; any name of :mod:`benchmarks.workloads` works too. After one warm-up
call per strategy, each round times the loop on random grid points, then every strategy over the
whole grid, and prints the load average, the rates and their ratios.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fastscape  # noqa: E402
from benchmarks.workloads import _mlp, build, directions_of, loop_points_per_second  # noqa: E402


class CNN12(nn.Module):
    """Conv-BN-ReLU-pool twice (12 and 24 channels) and a linear head on 3x32x32 images."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(12, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.head = nn.Linear(24, 10)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def variant(name: str) -> dict:
    """A workload dict like :func:`benchmarks.workloads.build`'s, from fixed seeds."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    if name == "cnn12":
        model = CNN12()
        x, y = torch.randn(1500, 3, 32, 32, generator=g), torch.randint(0, 10, (1500,), generator=g)
        model.train()
        with torch.no_grad():  # non-trivial BatchNorm statistics
            for i in range(0, 1500, 500):
                model(x[i:i + 500])
        model.eval()
        return dict(model=model, x=x, y=y, loss_fn=F.cross_entropy, grid=(-1.0, 1.0, 21), loop_points=20)
    if name == "mlp300":
        model = _mlp([784, 300, 100, 10], nn.ReLU)
        x, y = torch.randn(8000, 784, generator=g), torch.randint(0, 10, (8000,), generator=g)
        return dict(model=model, x=x, y=y, loss_fn=F.cross_entropy, grid=(-1.0, 1.0, 31), loop_points=30)
    return build(name)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    name, strategies = argv[0], argv[1].split(",")
    w = variant(name)
    if len(argv) > 2:
        w["grid"] = (w["grid"][0], w["grid"][1], int(argv[2]))
    rounds = int(argv[3]) if len(argv) > 3 else 2
    dirs, origin = directions_of(w)
    lo, hi, num = w["grid"]
    coords = torch.from_numpy(np.random.default_rng(0).uniform(lo, hi, (w["loop_points"], 2)))

    def surface(strategy):
        t = time.perf_counter()
        s = fastscape.loss_surface(w["model"], (w["x"], w["y"]), dirs, origin=origin, loss_fn=w["loss_fn"],
                                   grid=w["grid"], device="cpu", progress=False, strategy=strategy)
        return num * num / (time.perf_counter() - t), s

    for strategy in strategies:
        surface(strategy)  # warm-up: probes, compiles
    for _ in range(rounds):
        loop = loop_points_per_second(w, coords, dirs, origin)
        with open("/proc/loadavg") as f:
            row = [f"load {f.read().split()[0]} loop {loop:,.1f}"]
        for strategy in strategies:
            pps, s = surface(strategy)
            row.append(f"{s.meta['strategy']}({s.meta['chunk_size']}x{s.meta['batch_size']}) {pps:,.1f} "
                       f"{pps / loop:.2f}x")
        print(" | ".join(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
