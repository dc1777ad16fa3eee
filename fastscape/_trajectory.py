"""Training trajectories: parameter snapshots taken while a model trains."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ._data import Batches, as_args
from ._params import ParamDict, model_parameters, model_state_guard

__all__ = ["Trajectory", "train"]


class Trajectory:
    """Snapshots of a model's parameters, stored flat in float32 on the CPU.

    Attributes
    ----------
    names : list of str
        Parameter names, in ``model.named_parameters()`` order.
    shapes : list of torch.Size
    steps : list of int
        Optimizer step of each snapshot.
    losses : list of float
        Loss recorded with each snapshot (NaN where none was given).
    """

    def __init__(self, model: nn.Module):
        params = model_parameters(model)
        self.names = list(params)
        self.shapes = [p.shape for p in params.values()]
        self._flat: list[torch.Tensor] = []
        self.steps: list[int] = []
        self.losses: list[float] = []

    def snapshot(self, model: nn.Module, step: int, loss: float | None = None) -> None:
        """Append the model's current parameters."""
        flat = torch.cat([p.detach().reshape(-1).to("cpu", torch.float32) for p in model.parameters()])
        self._flat.append(flat)
        self.steps.append(int(step))
        self.losses.append(float("nan") if loss is None else float(loss))

    def __len__(self) -> int:
        return len(self._flat)

    def __getitem__(self, i: int) -> ParamDict:
        """Snapshot ``i`` as a parameter dict (views into the stored vector)."""
        out, pos = {}, 0
        flat = self._flat[i]
        for name, shape in zip(self.names, self.shapes):
            n = shape.numel()
            out[name] = flat[pos : pos + n].view(shape)
            pos += n
        return out

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def matrix(self) -> torch.Tensor:
        """All snapshots as a (T, P) float32 tensor."""
        return torch.stack(self._flat)


def train(model: nn.Module, data, *, loss_fn: Callable, optimizer: torch.optim.Optimizer,
          epochs: int, record_every: int = 1, eval_data=None) -> Trajectory:
    """Train ``model`` in place, snapshotting its parameters every ``record_every`` epochs.

    Parameters
    ----------
    data : iterable of (inputs, targets) batches
        Walked once per epoch (a shuffling DataLoader reshuffles each time).
    eval_data : optional
        Data on which the loss recorded with each snapshot is measured (eval
        mode, whole-dataset mean); default: ``data``.

    Returns
    -------
    Trajectory
        ``epochs // record_every + 1`` snapshots, the first before training.
    """
    if not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"`epochs` must be a non-negative integer; got {epochs!r}.")
    if not isinstance(record_every, int) or record_every < 1:
        raise ValueError(f"`record_every` must be a positive integer; got {record_every!r}.")
    device = next(model.parameters()).device
    eval_batches = Batches(eval_data if eval_data is not None else data, device=device,
                           dtype=next(model.parameters()).dtype)
    traj = Trajectory(model)

    def mean_loss():
        with model_state_guard(model), torch.no_grad():
            total = 0.0
            for x, y, n in eval_batches:
                total += float(loss_fn(model(*as_args(x)), y)) * n
        return total / eval_batches.n_samples

    traj.snapshot(model, 0, mean_loss())
    step = 0
    model.train()
    for epoch in range(1, epochs + 1):
        for x, y in data:
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            step += 1
        if epoch % record_every == 0:
            traj.snapshot(model, step, mean_loss())
            model.train()
    return traj
