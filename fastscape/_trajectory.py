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
:func:`train` is the common loop with recording built in, and
:func:`compare_optimizers` trains copies of one model with several optimizers
and lays every path on one shared PCA plane.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ._data import Batches, as_args
from ._params import ParamDict, model_parameters, model_state_guard

__all__ = ["Trajectory", "Recorder", "record", "train", "compare_optimizers", "OptimizerComparison"]

_DTYPES = (torch.float32, torch.float64)


class Trajectory:
    """Snapshots of a model's parameters, each stored as one flat vector.

    Parameters
    ----------
    model : nn.Module
        Fixes the parameter names, shapes and their order
        (``model.named_parameters()``); the model is not kept.
    path : str or Path, optional
        Spill snapshots to this file instead of memory: each snapshot is
        appended as one row of raw ``dtype`` values (C order), so the file
        holds a (T, P) matrix that ``np.fromfile(path, dtype).reshape(T, P)``
        reads back. An existing file is overwritten.
    device : str or torch.device
        Where in-memory snapshots live (default: the CPU, whatever the model's
        device). Must be the CPU when ``path`` is given.
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
    """

    def __init__(self, model: nn.Module, *, path=None, device="cpu", dtype: torch.dtype = torch.float32):
        if dtype not in _DTYPES:
            raise ValueError(f"`dtype` must be torch.float32 or torch.float64; got {dtype!r}.")
        params = model_parameters(model)
        if not params:
            raise ValueError("`model` has no parameters to record.")
        self.names = list(params)
        self.shapes = [p.shape for p in params.values()]
        self.numel = sum(s.numel() for s in self.shapes)
        self.dtype = dtype
        self.device = torch.device(device)
        self.path = None if path is None else Path(path)
        if self.path is not None:
            if self.device.type != "cpu":
                raise ValueError(f"`device` must be 'cpu' when `path` is given; got {device!r}.")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_bytes(b"")
        self._flat: list[torch.Tensor] = []
        self._count = 0
        self.steps: list[int] = []
        self.losses: list[float] = []

    # ------------------------------------------------------------------ writing

    def append(self, flat: torch.Tensor, step: int, loss: float | None = None) -> None:
        """Append one flat parameter vector of ``numel`` elements."""
        if flat.dim() != 1 or flat.numel() != self.numel:
            raise ValueError(f"`flat` must be a 1-D tensor of {self.numel} elements; got shape "
                             f"{tuple(flat.shape)}.")
        flat = flat.detach().to(self.device, self.dtype)
        if self.path is not None:
            with open(self.path, "ab") as f:
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
        self.append(_flat_params(list(model.parameters()), self.dtype), step, loss)

    # ------------------------------------------------------------------ reading

    def __len__(self) -> int:
        return self._count

    def _memmap(self) -> np.ndarray:
        np_dtype = np.float32 if self.dtype == torch.float32 else np.float64
        # copy-on-write: writable for torch.from_numpy, yet the file is never changed
        return np.memmap(self.path, dtype=np_dtype, mode="c", shape=(self._count, self.numel))

    def flat(self, i: int) -> torch.Tensor:
        """Snapshot ``i`` as one vector of shape (P,)."""
        if not -self._count <= i < self._count:
            raise IndexError(f"snapshot index {i} is out of range for {self._count} snapshots.")
        i = i % self._count
        if self.path is None:
            return self._flat[i]
        return torch.from_numpy(np.array(self._memmap()[i]))

    def __getitem__(self, i: int) -> ParamDict:
        """Snapshot ``i`` as a parameter dict (views into one vector)."""
        flat = self.flat(i)
        out, pos = {}, 0
        for name, shape in zip(self.names, self.shapes):
            n = shape.numel()
            out[name] = flat[pos : pos + n].view(shape)
            pos += n
        return out

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def matrix(self) -> torch.Tensor:
        """All snapshots as a (T, P) tensor (memory-mapped from ``path`` when spilled)."""
        if self._count == 0:
            return torch.empty(0, self.numel, dtype=self.dtype, device=self.device)
        if self.path is not None:
            return torch.from_numpy(self._memmap())
        return torch.stack(self._flat)

    def __repr__(self) -> str:
        where = f"file {str(self.path)!r}" if self.path else str(self.device)
        return (f"Trajectory({len(self)} snapshots of {self.numel} parameters, "
                f"{str(self.dtype).replace('torch.', '')} on {where})")


def _flat_params(params: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    # one concatenation on the parameters' own device, then one transfer
    return torch.cat([p.detach().reshape(-1).to(dtype=dtype) for p in params])


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
                 every: int | None = 1, path=None, device="cpu", dtype: torch.dtype = torch.float32):
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be a torch.nn.Module; got {type(model).__name__}.")
        if every is not None and (not isinstance(every, int) or isinstance(every, bool) or every < 1):
            raise ValueError(f"`every` must be a positive integer or None; got {every!r}.")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"`optimizer` must be a torch.optim.Optimizer or None; got "
                            f"{type(optimizer).__name__}.")
        self.model = model
        self.every = every
        self.trajectory = Trajectory(model, path=path, device=device, dtype=dtype)
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
        self.trajectory.append(_flat_params(self._params, self.trajectory.dtype), self.n_steps,
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
           path=None, device="cpu", dtype: torch.dtype = torch.float32) -> Recorder:
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
    path : str or Path, optional
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
    return Recorder(model, optimizer, every=every, path=path, device=device, dtype=dtype)


def _positive_int(value, name):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer; got {value!r}.")


def train(model: nn.Module, data, *, loss_fn: Callable, optimizer: torch.optim.Optimizer,
          epochs: int, record_every: int = 1, record_every_steps: int | None = None, eval_data=None,
          path=None) -> Trajectory:
    """Train ``model`` in place and record its path.

    Snapshots are taken before training, every ``record_every`` epochs (or
    every ``record_every_steps`` optimizer steps) and after the last step.

    Parameters
    ----------
    model : nn.Module
        Trained in place (train mode during the steps; its flags are restored
        after each loss evaluation).
    data : iterable of (inputs, targets) batches
        Walked once per epoch (a shuffling DataLoader reshuffles each time).
    loss_fn : callable ``(output, target) -> scalar tensor``
    optimizer : torch.optim.Optimizer
        Built over ``model.parameters()``.
    epochs : int
    record_every : int
        Snapshot every this many epochs.
    record_every_steps : int, optional
        Snapshot every this many optimizer steps instead.
    eval_data : optional
        Data on which the loss stored with each snapshot is measured (eval
        mode, whole-dataset mean, at the snapshot's weights); default: ``data``.
    path : str or Path, optional
        Spill the snapshots to this file (see :class:`Trajectory`).

    Returns
    -------
    Trajectory
        With ``record_every=1``: ``epochs + 1`` snapshots, the first before training.
    """
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
        raise ValueError(f"`epochs` must be a non-negative integer; got {epochs!r}.")
    _positive_int(record_every, "record_every")
    if record_every_steps is not None:
        _positive_int(record_every_steps, "record_every_steps")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"`optimizer` must be a torch.optim.Optimizer; got {type(optimizer).__name__}.")
    first = next(model.parameters())
    device = first.device
    eval_batches = Batches(eval_data if eval_data is not None else data, device=device, dtype=first.dtype)

    def mean_loss():
        with model_state_guard(model), torch.no_grad():
            total = 0.0
            for x, y, n in eval_batches:
                total += float(loss_fn(model(*as_args(x)), y)) * n
        return total / eval_batches.n_samples

    rec = Recorder(model, every=None, path=path)
    rec.trajectory.losses[0] = mean_loss()
    model.train()
    for epoch in range(1, epochs + 1):
        for x, y in data:
            x = tuple(t.to(device) for t in x) if isinstance(x, tuple) else x.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(*as_args(x)), y.to(device))
            loss.backward()
            optimizer.step()
            rec.step()
            if record_every_steps is not None and rec.n_steps % record_every_steps == 0:
                rec.snapshot(loss=mean_loss())
        if record_every_steps is None and epoch % record_every == 0:
            rec.snapshot(loss=mean_loss())
    if rec.trajectory.steps[-1] != rec.n_steps:
        rec.snapshot(loss=mean_loss())
    return rec.close()


# --------------------------------------------------------------------------- several optimizers


@dataclass
class OptimizerComparison:
    """Several optimizers trained from the same weights, on one shared plane.

    Attributes
    ----------
    trajectories : dict name -> Trajectory
        One recorded path per optimizer, in the order given.
    models : dict name -> nn.Module
        The trained copies (the model given is never trained).
    directions : Directions
        Two unit-norm PCA directions of all snapshots pooled.
    explained_variance_ratio : ndarray of shape (2,)
    origin : dict name -> Tensor
        The plane's origin: the final weights of ``origin_name``'s run.
    origin_name : str
    coords : dict name -> ndarray of shape (T_name, 2)
        Each path projected (least squares) onto the plane.
    residuals : dict name -> ndarray of shape (T_name,)
        Distance of each snapshot from the plane (Euclidean, parameter units).
    """

    trajectories: dict[str, Trajectory]
    models: dict[str, nn.Module]
    directions: list
    explained_variance_ratio: np.ndarray
    origin: ParamDict
    origin_name: str
    coords: dict[str, np.ndarray]
    residuals: dict[str, np.ndarray] = field(default_factory=dict)

    def span(self, margin: float = 0.25) -> list[tuple[float, float]]:
        """Per-axis (min, max) that holds every path, widened by ``margin`` of its extent."""
        allc = np.concatenate(list(self.coords.values()))
        lo, hi = allc.min(axis=0), allc.max(axis=0)
        pad = margin * np.maximum(hi - lo, 1e-12)
        return [(float(a - p), float(b + p)) for a, b, p in zip(lo, hi, pad)]

    def loss_surface(self, data, *, loss_fn: Callable, num: int = 41, margin: float = 0.25, **kwargs):
        """The loss on the shared plane over :meth:`span` (``num`` points per axis).

        Extra keyword arguments go to :func:`fastscape.loss_surface`.
        """
        from ._surface import loss_surface

        grid = [(lo, hi, num) for lo, hi in self.span(margin)]
        model = self.models[self.origin_name]
        return loss_surface(model, data, self.directions, loss_fn=loss_fn, grid=grid, origin=self.origin,
                            **kwargs)

    def plot(self, surface, *, ax=None, title: str | None = None, **kwargs):
        """Contours of ``surface`` (from :meth:`loss_surface`) with every path, labelled.

        Extra keyword arguments go to :func:`fastscape.plot_contour`.
        Returns the matplotlib Axes.
        """
        from ._plotting import plot_contour

        ratio = self.explained_variance_ratio
        labels = kwargs.pop("axis_labels", (f"PC1 ({100 * ratio[0]:.1f}% of variance)",
                                            f"PC2 ({100 * ratio[1]:.1f}% of variance)"))
        ax = plot_contour(surface, ax=ax, axis_labels=labels, title=title, **kwargs)
        colors = ["#d62728", "#ffffff", "#ff7f0e", "#17becf", "#e377c2", "#bcbd22", "#1f77b4"]
        for i, (name, c) in enumerate(self.coords.items()):
            color = colors[i % len(colors)]
            ax.plot(c[:, 0], c[:, 1], "-", color=color, lw=1.4, label=name, zorder=4)
            ax.plot(c[0, 0], c[0, 1], "o", color=color, mec="k", ms=6, zorder=5)
            ax.plot(c[-1, 0], c[-1, 1], "*", color=color, mec="k", ms=11, zorder=5)
        ax.legend(loc="upper right", fontsize=8)
        return ax


def compare_optimizers(model: nn.Module | Callable[[], nn.Module], data,
                       optimizers: Mapping[str, Callable], *, loss_fn: Callable, epochs: int,
                       record_every: int = 1, record_every_steps: int | None = None, eval_data=None,
                       origin: str | None = None, seed: int | None = 0) -> OptimizerComparison:
    """Train copies of one model with several optimizers and project every path on one plane.

    Each optimizer trains its own deep copy of the same initial weights (the
    model given is left untouched) with :func:`train`. The plane is spanned by
    the two principal components of all snapshots of all runs pooled
    (:func:`fastscape.pca_directions`); its origin is the final weights of one
    run, and every path is projected onto it by least squares.

    Parameters
    ----------
    model : nn.Module, or a callable returning one
        The initial weights (a callable is called once).
    data : iterable of (inputs, targets) batches
    optimizers : dict name -> callable(params) -> torch.optim.Optimizer
        E.g. ``{"SGD": lambda p: torch.optim.SGD(p, lr=0.1), "Adam": lambda p: torch.optim.Adam(p)}``.
    loss_fn, epochs, record_every, record_every_steps, eval_data
        As in :func:`train`.
    origin : str, optional
        Name of the run whose final weights are the plane's origin (default: the first).
    seed : int or None
        The global torch RNG is seeded with this before each run (inside
        ``torch.random.fork_rng``, so the caller's RNG state is kept): shuffling
        DataLoaders and dropout then see the same random numbers in every run.
        None leaves the RNG alone.

    Returns
    -------
    OptimizerComparison
    """
    from ._pca import pca_directions, project

    if not isinstance(model, nn.Module):
        if not callable(model):
            raise TypeError(f"`model` must be an nn.Module or a callable returning one; got "
                            f"{type(model).__name__}.")
        model = model()
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model()` must return an nn.Module; got {type(model).__name__}.")
    if not isinstance(optimizers, Mapping) or len(optimizers) == 0:
        raise ValueError("`optimizers` must be a non-empty dict name -> callable(params) -> Optimizer; "
                         f"got {optimizers!r}.")
    for name, make in optimizers.items():
        if not callable(make):
            raise TypeError(f"`optimizers[{name!r}]` must be callable(params) -> Optimizer; got "
                            f"{type(make).__name__}.")
    names = list(optimizers)
    origin = names[0] if origin is None else origin
    if origin not in optimizers:
        raise ValueError(f"`origin` must be one of {names}; got {origin!r}.")

    trajectories, models = {}, {}
    for name in names:
        m = copy.deepcopy(model)
        opt = optimizers[name](m.parameters())
        if not isinstance(opt, torch.optim.Optimizer):
            raise TypeError(f"`optimizers[{name!r}]` must return a torch.optim.Optimizer; got "
                            f"{type(opt).__name__}.")
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            trajectories[name] = train(m, data, loss_fn=loss_fn, optimizer=opt, epochs=epochs,
                                       record_every=record_every, record_every_steps=record_every_steps,
                                       eval_data=eval_data)
        models[name] = m

    pooled = [snap for t in trajectories.values() for snap in t]
    directions, ratio = pca_directions(pooled, n=2)
    directions.info["pooled_runs"] = names
    centre = {k: v.clone() for k, v in trajectories[origin][-1].items()}
    coords, residuals = {}, {}
    for name, t in trajectories.items():
        coords[name], residuals[name] = project(t, directions, origin=centre, return_residuals=True)
    return OptimizerComparison(trajectories=trajectories, models=models, directions=directions,
                               explained_variance_ratio=ratio, origin=centre, origin_name=origin,
                               coords=coords, residuals=residuals)
