"""The loss x model matrix of issue 11, kept tiny so that dense float64 Hessians
and per-point reference loops cost milliseconds.

Every loss the CLI names, plus ``huber_loss``, ``smooth_l1_loss``, a loss
module (``nn.MSELoss()``) and a user-written loss; an MLP, a CNN with
BatchNorm, a transformer encoder and an LSTM, each with a 3-wide output.
Nothing here imports fastscape.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

OUT = 3  # every model's output width


def cauchy_loss(output, target):
    """A user-written loss: the Cauchy (log1p of the squared error) loss, twice differentiable."""
    return torch.log1p((output - target) ** 2).mean()


#: name -> (loss function, kind of target). Kinds: "class" (indices (N,)),
#: "real" (floats (N, OUT)), "prob" (floats in [0, 1], (N, OUT)).
LOSSES = {
    "cross_entropy": (F.cross_entropy, "class"),
    "nll": (F.nll_loss, "class"),
    "mse": (F.mse_loss, "real"),
    "l1": (F.l1_loss, "real"),
    "bce_with_logits": (F.binary_cross_entropy_with_logits, "prob"),
    "huber": (F.huber_loss, "real"),
    "smooth_l1": (F.smooth_l1_loss, "real"),
    "MSELoss()": (nn.MSELoss(), "real"),
    "user": (cauchy_loss, "real"),
}


class TinyMLP(nn.Module):
    """``forward`` returns its Sequential's output (the "mlp" strategy applies)."""

    def __init__(self, d_in=4, hidden=4):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, OUT))

    def forward(self, x):
        return self.net(x)


class TinyCNN(nn.Module):
    """Conv -> BatchNorm -> ReLU -> pool -> Linear on 1x3x3 images."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 2, 2), nn.BatchNorm2d(2), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.head = nn.Linear(2, OUT)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


class TinyTransformer(nn.Module):
    """Token embedding -> one encoder layer (dropout, off in eval mode) -> mean -> Linear."""

    def __init__(self, vocab=6, d_model=2):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        layer = nn.TransformerEncoderLayer(d_model, nhead=1, dim_feedforward=4, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, OUT)

    def forward(self, tokens):
        return self.head(self.encoder(self.embed(tokens)).mean(dim=1))


class TinyLSTM(nn.Module):
    def __init__(self, d_in=2, hidden=2):
        super().__init__()
        self.lstm = nn.LSTM(d_in, hidden, batch_first=True)
        self.head = nn.Linear(hidden, OUT)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


MODELS = ["mlp", "cnn_bn", "transformer", "lstm"]
#: the strategies that apply to each model (the rest refuse it with a ValueError)
STRATEGIES = {
    "mlp": ["vmap", "loop", "affine", "mlp", "auto"],
    "cnn_bn": ["vmap", "loop", "affine", "auto"],
    "transformer": ["vmap", "loop", "auto"],
    "lstm": ["loop", "auto"],  # no vmap batching rule for nn.LSTM: auto falls back to the loop
}


def make_case(model_name: str, loss_name: str, n: int = 8, seed: int = 0):
    """``(model, x, y, loss_fn)``: a fresh tiny model in float32 with data for ``loss_name``."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if model_name == "mlp":
        model, x = TinyMLP(), torch.randn(n, 4, generator=g)
    elif model_name == "cnn_bn":
        model, x = TinyCNN(), torch.randn(n, 1, 3, 3, generator=g)
        model.train()
        with torch.no_grad():  # non-trivial running statistics, then back to train mode as users leave it
            for _ in range(3):
                model(x + torch.randn(x.shape, generator=g))
    elif model_name == "transformer":
        model, x = TinyTransformer(), torch.randint(0, 6, (n, 3), generator=g)
    elif model_name == "lstm":
        model, x = TinyLSTM(), torch.randn(n, 3, 2, generator=g)
    else:
        raise KeyError(model_name)
    loss_fn, kind = LOSSES[loss_name]
    if kind == "class":
        y = torch.randint(0, OUT, (n,), generator=g)
    elif kind == "prob":
        y = torch.rand(n, OUT, generator=g)
    else:
        y = torch.randn(n, OUT, generator=g)
    return model, x, y, loss_fn


def _f64(t):
    return t.double() if t.is_floating_point() else t


def reference_loss(model, x, y, loss_fn, params=None) -> float:
    """The model's eval-mode loss on all of ``(x, y)`` in float64, with ``params`` loaded if given."""
    m = copy.deepcopy(model).double().eval()
    if params is not None:
        with torch.no_grad():
            for name, t in m.state_dict(keep_vars=True).items():
                if name in params:
                    t.copy_(params[name].double())
    with torch.no_grad():
        return float(loss_fn(m(_f64(x)), _f64(y)))


def reference_line_or_plane(model, x, y, loss_fn, directions, axes) -> np.ndarray:
    """The plain per-point loop: for each grid point, load ``origin + sum_i c_i d_i`` into
    a float64 copy of the model and take its loss over all of the data at once."""
    origin = {k: v.detach().double() for k, v in model.state_dict().items()}
    shape = tuple(len(a) for a in axes)
    out = np.empty(shape)
    for idx in np.ndindex(*shape):
        params = dict(origin)
        for name in directions[0]:
            params[name] = origin[name] + sum(float(axes[i][j]) * directions[i][name].double()
                                              for i, j in enumerate(idx))
        out[idx] = reference_loss(model, x, y, loss_fn, params)
    return out


def flat_parameters(model):
    return torch.cat([p.detach().reshape(-1).double() for p in model.parameters()])


def dense_hessian(model, x, y, loss_fn) -> torch.Tensor:
    """The dense float64 Hessian of the eval-mode whole-data loss over the flat parameters
    (``torch.autograd.functional.hessian``: reverse-over-reverse, one backward per parameter)."""
    from torch.func import functional_call
    from torch.nn.attention import SDPBackend, sdpa_kernel

    m = copy.deepcopy(model).double().eval()
    names = [k for k, _ in m.named_parameters()]
    shapes = [p.shape for p in m.parameters()]
    sizes = [p.numel() for p in m.parameters()]
    buffers = {k: b for k, b in m.named_buffers()}
    theta = flat_parameters(m)
    xx, yy = _f64(x), _f64(y)

    def f(t):
        params = {k: v.view(s) for k, v, s in zip(names, torch.split(t, sizes), shapes)}
        return loss_fn(functional_call(m, {**buffers, **params}, (xx,)), yy)

    # the composite attention kernel: the fused CPU one has no second derivative;
    # vectorize=True batches the backward passes with vmap (several times faster here)
    with sdpa_kernel([SDPBackend.MATH]):
        return torch.autograd.functional.hessian(f, theta, vectorize=True)
