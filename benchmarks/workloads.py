"""The benchmark workloads and the per-point baseline, shared by report.py and the
pytest-benchmark cases. Every workload is built from fixed seeds, so every method
sees the same weights, directions and data."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

import fastscape
from fastscape._demo import TwoWeightNet, piecewise_data


class CNN(nn.Module):
    """Conv-BN-ReLU-pool twice and a linear head on 3x32x32 images."""

    def __init__(self, classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


class Encoder(nn.Module):
    """Token embedding, one transformer encoder layer (d_model 64, 4 heads), mean pool, head."""

    def __init__(self, vocab=100, d_model=64, classes=4):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        layer = nn.TransformerEncoderLayer(d_model, nhead=4, dim_feedforward=128, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, classes)

    def forward(self, tokens):
        return self.head(self.encoder(self.embed(tokens)).mean(dim=1))


def _mlp(sizes, act):
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), act()]
    return nn.Sequential(*layers[:-1])


def build(name: str, quick: bool = False) -> dict:
    """A workload: model, data (x, y), loss_fn, directions, origin, grid, loop subset size."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    if name == "seed000":
        model = TwoWeightNet()
        x, y = piecewise_data(2000)
        names = ["net.0.weight", "net.2.weight"]
        return dict(model=model, x=x, y=y, loss_fn=F.mse_loss,
                    directions=fastscape.axis_directions(model, names),
                    origin=fastscape.axis_origin(model, names, at="zero"),
                    grid=(-2.0, 2.0, 201 if quick else 1001), loop_points=300,
                    label="seed-000 net (1-1-1 tanh), 2000 samples")
    if name == "mlp64":
        model = _mlp([1, 64, 64, 64, 1], nn.ReLU)
        x = torch.rand(256, 1, generator=g) * 4 - 2
        y = torch.sin(2 * x) + 0.1 * torch.randn(256, 1, generator=g)
        return dict(model=model, x=x, y=y, loss_fn=F.mse_loss, grid=(-1.0, 1.0, 30), loop_points=300,
                    label="MLP 1-64-64-64-1 ReLU, 256 samples")
    if name == "mnist":
        model = _mlp([784, 256, 128, 10], nn.ReLU)
        x = torch.randn(10_000, 784, generator=g)
        y = torch.randint(0, 10, (10_000,), generator=g)
        return dict(model=model, x=x, y=y, loss_fn=F.cross_entropy, grid=(-1.0, 1.0, 21 if quick else 51),
                    loop_points=20 if quick else 60, label="MLP 784-256-128-10, 10 000 samples")
    if name == "cnn":
        model = CNN()
        x = torch.randn(2000, 3, 32, 32, generator=g)
        y = torch.randint(0, 10, (2000,), generator=g)
        model.train()
        with torch.no_grad():  # non-trivial BatchNorm statistics
            for i in range(0, 2000, 500):
                model(x[i:i + 500])
        model.eval()
        return dict(model=model, x=x, y=y, loss_fn=F.cross_entropy, grid=(-1.0, 1.0, 11 if quick else 21),
                    loop_points=10 if quick else 30, label="CNN + BatchNorm, 3x32x32, 2000 samples")
    if name == "transformer":
        model = Encoder()
        x = torch.randint(0, 100, (512, 32), generator=g)
        y = torch.randint(0, 4, (512,), generator=g)
        return dict(model=model, x=x, y=y, loss_fn=F.cross_entropy, grid=(-1.0, 1.0, 7 if quick else 11),
                    loop_points=10 if quick else 30, label="transformer encoder (1 layer, d 64), 512 x 32 tokens")
    raise KeyError(name)


WORKLOADS = ["seed000", "mlp64", "mnist", "cnn", "transformer"]


def directions_of(w: dict):
    if "directions" in w:
        return list(w["directions"]), w["origin"]
    dirs = fastscape.random_directions(w["model"], 2, norm="filter", seed=0)
    return list(dirs), None


def loop_points_per_second(w: dict, coords, directions, origin) -> float:
    """The set-weights-and-forward loop of the source articles and existing tools:
    copy origin + a*d1 + b*d2 into the model's parameters, one forward over the
    data as ONE batch (the honest, fastest form of it), ``loss.item()``.
    Runs on a deep copy; returns points per second over ``coords`` (n, 2)."""
    import copy

    model = copy.deepcopy(w["model"]).eval()
    params = dict(model.named_parameters())
    base = origin if origin is not None else {k: v.detach().clone() for k, v in params.items()}
    x, y, loss_fn = w["x"], w["y"], w["loss_fn"]
    with torch.no_grad():
        t = time.perf_counter()
        for a, b in coords.tolist():
            for k, p in params.items():
                p.copy_(base[k] + a * directions[0][k] + b * directions[1][k])
            loss_fn(model(x), y).item()
        return len(coords) / (time.perf_counter() - t)
