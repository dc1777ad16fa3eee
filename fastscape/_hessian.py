"""Curvature of the loss: Hessian-vector products, top eigenpairs, trace.

The loss is the sample-weighted mean over the whole dataset,
``L(θ) = sum_b n_b * loss_fn(model(x_b; θ), y_b) / sum_b n_b``, with the model
in eval mode (BatchNorm uses its running statistics, dropout is off). The
Hessian is taken with respect to all of ``model.named_parameters()``; buffers
are held fixed. The loss is :func:`fastscape._core.objective.mean_loss`, the
package's one whole-data objective. A Hessian-vector product is
reverse-over-reverse (``torch.func.vjp`` of ``torch.func.grad`` of a
``functional_call``), or forward-over-reverse (``torch.func.jvp`` of the
gradient) where only that works: chosen on the first batch and remembered per
model structure and loss (see :data:`MODES`). It runs on copies of the weights,
so the model itself is never written, and no second-order graph is kept alive
between batches.

- :func:`hessian_vector_product`: ``H v`` for one direction dict.
- :func:`hessian_eigenpairs`: the top-k eigenvalues and eigenvectors by
  Lanczos with full reorthogonalisation (the method of Ghorbani, Krishnan and
  Xiao, "An Investigation into Neural Net Optimization via Hessian Eigenvalue
  Density", ICML 2019; PyHessian, Yao et al. 2020, uses power iteration).
  The eigenvectors are direction dicts: pass them to
  :func:`fastscape.loss_surface` for the "sharpness view", after
  :func:`fastscape.normalize` if wanted.
- :func:`hessian_trace`: Hutchinson's estimator with Rademacher probes
  (Hutchinson 1989; Avron and Toledo 2011).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.func import grad, jvp, vjp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from ._core.data import Batches, as_args, warn_nonfinite
from ._core.memory import is_out_of_memory
from ._core.guards import named_failure, warn_once
from ._core.objective import batch_loss, check_differentiable, sample_mean
from ._core.params import (ParamDict, check_loss_fn, check_model, flatten, model_device, model_state_guard,
                           positive_int, positive_number, resolve_device, resolve_dtype, unflatten)
from ._directions import Directions, make_generator
from ._subset import chosen_names, describe

__all__ = ["ConvergenceWarning", "hessian_vector_product", "hessian_eigenpairs", "hessian_trace"]


class ConvergenceWarning(UserWarning):
    """An iterative estimate stopped at ``max_iter`` before reaching ``tol``."""


def _load_jvp_decompositions() -> None:
    """Import what ``torch.func.jvp`` imports on first use, quietly.

    Recent PyTorch builds its forward-mode decompositions with the deprecated
    ``torch.jit.script`` at that import, which emits a DeprecationWarning
    that is PyTorch's own business, not the caller's.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import torch._decomp.decompositions_for_jvp  # noqa: F401
        except ImportError:  # pragma: no cover - other PyTorch layouts
            pass


#: ways to compute ``H v``, in the order tried. Reverse-over-reverse (``vjp`` of
#: ``grad``, which is ``H v`` as H is symmetric) needs only double backward; one
#: forward and backward per batch serve every vector. Forward-over-reverse (``jvp``
#: of ``grad``) needs a forward-mode derivative of every backward op, which PyTorch
#: lacks for common ones (``huber_loss_backward``, the CPU LSTM kernel; ``mse_loss``'s
#: backward writes into a ZeroTensor). The timings: benchmarks/README.md, "Hessian-vector products".
MODES = ("reverse-over-reverse", "forward-over-reverse")
#: what worked, per model structure, loss function, device and dtype: {"mode": one of
#: MODES, "vmap": whether vmap over the vectors works (None: not tried)}. A loss that
#: needs reverse-over-reverse then fails forward-over-reverse once, not at every call.
_PLAN_FOR: dict[tuple, dict] = {}


def _loss_key(loss_fn) -> tuple:
    return (type(loss_fn).__qualname__, getattr(loss_fn, "__qualname__", None), id(loss_fn))


class _HVP:
    """``v -> H v`` for flat vectors over the model's parameters, on the whole dataset.

    ``H`` is the Hessian of :func:`fastscape._core.objective.mean_loss`; by
    linearity it is the sample-weighted mean (:func:`~fastscape._core.objective.sample_mean`)
    of the Hessians of each batch's :func:`~fastscape._core.objective.batch_loss`, so one
    batch's second-order graph is alive at a time. Attention runs on PyTorch's composite
    (math) kernel: the fused ones have no second derivative.

    Holds detached copies of the weights and buffers on ``device`` in ``dtype``;
    must be called inside ``model_state_guard(model)`` (eval mode).
    """

    def __init__(self, model: nn.Module, data, loss_fn: Callable, *, device, dtype, batch_size, params=None):
        check_model(model)
        check_loss_fn(loss_fn)
        self.device = resolve_device(device, model)
        self.dtype = resolve_dtype(dtype)
        self.model, self.loss_fn = model, loss_fn
        keep = chosen_names([k for k, _ in model.named_parameters()], params, model=model)  # the subset
        self.params = {k: p.detach().to(self.device, self.dtype) for k, p in model.named_parameters() if k in keep}
        if not self.params:
            raise ValueError("`model` has no parameters that require grad; its Hessian is empty (name the "
                             "subset with `params=`)." if any(True for _ in model.parameters())
                             else "`model` has no parameters; its Hessian is empty.")
        check_differentiable(model, "the Hessian")
        self.buffers = {k: (b.detach().to(self.device, self.dtype) if b.is_floating_point()
                            else b.detach().to(self.device)) for k, b in model.named_buffers()}
        # parameters outside the subset are held fixed, like buffers
        self.buffers.update({k: p.detach().to(self.device, self.dtype) for k, p in model.named_parameters()
                             if k not in keep})
        self.batches = Batches(data, batch_size=batch_size, device=self.device, dtype=self.dtype).bind(model)
        self.shapes = {k: p.shape for k, p in self.params.items()}
        self.numel = sum(p.numel() for p in self.params.values())
        self.calls = 0
        self.key = (type(model).__qualname__, repr(model), _loss_key(loss_fn), self.device.type, self.dtype)
        self._probe()

    def _probe(self) -> None:
        """One plain forward on the first batch: a model that does not take the data, or a
        loss that is not a scalar, fails here with a message naming the layer or the loss."""
        x, y, _ = self.batches.first()
        args = as_args(x)
        with model_state_guard(self.model), torch.no_grad(), named_failure(self.model, args):
            batch_loss(self.model, self.params, args, y, self.loss_fn, self.buffers)

    def unflatten(self, vec: torch.Tensor) -> ParamDict:
        return unflatten(vec, self.shapes)

    def flatten(self, d: ParamDict) -> torch.Tensor:
        return flatten(d, self.params)

    def __call__(self, vec: torch.Tensor) -> torch.Tensor:
        """``H v`` for a flat ``vec`` of shape (numel,)."""
        return self.many(vec.unsqueeze(0))[0]

    def many(self, vecs: torch.Tensor) -> torch.Tensor:
        """``H v`` for each row of ``vecs`` (m, numel), all in one pass over the data."""
        vecs = vecs.to(self.device, self.dtype)
        with sdpa_kernel([SDPBackend.MATH]):
            total = sample_mean(lambda args, y: self._batch(args, y, vecs), self.batches, dtype=torch.float64)
        self.calls += vecs.shape[0]
        return total.to(self.dtype)

    def _batch(self, args, y, vecs):
        """``H_b v`` for one batch's Hessian ``H_b``: what worked before first, then the rest
        (each mode vectorised over the vectors with vmap, then one vector at a time)."""
        m = vecs.shape[0]
        known = _PLAN_FOR.get(self.key, {})
        modes = sorted(MODES, key=lambda mode: mode != known.get("mode"))
        vmaps = sorted((True, False), key=lambda v: v != known.get("vmap", True)) if m > 1 else [False]
        errors = []
        for mode in modes:
            for vectorised in vmaps:
                try:
                    rows = self._products((mode, vectorised), args, y, vecs)
                except (RuntimeError, NotImplementedError) as err:
                    if is_out_of_memory(err):
                        raise
                    errors.append((vectorised, err))
                    continue
                _PLAN_FOR[self.key] = {"mode": mode, "vmap": vectorised if m > 1 else known.get("vmap")}
                return rows
        # the first mode's one-vector error: not vmap's, and from the mode that needs the least of PyTorch
        raise next((err for vectorised, err in errors if not vectorised), errors[0][1])

    def _products(self, plan: tuple[str, bool], args, y, vecs: torch.Tensor) -> torch.Tensor:
        mode, vectorised = plan

        def loss_of(params):
            return batch_loss(self.model, params, args, y, self.loss_fn, self.buffers)

        if mode == "forward-over-reverse":
            _load_jvp_decompositions()
            gradient = grad(loss_of)

            def one(vec):
                return self.flatten(jvp(gradient, (self.params,), (self.unflatten(vec),))[1])
        else:
            _, pull = vjp(grad(loss_of), self.params)

            def one(vec):
                return self.flatten(pull(self.unflatten(vec))[0])

        if vectorised:
            return vmap(one)(vecs)
        return torch.stack([one(v) for v in vecs])


def _to_model(d: ParamDict, model: nn.Module) -> ParamDict:
    """Cast a dict to the device and dtype of each of the model's parameters; zero outside its keys."""
    return {k: d[k].detach().to(device=p.device, dtype=p.dtype) if k in d else torch.zeros_like(p.detach())
            for k, p in model.named_parameters()}


def hessian_vector_product(model: nn.Module, data, vector, *, loss_fn: Callable, device=None,
                           dtype=torch.float32, batch_size: int | None = None,
                           params: str | list[str] | None = None) -> ParamDict:
    """The Hessian of the whole-dataset loss times ``vector``.

    Parameters
    ----------
    model : nn.Module
        Evaluated in eval mode through ``functional_call``; never written.
    data : (inputs, targets) pair, DataLoader, Dataset or iterable of such pairs
        The loss is the sample-weighted mean over all of it.
    vector : dict name -> Tensor
        A direction over every parameter (extra buffer keys are ignored).
    loss_fn : callable ``(output, target) -> scalar tensor``
    device : str or torch.device, optional
        Default: CUDA when available, else CPU.
    dtype : torch.float32 (default) or torch.float64
    batch_size : int, optional
        Largest data batch (default: the data as given).
    params : str, list of str or None
        The Hessian over a subset of the parameters (names or glob patterns, see
        :func:`fastscape.random_directions`); default: those that require grad.

    Returns
    -------
    dict name -> Tensor
        ``H v`` (zero outside the subset), keyed and shaped like the parameters, on the model's device
        and in its dtype.
    """
    with warn_once():
        return _hessian_vector_product(model, data, vector, loss_fn, device, dtype, batch_size, params)


def _hessian_vector_product(model, data, vector, loss_fn, device, dtype, batch_size, params=None) -> ParamDict:
    op = _HVP(model, data, loss_fn, device=device, dtype=dtype, batch_size=batch_size, params=params)
    warn_nonfinite(op.batches, "the Hessian-vector product will be NaN", stacklevel=4)
    missing = [k for k in op.params if k not in vector]
    if missing:
        raise ValueError(f"`vector` has no entry for the model's parameter(s) {missing[:5]}.")
    for k, shape in op.shapes.items():
        if vector[k].shape != shape:
            raise ValueError(f"`vector[{k!r}]` has shape {tuple(vector[k].shape)}; the model's parameter "
                             f"has shape {tuple(shape)}.")
    with model_state_guard(model):
        hv = op(op.flatten({k: vector[k].detach() for k in op.params}))
    return _to_model(op.unflatten(hv), model)


def _lanczos(matvec: Callable, n: int, k: int, *, tol: float, max_iter: int,
             generator: torch.Generator, device, dtype):
    """Top-k eigenpairs of a symmetric operator on R^n by Lanczos with full
    reorthogonalisation.

    Stops when each of the k largest Ritz values has residual
    ``|beta_m * s_{m,i}| = ||A y_i - theta_i y_i|| <= tol * max|theta|``, when
    the Krylov space fills R^n, or after ``max_iter`` products. On breakdown
    (an invariant subspace) it continues from a fresh random vector
    orthogonal to the basis.

    Returns ``(theta (k,) descending float64 ndarray, Y (n, k) tensor,
    residuals (k,) ndarray, iterations, converged)``.
    """
    def fresh(basis):
        q = torch.randn(n, generator=generator, device=generator.device, dtype=torch.float64).to(device, dtype)
        for _ in range(2):
            for b in basis:
                q -= (b @ q) * b
        return q / q.norm()

    basis: list[torch.Tensor] = []
    alphas: list[float] = []
    betas: list[float] = []
    q = fresh(basis)
    converged = False
    theta = s = resid = None
    for j in range(min(max_iter, n)):
        basis.append(q)
        w = matvec(q)
        alpha = float(q @ w)
        w = w - alpha * q
        if j > 0 and betas[-1] > 0:
            w = w - betas[-1] * basis[-2]
        Q = torch.stack(basis)
        for _ in range(2):  # full reorthogonalisation, twice
            w = w - Q.T @ (Q @ w)
        beta = float(w.norm())
        alphas.append(alpha)
        t = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
        theta_all, s_all = np.linalg.eigh(t)
        order = np.argsort(theta_all)[::-1][:k]
        theta, s = theta_all[order], s_all[:, order]
        scale = max(float(np.abs(theta_all).max()), np.finfo(np.float64).tiny)
        resid = np.abs(beta * s[-1, :])
        if len(alphas) == n:
            converged = True  # the Krylov space is all of R^n: exact up to round-off
            break
        if beta <= 1e-10 * scale:
            # invariant subspace: its Ritz pairs are exact, but an eigenvalue it
            # cannot reach may still be larger; continue from a fresh vector,
            # decoupled (beta = 0)
            betas.append(0.0)
            q = fresh(basis)
            continue
        if len(alphas) >= k and np.all(resid <= tol * scale):
            converged = True
            break
        else:
            betas.append(beta)
            q = w / beta
    Q = torch.stack(basis)
    Y = Q.T @ torch.as_tensor(s.copy(), device=Q.device, dtype=Q.dtype)
    return theta, Y, resid, len(alphas), converged


def hessian_eigenpairs(model: nn.Module, data, *, loss_fn: Callable, n: int = 2, tol: float = 1e-4,
                       max_iter: int = 100, seed: int | None = 0, device=None, dtype=torch.float32,
                       batch_size: int | None = None, which: str = "largest",
                       params: str | list[str] | None = None) -> tuple[Directions, np.ndarray]:
    """The ``n`` largest (or smallest) eigenvalues of the loss Hessian and their eigenvectors.

    Lanczos iteration with full reorthogonalisation on Hessian-vector
    products (see the module docstring); each iteration is one pass over the
    data. Memory: ``max_iter`` vectors of the model's size.

    Parameters
    ----------
    model : nn.Module
        Evaluated in eval mode through ``functional_call``; never written.
    data : (inputs, targets) pair, DataLoader, Dataset or iterable of such pairs
        The loss is the sample-weighted mean over all of it.
    loss_fn : callable ``(output, target) -> scalar tensor``
    n : int
        How many eigenpairs, the algebraically largest (λ1 ≥ λ2 ≥ …), or with
        ``which="smallest"`` the algebraically smallest (λn ≤ λn-1 ≤ …).
    tol : float
        Stop when every returned pair has ``||H y - λ y|| <= tol * |λ|_max``
        (``|λ|_max``: the largest Ritz value in magnitude). Eigenvalues are then
        accurate to about ``tol**2``, eigenvectors to about ``tol`` over the
        relative gap to the next eigenvalue.
    max_iter : int
        Most Hessian-vector products (the Krylov dimension); a
        :class:`ConvergenceWarning` says when it was reached first.
    seed : int or None
        Seeds the random start vector (default 0: reproducible).
    device : str or torch.device, optional
        Where products are computed. Default: CUDA when available, else CPU.
    dtype : torch.float32 (default) or torch.float64
    batch_size : int, optional
        Largest data batch (default: the data as given).
    which : {"largest", "smallest"}
        Which end of the spectrum (see :data:`WHICH`). "smallest" runs the same
        Lanczos iteration on ``-H``: its largest eigenvalues are ``-λ`` for the
        smallest ``λ`` of ``H``, so negative curvature shows as a negative value.
    params : str, list of str or None
        The Hessian over a subset of the parameters, ``H_SS`` (names or glob patterns, see
        :func:`fastscape.random_directions`); default: those that require grad. The
        eigenvectors are zero outside it.

    Returns
    -------
    eigenvectors : Directions
        ``n`` unit-norm dicts keyed like ``model.named_parameters()``, on the
        model's device in its dtype; the sign is fixed so that the entry of
        largest magnitude is positive. ``.info`` holds ``kind="hessian"``,
        the eigenvalues, residuals, iterations and whether it converged.
    eigenvalues : ndarray of shape (n,)
        Float64; descending for "largest", ascending for "smallest" (the most extreme first).
    """
    with warn_once():  # a warning of the loss (e.g. broadcasting) once, not once per product
        return _hessian_eigenpairs(model, data, loss_fn, n, tol, max_iter, seed, device, dtype, batch_size,
                                   which, params)


#: the ends of the spectrum ``hessian_eigenpairs(which=...)`` reaches: the sign the operator is run with
WHICH = {"largest": 1.0, "smallest": -1.0}


def _hessian_eigenpairs(model, data, loss_fn, n, tol, max_iter, seed, device, dtype, batch_size, which,
                        params=None):
    if which not in WHICH:
        raise ValueError(f"`which` must be one of {list(WHICH)}; got {which!r}.")
    sign = WHICH[which]
    positive_int(n, "n")
    positive_number(tol, "tol")
    positive_int(max_iter, "max_iter")
    op = _HVP(model, data, loss_fn, device=device, dtype=dtype, batch_size=batch_size, params=params)
    bad = op.batches.nonfinite()
    if bad is not None:
        raise ValueError(f"`data` holds {bad}: the Hessian is NaN there, so it has no eigenpairs.")
    if n > op.numel:
        raise ValueError(f"`n` must be at most the number of parameters ({op.numel}); got {n}.")
    if max_iter < n:
        raise ValueError(f"`max_iter` must be at least `n` ({n}); got {max_iter}.")
    g = make_generator(seed, None)
    with model_state_guard(model):
        matvec = op if sign > 0 else (lambda v: -op(v))
        try:
            theta, Y, resid, iters, converged = _lanczos(matvec, op.numel, n, tol=tol, max_iter=max_iter,
                                                         generator=g, device=op.device, dtype=op.dtype)
        except np.linalg.LinAlgError as err:
            raise ValueError("the Hessian-vector products are not finite (NaN or inf): the loss of `loss_fn` "
                             "at the model's weights is not finite there, so the Hessian has no eigenpairs.") from err
    theta = sign * theta
    if not converged:
        warnings.warn(f"hessian_eigenpairs stopped at `max_iter`={max_iter} Hessian-vector products "
                      f"with relative residuals {np.round(resid / max(np.abs(theta).max(), 1e-300), 8).tolist()} "
                      f"above `tol`={tol}; raise `max_iter` or `tol`.", ConvergenceWarning, stacklevel=3)
    vectors = []
    for i in range(n):
        y = Y[:, i]
        y = y / y.norm()
        if y[int(y.abs().argmax())] < 0:
            y = -y
        vectors.append(_to_model(op.unflatten(y), model))
    info = {"kind": "hessian", "which": which, "eigenvalues": theta.tolist(), "residuals": resid.tolist(),
            "iterations": iters, "converged": converged, "tol": tol, "device": str(model_device(model)),
            "params": describe(params)}
    return Directions(vectors, **info), np.asarray(theta, dtype=np.float64)


def hessian_trace(model: nn.Module, data, *, loss_fn: Callable, tol: float = 1e-2, max_iter: int = 200,
                  min_iter: int = 10, block: int = 10, seed: int | None = 0, device=None,
                  dtype=torch.float32, batch_size: int | None = None,
                  params: str | list[str] | None = None) -> tuple[float, float]:
    """The trace of the loss Hessian by Hutchinson's estimator.

    ``tr H = E[v^T H v]`` for Rademacher ``v`` (entries ±1 with equal
    probability); the estimate is the mean of ``v^T H v`` over the probes
    drawn, each one Hessian-vector product (one pass over the data).

    Parameters
    ----------
    model, data, loss_fn, device, dtype, batch_size, params
        As for :func:`hessian_eigenpairs` (``params``: the trace of ``H_SS``).
    tol : float
        Stop when the standard error of the mean is at most ``tol`` times its
        magnitude (after ``min_iter`` probes).
    max_iter : int
        Most probes; a :class:`ConvergenceWarning` says when it was reached first.
    min_iter : int
        Fewest probes, so that the standard error itself is trustworthy.
    block : int
        Probes evaluated together in one pass over the data (``torch.func.vmap``
        over the tangents); the stopping rule is checked after each block.
    seed : int or None
        Seeds the probes (default 0: reproducible).

    Returns
    -------
    trace : float
        The estimate.
    stderr : float
        Its standard error (sample standard deviation over ``sqrt(probes)``).
    """
    with warn_once():  # a warning of the loss (e.g. broadcasting) once, not once per product
        return _hessian_trace(model, data, loss_fn, tol, max_iter, min_iter, block, seed, device, dtype, batch_size,
                              params)


def _hessian_trace(model, data, loss_fn, tol, max_iter, min_iter, block, seed, device, dtype, batch_size,
                   params=None):
    positive_number(tol, "tol")
    positive_int(max_iter, "max_iter")
    positive_int(min_iter, "min_iter")
    positive_int(block, "block")
    if min_iter < 2 or min_iter > max_iter:
        raise ValueError(f"`min_iter` must be at least 2 and at most `max_iter` ({max_iter}); got {min_iter}.")
    op = _HVP(model, data, loss_fn, device=device, dtype=dtype, batch_size=batch_size, params=params)
    g = make_generator(seed, None)
    samples: list[float] = []
    mean = stderr = math.nan
    with model_state_guard(model):
        while len(samples) < max_iter:
            m = min(block, max_iter - len(samples))
            v = (torch.randint(0, 2, (m, op.numel), generator=g, device=g.device) * 2 - 1).to(op.device, op.dtype)
            samples.extend((v.double() * op.many(v).double()).sum(dim=1).tolist())
            arr = np.asarray(samples)
            mean = float(arr.mean())
            stderr = float(arr.std(ddof=1) / math.sqrt(len(arr))) if len(arr) > 1 else math.inf
            if len(samples) >= min_iter and stderr <= tol * abs(mean):
                return mean, stderr
    warnings.warn(f"hessian_trace stopped at `max_iter`={max_iter} probes with standard error "
                  f"{stderr:.3g} on a trace of {mean:.3g}, above `tol`={tol} relative; raise "
                  "`max_iter` or `tol`.", ConvergenceWarning, stacklevel=3)
    return mean, stderr


#: the whole-dataset Hessian operator, for the modules that build on it (:mod:`fastscape._curvature`)
HessianOperator = _HVP
