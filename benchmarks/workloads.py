"""The benchmark workloads and the per-point baseline, shared by report.py and the
pytest-benchmark cases. Every workload is built from fixed seeds, so every method
sees the same weights, directions and data."""

from __future__ import annotations

import contextlib
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


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers and a shortcut (1x1 conv-BN where the shape changes)."""

    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet20(nn.Module):
    """The CIFAR ResNet-20 of He et al. 2016: 3 stages of 3 basic blocks (16, 32, 64
    channels), global average pool, linear head; 0.27 M parameters, ~41 M
    multiply-adds per 3x32x32 image."""

    def __init__(self, classes=10):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        blocks, c_in = [], 16
        for c_out, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(3):
                blocks.append(BasicBlock(c_in, c_out, stride if i == 0 else 1))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(64, classes)

    def forward(self, x):
        out = self.blocks(F.relu(self.bn(self.conv(x))))
        return self.head(F.adaptive_avg_pool2d(out, 1).flatten(1))


#: the sizes of each workload: "cpu" is the development machine's table (issue 7),
#: "gpu" the GPU check's (issue 13); ``quick`` shrinks either for a rehearsal.
#: name -> sizes -> (grid resolution, samples, loop points); quick -> the same, smaller
SIZES = {
    "seed000": {"cpu": (1001, 2000, 300), "gpu": (2001, 2000, 2000),
                "cpu-quick": (201, 2000, 300), "gpu-quick": (41, 2000, 100)},
    "mlp64": {"cpu": (30, 256, 300), "gpu": (101, 256, 2000),
              "cpu-quick": (30, 256, 300), "gpu-quick": (15, 256, 100)},
    "mnist": {"cpu": (51, 10_000, 60), "gpu": (201, 10_000, 500),
              "cpu-quick": (21, 10_000, 20), "gpu-quick": (7, 1000, 10)},
    "cnn": {"cpu": (21, 2000, 30), "gpu": (51, 2000, 300),
            "cpu-quick": (11, 2000, 10), "gpu-quick": (5, 64, 5)},
    "transformer": {"cpu": (11, 512, 30), "gpu": (41, 512, 300),
                    "cpu-quick": (7, 512, 10), "gpu-quick": (5, 64, 5)},
    "resnet20": {"cpu": (5, 1000, 3), "gpu": (21, 10_000, 60),
                 "cpu-quick": (3, 256, 2), "gpu-quick": (3, 32, 2)},
}


def _count(n: int) -> str:
    """10000 -> "10 000" (the labels' style)."""
    return f"{n:_}".replace("_", " ")


def build(name: str, quick: bool = False, sizes: str = "cpu") -> dict:
    """A workload: model, data (x, y), loss_fn, directions, origin, grid, loop subset size.

    ``sizes`` is "cpu" (the development machine's table) or "gpu" (the GPU check's
    grids and data); ``quick`` shrinks either for a rehearsal (see ``SIZES``).
    """
    if name not in SIZES:
        raise KeyError(f"unknown workload {name!r}; expected one of {list(SIZES)}")
    if sizes not in ("cpu", "gpu"):
        raise ValueError(f"`sizes` must be 'cpu' or 'gpu'; got {sizes!r}.")
    res, n, loop_points = SIZES[name][sizes + ("-quick" if quick else "")]
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    if name == "seed000":
        model = TwoWeightNet()
        x, y = piecewise_data(n)
        names = ["net.0.weight", "net.2.weight"]
        return dict(model=model, x=x, y=y, loss_fn=F.mse_loss,
                    directions=fastscape.axis_directions(model, names),
                    origin=fastscape.axis_origin(model, names, at="zero"),
                    grid=(-2.0, 2.0, res), loop_points=loop_points,
                    label=f"seed-000 net (1-1-1 tanh), {n} samples")
    if name == "mlp64":
        model = _mlp([1, 64, 64, 64, 1], nn.ReLU)
        x = torch.rand(n, 1, generator=g) * 4 - 2
        y = torch.sin(2 * x) + 0.1 * torch.randn(n, 1, generator=g)
        return dict(model=model, x=x, y=y, loss_fn=F.mse_loss, grid=(-1.0, 1.0, res), loop_points=loop_points,
                    label=f"MLP 1-64-64-64-1 ReLU, {n} samples")
    if name == "mnist":
        model = _mlp([784, 256, 128, 10], nn.ReLU)
        x = torch.randn(n, 784, generator=g)
        y = torch.randint(0, 10, (n,), generator=g)
        return dict(model=model, x=x, y=y, loss_fn=F.cross_entropy, grid=(-1.0, 1.0, res),
                    loop_points=loop_points, label=f"MLP 784-256-128-10, {_count(n)} samples")
    if name in ("cnn", "resnet20"):
        model = CNN() if name == "cnn" else ResNet20()
        x = torch.randn(n, 3, 32, 32, generator=g)
        y = torch.randint(0, 10, (n,), generator=g)
        model.train()
        with torch.no_grad():  # non-trivial BatchNorm statistics
            for i in range(0, min(n, 2000), 500):
                model(x[i:i + 500])
        model.eval()
        label = (f"CNN + BatchNorm, 3x32x32, {n} samples" if name == "cnn"
                 else f"ResNet-20 (0.27 M params), 3x32x32, {_count(n)} samples")
        return dict(model=model, x=x, y=y, loss_fn=F.cross_entropy, grid=(-1.0, 1.0, res),
                    loop_points=loop_points, label=label)
    if name == "transformer":
        model = Encoder()
        x = torch.randint(0, 100, (n, 32), generator=g)
        y = torch.randint(0, 4, (n,), generator=g)
        return dict(model=model, x=x, y=y, loss_fn=F.cross_entropy, grid=(-1.0, 1.0, res),
                    loop_points=loop_points,
                    label=f"transformer encoder (1 layer, d 64), {n} x 32 tokens")
    raise KeyError(name)


#: the development machine's table (issue 7)
WORKLOADS = ["seed000", "mlp64", "mnist", "cnn", "transformer"]
#: the GPU check's table (issue 13), headline workloads first
GPU_WORKLOADS = ["seed000", "mnist", "cnn", "transformer", "resnet20"]


def directions_of(w: dict):
    if "directions" in w:
        return list(w["directions"]), w["origin"]
    dirs = fastscape.random_directions(w["model"], 2, norm="filter", seed=0)
    return list(dirs), None


@contextlib.contextmanager
def precision(mode: str, device_type: str = "cuda"):
    """Run a block in one of the GPU check's precision modes; yields the ``dtype`` to
    pass to :func:`fastscape.loss_surface` ("float32" or "bfloat16").

    ``"fp32"``: TF32 off for cuBLAS matmuls *and* cuDNN convolutions (cuDNN's TF32
    is on by default in PyTorch); ``"tf32"``: both on; ``"bf16"``: TF32 off and
    ``dtype="bfloat16"`` (parameters, data and activations in bf16, the loss in
    float32). The TF32 flags are PyTorch's global switches; they are restored on exit.
    """
    if mode not in PRECISIONS:
        raise ValueError(f"`precision` must be one of {PRECISIONS}; got {mode!r}.")
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = mode == "tf32"
    try:
        yield "bfloat16" if mode == "bf16" else "float32"
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


PRECISIONS = ["fp32", "tf32", "bf16"]


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def loop_values(w: dict, coords, directions, origin, *, dtype=None, max_seconds: float | None = None,
                warmup: int = 0) -> tuple[list[float], float]:
    """The set-weights-and-forward loop of the source articles and existing tools:
    copy origin + a*d1 + b*d2 into the model's parameters, one forward over the
    data as ONE batch (the honest, fastest form of it), ``loss.item()``.

    Runs on a deep copy, on the device of ``w["x"]``, in ``dtype`` when given
    (float64 for the reference), under whatever precision context the caller set.
    ``warmup`` points are run first and not timed; the timed loop stops after
    ``max_seconds`` (at least one point). Returns (losses of the timed points,
    points per second).
    """
    import copy

    x, y, loss_fn = w["x"], w["y"], w["loss_fn"]
    device = x.device
    model = copy.deepcopy(w["model"]).to(device).eval()
    if dtype is not None:
        model = model.to(dtype)
        x = x.to(dtype) if x.is_floating_point() else x
        y = y.to(dtype) if y.is_floating_point() else y
    params = dict(model.named_parameters())
    cast = lambda t: t.to(device=device, dtype=params_dtype(params, t))  # noqa: E731
    base = ({k: cast(v) for k, v in origin.items()} if origin is not None
            else {k: v.detach().clone() for k, v in params.items()})
    dirs = [{k: cast(v) for k, v in d.items()} for d in directions]
    rows = coords.tolist()

    def one(a, b):
        for k, p in params.items():
            p.copy_(base[k] + a * dirs[0][k] + b * dirs[1][k])
        return loss_fn(model(x), y).item()

    with torch.no_grad():
        for a, b in rows[:warmup]:
            one(a, b)
        _sync(device)
        values = []
        t = time.perf_counter()
        for a, b in rows:
            values.append(one(a, b))
            if max_seconds is not None and time.perf_counter() - t > max_seconds:
                break
        return values, len(values) / (time.perf_counter() - t)


def params_dtype(params: dict, t: torch.Tensor):
    """The parameters' floating dtype for a floating ``t`` (integer tensors keep theirs)."""
    return next(iter(params.values())).dtype if t.is_floating_point() else t.dtype


def loop_points_per_second(w: dict, coords, directions, origin) -> float:
    """Points per second of :func:`loop_values` over all of ``coords`` (n, 2)."""
    return loop_values(w, coords, directions, origin)[1]
