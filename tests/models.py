"""Small but real models for tests: an MLP, a CNN with BatchNorm, a model with
a registered buffer, an LSTM (vmap fallback) and a transformer encoder."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, d_in=5, hidden=16, d_out=3):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.Tanh(),
                                 nn.Linear(hidden, d_out))

    def forward(self, x):
        return self.net(x)


class SmallCNN(nn.Module):
    """Conv -> BatchNorm -> ReLU -> pool, twice, then a linear head; 1x8x8 inputs."""

    def __init__(self, classes=4):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(8, classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def trained_bn_stats(model: nn.Module, x: torch.Tensor, steps: int = 3) -> nn.Module:
    """Give BatchNorm non-trivial running statistics (``steps`` forwards of ``x`` in train mode,
    no gradients); the model is returned still in train mode, as a training script leaves it."""
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(x)
    return model


class WithBuffer(nn.Module):
    """A linear model that standardises its input with registered buffers."""

    def __init__(self, d_in=4):
        super().__init__()
        self.register_buffer("mean", torch.linspace(-1, 1, d_in))
        self.register_buffer("scale", torch.linspace(0.5, 2, d_in))
        self.fc = nn.Linear(d_in, 1)

    def forward(self, x):
        return self.fc((x - self.mean) / self.scale)


class LSTMRegressor(nn.Module):
    def __init__(self, d_in=3, hidden=6):
        super().__init__()
        self.lstm = nn.LSTM(d_in, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


class TinyTransformer(nn.Module):
    def __init__(self, vocab=11, d_model=16, classes=3):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        layer = nn.TransformerEncoderLayer(d_model, nhead=2, dim_feedforward=32, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, classes)

    def forward(self, tokens):
        return self.head(self.encoder(self.embed(tokens)).mean(dim=1))


def snapshot(model: nn.Module):
    """Everything a call must leave as it was: the state dict (cloned) and every training flag."""
    return {k: v.clone() for k, v in model.state_dict().items()}, [mod.training for mod in model.modules()]


def assert_unchanged(model: nn.Module, snap) -> None:
    """Weights and buffers bit for bit, and every submodule's training flag, as in ``snap``."""
    state, flags = snap
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), f"{k} changed"
    assert [mod.training for mod in model.modules()] == flags


class SmallTanhNet(nn.Module):
    def __init__(self, d_in=3):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, 4), nn.Tanh(), nn.Linear(4, 1))

    def forward(self, x):
        return self.net(x)


def small_tanh_setup(n=8, d_in=3):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = SmallTanhNet()
    return model, torch.randn(n, d_in, generator=g), torch.randn(n, 1, generator=g)


def linear_regression_case(seed: int, n: int, noise: float, bias: float):
    """``y = 2x + 1 + noise * N(0, 1)`` on ``n`` points ``x`` in [0, 2] (seeded), and an
    ``nn.Linear(1, 1)`` started away from the fit (weight -0.5, bias ``bias``): ``(model, x, y)``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=g) * 2
    y = 2 * x + 1 + noise * torch.randn(n, 1, generator=g)
    model = nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.fill_(-0.5)
        model.bias.fill_(bias)
    return model, x, y
