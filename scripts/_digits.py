"""Shared pieces of the real-data examples: scikit-learn's bundled digits (1797
8x8 grey images, 10 classes; no download) and the networks trained on them."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch import nn


def load_digits_tensors(seed: int = 0, test_fraction: float = 0.25):
    """Train/test tensors: images (N, 1, 8, 8) scaled to [0, 1], labels (N,) int64.

    The split is stratified and fixed by ``seed``.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    y = digits.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    t = torch.from_numpy
    return t(xtr), t(ytr), t(xte), t(yte)


class DigitsCNN(nn.Module):
    """Conv(1->8)-BN-ReLU, Conv(8->16)-BN-ReLU, 2x2 max-pool, Linear(256->10)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


class DigitsMLP(nn.Module):
    """64-128-128-10 ReLU MLP on flattened images."""

    def __init__(self, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x):
        return self.net(x)


def loader(x, y, batch_size: int, seed: int):
    ds = torch.utils.data.TensorDataset(x, y)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True,
                                       generator=torch.Generator().manual_seed(seed))


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", default="out/" + description.split(":")[0].strip().replace(" ", "_").lower(),
                   help="output folder (default: %(default)s)")
    p.add_argument("--small", action="store_true", help="a quick run at small size (used by CI)")
    p.add_argument("--seed", type=int, default=0)
    return p


def write_summary(out: Path, lines: list[str], numbers: dict | None = None) -> Path:
    """Write ``summary.txt`` (and ``summary.json`` with ``numbers``) and print the lines."""
    import json

    path = Path(out) / "summary.txt"
    path.write_text("\n".join(lines) + "\n")
    if numbers is not None:
        (Path(out) / "summary.json").write_text(json.dumps(numbers, indent=2))
    for line in lines:
        print(line)
    print(f"wrote {path}")
    return path
