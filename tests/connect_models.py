"""Models for the connectivity tests: a residual CNN with BatchNorm, and a net whose two
minima the straight line separates."""

from __future__ import annotations

import torch
from torch import nn


class ResidualCNN(nn.Module):
    """Conv-BN-ReLU stem, one residual block (two conv-BN with the stem's channels), pooled head."""

    def __init__(self, channels=6, classes=4):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(channels, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU(),
                                   nn.Conv2d(5, channels, 3, padding=1), nn.BatchNorm2d(channels))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(channels, classes)

    def forward(self, x):
        h = self.stem(x)
        h = torch.relu(h + self.block(h))
        return self.head(self.pool(h).flatten(1))


class FlatCNN(nn.Module):
    """Conv-BN-ReLU, then a Linear on the flattened (C, H, W) map."""

    def __init__(self, channels=4, classes=3):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(),
                                  nn.MaxPool2d(2))
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(channels * 16, 7), nn.ReLU(), nn.Linear(7, classes))

    def forward(self, x):
        return self.fc(self.conv(x))
