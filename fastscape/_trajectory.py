"""Training trajectories: parameter snapshots taken while a model trains.

Recording is one line around any training loop::

    with fastscape.record(model, optimizer, every=10) as rec:
        for x, y in loader:
            ...                      # the user's own loop, unchanged
            optimizer.step()
            rec.log_loss(loss)       # optional: keep the minibatch loss too
    traj = rec.trajectory

The optimizer's step post-hook counts steps and copies the parameters every
``every`` steps into one flat vector (float32, CPU by default), or appends it to
a file on disk for models too large to keep many copies of in memory.
:func:`train` is the common loop with recording built in
(:func:`fastscape.compare_optimizers` runs it once per optimizer).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ._core import objective
from ._core.data import Batches, batch_args, warn_nonfinite
from ._core.params import (ParamDict, check_loss_fn, check_model, flatten, model_parameters, positive_int,
                           resolve_dtype, unflatten)

__all__ = ["Trajectory", "Recorder", "record", "train"]

class Trajectory:
    """Snapshots of a model's parameters, each stored as one flat vector.

    Parameters
    ----------
    model : nn.Module
        Fixes the parameter names, shapes and their order
        (``model.named_parameters()``); the model is not kept.
    out : str or Path, optional
        Spill snapshots to this file instead of memory: each snapshot is
        appended as one row of raw ``dtype`` values (C order), so the file
        holds a (T, P) matrix that ``np.fromfile(path, dtype).reshape(T, P)``
        reads back. An existing file is overwritten.
    device : str or torch.device
        Where in-memory snapshots live (default: the CPU, whatever the model's
        device). Must be the CPU when ``out`` is given.
    dtype : torch.float32 (default) or torch.float64

    Attributes
    ----------
    names : list of str
        Parameter names, in ``model.named_parameters()`` order.
    shapes : list of torch.Size
    steps : list of int
        Training step (optimizer updates so far) of each snapshot.
    losses : list of float
        Loss recorded with each snapshot (NaN where none was given).
    unit : {"step", "epoch"}
        What the snapshots count, for the views' labels: ``"epoch"`` when
        :func:`train` snapshots per epoch, ``"step"`` otherwise.
    epochs : list of int
        Epoch of each snapshot (filled by :func:`train`; empty for :func:`record`).
    """

    def __init__(self, model: nn.Module, *, out=None, device="cpu", dtype: torch.dtype = torch.float32):
        dtype = resolve_dtype(dtype)
        params = model_parameters(model)
        if not params:
            raise ValueError("`model` has no parameters to record.")
        self.names = list(params)
        self.shapes = [p.shape for p in params.values()]
        self.numel = sum(s.numel() for s in self.shapes)
        self.dtype = dtype
        self.device = torch.device(device)
        self.out = None if out is None else Path(out)
        if self.out is not None:
            if self.device.type != "cpu":
                raise ValueError(f"`device` must be 'cpu' when `out` is given; got {device!r}.")
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.out.write_bytes(b"")
        self._flat: list[torch.Tensor] = []
        self._count = 0
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.unit = "step"
        self.epochs: list[int] = []

    @property
    def counts(self) -> list[int] | None:
        """The epoch (``unit == "epoch"``) or step of each snapshot, or None when they do not tell the
        snapshots apart (snapshots taken by hand with no step counted between them)."""
        counts = self.epochs if self.unit == "epoch" else self.steps
        if len(counts) != self._count or any(b <= a for a, b in zip(counts, counts[1:])):
            return None
        return list(counts)

    # ------------------------------------------------------------------ writing

    def append(self, flat: torch.Tensor, step: int, loss: float | None = None) -> None:
        """Append one flat parameter vector of ``numel`` elements."""
        if flat.dim() != 1 or flat.numel() != self.numel:
            raise ValueError(f"`flat` must be a 1-D tensor of {self.numel} elements; got shape "
                             f"{tuple(flat.shape)}.")
        flat = flat.detach().to(self.device, self.dtype)
        if self.out is not None:
            with open(self.out, "ab") as f:
                flat.numpy().tofile(f)
        else:
            if flat.device.type == "cpu" and flat.untyped_storage().size() != flat.numel() * flat.element_size():
                flat = flat.clone()  # do not keep a larger buffer alive
            self._flat.append(flat)
        self._count += 1
        self.steps.append(int(step))
        self.losses.append(float("nan") if loss is None else float(loss))

    def snapshot(self, model: nn.Module, step: int, loss: float | None = None) -> None:
        """Append the model's current parameters (one copy, never written back)."""
        self.append(flatten(dict(model.named_parameters()), dtype=self.dtype), step, loss)

    # ------------------------------------------------------------------ reading

    def __len__(self) -> int:
        return self._count

    def _memmap(self) -> np.ndarray:
        np_dtype = np.float32 if self.dtype == torch.float32 else np.float64
        # copy-on-write: writable for torch.from_numpy, yet the file is never changed
        return np.memmap(self.out, dtype=np_dtype, mode="c", shape=(self._count, self.numel))

    def flat(self, i: int) -> torch.Tensor:
        """Snapshot ``i`` as one vector of shape (P,)."""
        if not -self._count <= i < self._count:
            raise IndexError(f"snapshot index {i} is out of range for {self._count} snapshots.")
        i = i % self._count
        if self.out is None:
            return self._flat[i]
        return torch.from_numpy(np.array(self._memmap()[i]))

    def __getitem__(self, i: int) -> ParamDict:
        """Snapshot ``i`` as a parameter dict (views into one vector)."""
        return unflatten(self.flat(i), dict(zip(self.names, self.shapes)))

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def matrix(self) -> torch.Tensor:
        """All snapshots as a (T, P) tensor (memory-mapped from ``out`` when spilled)."""
        if self._count == 0:
            return torch.empty(0, self.numel, dtype=self.dtype, device=self.device)
        if self.out is not None:
            return torch.from_numpy(self._memmap())
        return torch.stack(self._flat)

    def __repr__(self) -> str:
        where = f"file {str(self.out)!r}" if self.out else str(self.device)
        return (f"Trajectory({len(self)} snapshots of {self.numel} parameters, "
                f"{str(self.dtype).replace('torch.', '')} on {where})")


def _add(window, value):
    return (value, 1) if window is None else (window[0] + value, window[1] + 1)


def _loss_value(loss) -> torch.Tensor | float:
    if isinstance(loss, torch.Tensor):
        if loss.numel() != 1:
            raise ValueError(f"`loss` must be a scalar; got a tensor of shape {tuple(loss.shape)}.")
        return loss.detach().reshape(())  # kept lazily: no device sync per step
    if isinstance(loss, (int, float, np.floating, np.integer)) and not isinstance(loss, bool):
        return float(loss)
    raise TypeError(f"`loss` must be a scalar tensor or a number; got {type(loss).__name__}.")


class Recorder:
    """Snapshots a model into a :class:`Trajectory` while it trains.

    Made by :func:`record`; see there. A context manager: leaving the block
    takes a last snapshot (if the final weights are not recorded yet) and
    removes the optimizer hook.

    Attributes
    ----------
    trajectory : Trajectory
    n_steps : int
        Training steps counted so far.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
                 every: int | None = 1, out=None, device="cpu", dtype: torch.dtype = torch.float32):
        check_model(model)
        positive_int(every, "every", allow=(None,))
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"`optimizer` must be a torch.optim.Optimizer or None; got "
                            f"{type(optimizer).__name__}.")
        self.model = model
        self.every = every
        self.trajectory = Trajectory(model, out=out, device=device, dtype=dtype)
        self._params = list(model.parameters())
        self.n_steps = 0
        # (sum, count) of logged losses: of the latest snapshot's steps, and of later steps
        self._open = None
        self._next = None
        self._handle = None
        self.closed = False
        if optimizer is not None:
            self._handle = optimizer.register_step_post_hook(lambda opt, args, kwargs: self._advance())
        self.snapshot()  # the starting point

    # the optimizer hook and step() both land here
    def _advance(self) -> None:
        self.n_steps += 1
        if self.every is not None and self.n_steps % self.every == 0:
            self.snapshot()

    def step(self, loss=None) -> None:
        """Count one training step (call after each parameter update).

        Only for loops without a hooked optimizer (``record(model)``, manual
        updates, ...): with ``record(model, optimizer)`` the optimizer's own
        ``step()`` is counted and this raises.

        Parameters
        ----------
        loss : scalar tensor or float, optional
            The step's training loss (as :meth:`log_loss` after the step).
        """
        if self._handle is not None:
            raise RuntimeError("this recorder counts `optimizer.step()` calls through a hook; call "
                               "`log_loss(loss)` to keep the loss, not `step()`.")
        self._check_open()
        self._advance()
        if loss is not None:
            self.log_loss(loss)

    def log_loss(self, loss) -> None:
        """Keep the training loss of the step just taken (call after ``optimizer.step()``).

        A snapshot taken at step ``s`` stores the mean of the losses of the
        steps since the previous snapshot, up to and including step ``s``
        (each computed at the weights before its update). Tensors are kept
        detached and summed on their device: logging adds no device
        synchronisation per step.
        """
        self._check_open()
        value = _loss_value(loss)
        traj = self.trajectory
        if self.n_steps > traj.steps[-1]:
            self._close_window()  # the latest snapshot has all its steps' losses
            self._next = _add(self._next, value)
        elif self._open is not None:
            self._open = _add(self._open, value)

    def snapshot(self, loss=None) -> None:
        """Record the parameters now (e.g. at the end of an epoch).

        ``loss`` is stored with it when given; otherwise the mean of the
        logged losses of the steps it covers (NaN if none was logged).
        """
        self._check_open()
        self._close_window()
        self.trajectory.append(torch.cat([p.detach().reshape(-1) for p in self._params]).to(self.trajectory.dtype),
                               self.n_steps,
                               None if loss is None else float(_loss_value(loss)))
        self._open = self._next if loss is None else None
        self._next = None

    def _close_window(self):
        if self._open is not None:
            total, count = self._open
            self.trajectory.losses[-1] = float(total) / count
            self._open = None

    def close(self) -> Trajectory:
        """Take the last snapshot if the final weights are not recorded yet; remove the hook."""
        if not self.closed:
            if self.trajectory.steps[-1] != self.n_steps:
                self.snapshot()
            self._close_window()
            if self._handle is not None:
                self._handle.remove()
            self.closed = True
        return self.trajectory

    def _check_open(self):
        if self.closed:
            raise RuntimeError("this recorder is closed; start a new one with `fastscape.record`.")

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False


def record(model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *, every: int | None = 1,
           out=None, device="cpu", dtype: torch.dtype = torch.float32) -> Recorder:
    """Record a model's parameters while any training loop runs.

    The starting point is recorded at once; then a snapshot every ``every``
    training steps, and the final weights when the recorder is closed (at the
    end of a ``with`` block).

    Parameters
    ----------
    model : nn.Module
        Read only (one flat copy of its parameters per snapshot).
    optimizer : torch.optim.Optimizer, optional
        Steps are counted by a hook on ``optimizer.step()``
        (``register_step_post_hook``): the loop needs no other change. Without
        an optimizer, call :meth:`Recorder.step` after each update.
    every : int or None
        Snapshot every ``every`` steps; ``None`` takes snapshots only when
        :meth:`Recorder.snapshot` is called (e.g. once per epoch).
    out : str or Path, optional
        Spill snapshots to this file (one raw row per snapshot) instead of
        keeping them in memory; for models with many parameters.
    device : where in-memory snapshots live (default "cpu").
    dtype : torch.float32 (default) or torch.float64

    Returns
    -------
    Recorder
        Its ``trajectory`` fills as training runs. Use it as a context manager
        (or call ``close()``) so the hook is removed and the final weights kept.

    Examples
    --------
    >>> with fastscape.record(model, optimizer, every=10) as rec:  # doctest: +SKIP
    ...     for x, y in loader:
    ...         optimizer.zero_grad()
    ...         loss = loss_fn(model(x), y)
    ...         loss.backward()
    ...         optimizer.step()
    ...         rec.log_loss(loss)
    >>> pcs, ratio = fastscape.pca_directions(rec.trajectory)  # doctest: +SKIP
    """
    return Recorder(model, optimizer, every=every, out=out, device=device, dtype=dtype)


def train(model: nn.Module, data, *, loss_fn: Callable, optimizer: torch.optim.Optimizer,
          epochs: int, every: int = 1, every_steps: int | None = None, eval_data=None,
          out=None) -> Trajectory:
    """Train ``model`` in place and record its path.

    Snapshots are taken before training, every ``every`` epochs (or
    every ``every_steps`` optimizer steps) and after the last step.

    Parameters
    ----------
    model : nn.Module
        Trained in place. The steps run in each submodule's own mode: a
        submodule the caller put in eval mode (a frozen BatchNorm, say) stays in
        eval mode and keeps its running statistics, the rest trains in train
        mode; a model entirely in eval mode (``model.eval()``) is switched to
        train mode for the steps. Every flag is as given when ``train`` returns.
    data : iterable of batches, or one (inputs, targets) pair of tensors
        The batch forms :func:`fastscape.loss_surface` takes: ``(inputs, targets)``
        pairs, inputs given by name (``({"input_ids": ids, "attention_mask": mask},
        targets)``) or a Hugging Face collator's dicts (``"labels"`` the targets, the
        other entries passed to the forward by name). Walked once per epoch (a
        shuffling DataLoader reshuffles each time); a pair of tensors is one full
        batch per epoch.
    loss_fn : callable ``(output, target) -> scalar tensor``
    optimizer : torch.optim.Optimizer
        Built over ``model.parameters()``.
    epochs : int
    every : int
        Snapshot every this many epochs.
    every_steps : int, optional
        Snapshot every this many optimizer steps instead.
    eval_data : optional
        Data on which the loss stored with each snapshot is measured (eval
        mode, whole-dataset mean, at the snapshot's weights); default: ``data``.
    out : str or Path, optional
        Spill the snapshots to this file (see :class:`Trajectory`).

    Returns
    -------
    Trajectory
        With ``every=1``: ``epochs + 1`` snapshots, the first before training.
        Its ``unit`` is ``"epoch"`` (``"step"`` with ``every_steps``), so
        :func:`fastscape.project` and every view label the path in epochs.
    """
    check_model(model)
    check_loss_fn(loss_fn)
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
        raise ValueError(f"`epochs` must be a non-negative integer; got {epochs!r}.")
    positive_int(every, "every")
    if every_steps is not None:
        positive_int(every_steps, "every_steps")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"`optimizer` must be a torch.optim.Optimizer; got {type(optimizer).__name__}.")
    first = next(model.parameters(), None)
    if first is None:
        raise ValueError(f"`model` has no parameters ({type(model).__name__}); there is nothing to train.")
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[1], torch.Tensor) \
            and isinstance(data[0], (torch.Tensor, tuple, Mapping)):
        data = [tuple(data)]  # one (inputs, targets) pair: the whole data as one batch
    device = first.device
    eval_batches = Batches(eval_data if eval_data is not None else data, device=device,
                           dtype=first.dtype).bind(model)  # inputs given by name, in the forward's places
    warn_nonfinite(eval_batches, "the loss stored with every snapshot will be NaN (or inf)")

    def mean_loss():
        with torch.no_grad():
            return float(objective.mean_loss(model, model_parameters(model), eval_batches, loss_fn))

    rec = Recorder(model, every=None, out=out)
    traj = rec.trajectory
    traj.losses[0] = mean_loss()
    traj.unit, traj.epochs = ("epoch" if every_steps is None else "step"), [0]
    flags = [(m, m.training) for m in model.modules()]
    if not any(flag for _, flag in flags):
        model.train()  # model.eval() on the whole: train it in train mode, as any loop would
    try:
        for epoch in range(1, epochs + 1):
            for i, item in enumerate(data):
                args, y = batch_args(model, item, i, device)
                optimizer.zero_grad(set_to_none=True)
                loss = objective.scalar_of(loss_fn, model(*args), y, "loss_fn")
                loss.backward()
                optimizer.step()
                rec.step()
                if every_steps is not None and rec.n_steps % every_steps == 0:
                    rec.snapshot(loss=mean_loss())
                    traj.epochs.append(epoch)
            if every_steps is None and epoch % every == 0:
                rec.snapshot(loss=mean_loss())
                traj.epochs.append(epoch)
        if traj.steps[-1] != rec.n_steps:
            rec.snapshot(loss=mean_loss())
            traj.epochs.append(epochs)
    finally:
        for m, flag in flags:
            m.training = flag
    return rec.close()
