"""resnet18 for the subset benchmark and script: torchvision's when it imports, else the same
architecture written here (He et al. 2016, as torchvision builds it: 7x7 stem, max-pool, four
stages of two basic blocks, 11.2 M parameters with 10 classes, the same parameter names:
``conv1``, ``bn1``, ``layer1`` ... ``layer4``, ``fc``). On this machine PyPI's torchvision wheel
is the CUDA build and cannot load against the CPU torch, so the copy below is what runs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
                           if stride != 1 or c_in != c_out else None)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet18(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, c_in = [], 64
        for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages.append(nn.Sequential(BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out)))
            c_in = c_out
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def resnet18(num_classes: int = 10) -> tuple[nn.Module, str]:
    """(model, where it came from): torchvision's resnet18 when torchvision imports, else ours."""
    try:
        from torchvision.models import resnet18 as tv_resnet18

        return tv_resnet18(num_classes=num_classes), "torchvision"
    except Exception:  # noqa: BLE001 - not installed, or a wheel that does not load against this torch
        return ResNet18(num_classes), "benchmarks/resnet18.py (torchvision's architecture)"


def workload(n: int = 64, seed: int = 0) -> dict:
    """resnet18 with warmed BatchNorm statistics, n random CIFAR-sized images, 10 classes."""
    torch.manual_seed(seed)
    model, source = resnet18(10)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    model.train()
    with torch.no_grad():
        model(x)
    return dict(model=model.eval(), x=x, y=y, loss_fn=F.cross_entropy, source=source)
