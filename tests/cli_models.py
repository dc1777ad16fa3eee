"""Model and data factories that the CLI tests name by import path
(``tests.cli_models:make_model``); importable with the worktree root on PYTHONPATH."""

from __future__ import annotations

import torch
from torch import nn


class Net(nn.Module):
    """A small classifier: Linear -> Tanh -> Linear -> ReLU -> Linear, with a bias everywhere."""

    def __init__(self, d_in=6, hidden=24, classes=3):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.ReLU(),
                                  nn.Linear(hidden, classes))

    def forward(self, x):
        return self.body(x)


def make_model() -> nn.Module:
    """Fresh random weights (the tests load checkpoints over them)."""
    return Net()


def make_data():
    """An (inputs, targets) pair of 96 samples."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(96, 6, generator=g)
    return x, torch.randint(0, 3, (96,), generator=g)


def make_dataset():
    """The same samples as a map-style Dataset."""
    return torch.utils.data.TensorDataset(*make_data())


def make_loader():
    """The same samples as a DataLoader of batches of 32, in order."""
    return torch.utils.data.DataLoader(make_dataset(), batch_size=32, shuffle=False)


def make_big_data():
    """512 samples: some work per grid point, so that a run lasts long enough to be killed."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(512, 6, generator=g)
    return x, torch.randint(0, 3, (512,), generator=g)


def not_a_module():
    return 42


def run_cli(argv, capsys):
    """``fastscape ARGV`` in-process: ``(exit status, stdout, stderr)``."""
    from fastscape._cli import main

    try:
        rc = main([str(a) for a in argv])
    except SystemExit as err:
        rc = err.code
    cap = capsys.readouterr()
    return rc, cap.out, cap.err
