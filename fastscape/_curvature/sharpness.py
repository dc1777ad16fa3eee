"""Sharpness measures: the loss increase in a neighbourhood of the weights.

Worst-case measures (:func:`epsilon_sharpness`, :func:`adaptive_sharpness`) search
the neighbourhood in two stages: many random points evaluated at once by the
batched evaluator (:func:`fastscape._core.evaluator.evaluate`), then a few steps
of projected gradient ascent from the best of them, all starts in one ``vmap``.
Both stages only find points inside the neighbourhood, so the estimate is a
lower bound of the true maximum. :func:`mc_sharpness` is an average and needs
the sampling stage alone.

In every measure the perturbation moves the parameters only (buffers, e.g.
BatchNorm statistics, stay), the model in eval mode, on the whole dataset.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import grad_and_value, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from .._core.data import Batches, as_args
from .._core.evaluator import evaluate
from .._core.params import (flatten, model_buffers, model_state_guard, positive_int, positive_number,
                            resolve_device, resolve_dtype, unflatten)
from .._core.points import ExplicitPoints, SampledPoints
from .._directions import make_generator
from .hvp import flat_loss

__all__ = ["adaptive_sharpness", "draw", "epsilon_sharpness", "mc_sharpness", "seed_base"]

#: the neighbourhoods' norms: name -> how a sample is drawn, a step is taken and a point projected
NORMS = ("inf", "2")


@dataclass
class _Problem:
    """The model's loss as a function of flat parameter vectors, on the whole dataset."""

    model: nn.Module
    batches: Batches
    loss_fn: Callable
    buffers: dict
    shapes: dict
    w: torch.Tensor
    chunk_size: int | str = "auto"

    @classmethod
    def of(cls, model, data, loss_fn, device, dtype, batch_size, chunk_size="auto") -> "_Problem":
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be a torch.nn.Module; got {type(model).__name__}.")
        if not callable(loss_fn):
            raise TypeError(f"`loss_fn` must be callable (output, target) -> scalar; got {loss_fn!r}.")
        dev, dt = resolve_device(device, model), resolve_dtype(dtype)
        shapes = {k: p.shape for k, p in model.named_parameters()}
        buffers = {k: (b.to(dev, dt) if b.is_floating_point() else b.to(dev)) for k, b in model_buffers(model).items()}
        w = flatten(dict(model.named_parameters()), list(shapes), dtype=dt, device=dev)
        batches = Batches(data, batch_size=batch_size, device=dev, dtype=dt).bind(model)
        return cls(model, batches, loss_fn, buffers, shapes, w, chunk_size)

    def losses(self, P: torch.Tensor) -> np.ndarray:
        """The loss at each row of ``P`` (S, n), by the batched evaluator; float64 (S,)."""
        return self._evaluate(ExplicitPoints([unflatten(p, self.shapes) for p in P]))

    def sampled_losses(self, kind: str, scale: torch.Tensor | float, count: int, base: int) -> np.ndarray:
        """The loss at ``w`` and at ``count`` samples ``w + scale * u_i`` (:func:`draw` of ``kind``
        from ``base``), made a chunk at a time by the batched evaluator; float64 (count + 1,), ``w``'s first."""
        n, dt, dev = self.w.numel(), self.w.dtype, self.w.device

        def perturb(rows: range) -> torch.Tensor:  # row 0: w itself; row r: sample r - 1
            u = torch.stack([torch.zeros(n, dtype=dt) if r == 0 else draw(kind, n, base, r - 1, dt) for r in rows])
            return u.to(dev) * scale
        return self._evaluate(SampledPoints(self.w, self.shapes, perturb, count + 1))

    def _evaluate(self, points) -> np.ndarray:
        values, _ = evaluate(self.model, self.batches, points, loss_fn=self.loss_fn, buffers=self.buffers,
                             chunk_size=self.chunk_size)
        return values["loss"]

    def gradients(self, P: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradient and loss at each row of ``P`` (S, n): one ``vmap`` per data batch."""
        G = torch.zeros(P.shape, dtype=torch.float64, device=P.device)
        L = torch.zeros(P.shape[0], dtype=torch.float64, device=P.device)
        # the fused attention kernels have no batching rule: vmap would fall back to a slow loop
        with model_state_guard(self.model), sdpa_kernel([SDPBackend.MATH]):
            for x, y, n in self.batches:
                g, v = vmap(grad_and_value(flat_loss(self.model, self.buffers, self.shapes, self.loss_fn,
                                                     as_args(x), y)))(P)
                G += g.double() * n
                L += v.double() * n
        return (G / self.batches.n_samples).to(P.dtype), L / self.batches.n_samples


def seed_base(seed: int | None) -> int:
    """The base of the per-sample seeds of ``seed`` (sample ``i`` is drawn from ``base + i``)."""
    return int(torch.randint(0, 2 ** 62, (1,), generator=make_generator(seed, None)))


def draw(kind: str, n: int, base: int, i: int, dtype=torch.float32) -> torch.Tensor:
    """Sample ``i`` (n,) of a seeded stream, on the CPU in ``dtype``, from its own generator
    (seeded ``base + i``: any chunk of samples is made alone, and the same whatever the chunks).

    ``kind``: ``"normal"`` N(0, I); ``"inf"`` uniform in the box ``[-1, 1]^n``; ``"2"`` uniform
    in the unit Euclidean ball (a normal direction, radius ``U^(1/n)``).
    """
    g = torch.Generator().manual_seed((base + i) % (2 ** 63))
    if kind == "normal":
        return torch.randn(n, generator=g, dtype=dtype)
    if kind == "inf":
        return torch.rand(n, generator=g, dtype=dtype) * 2 - 1
    u = torch.randn(n, generator=g, dtype=dtype)
    r = float(torch.rand(1, generator=g, dtype=torch.float64)) ** (1.0 / n)
    return u * (r / float(u.double().norm()))


def _project(p: str, u: torch.Tensor, radius: float) -> torch.Tensor:
    if p == "inf":
        return u.clamp(-radius, radius)
    norm = u.norm(dim=1, keepdim=True)
    return u * torch.clamp(radius / norm.clamp_min(1e-300), max=1.0)


def _worst_case(prob: _Problem, scale: torch.Tensor, radius: float, p: str, samples: int, steps: int,
                starts: int, seed) -> tuple[float, float]:
    """``(max loss found, loss at w)`` over ``{w + scale * u : ||u||_p <= radius}``.

    Samples ``samples`` points ``u`` (uniform in the ball), then from the ``starts``
    best, ``steps`` steps of projected ascent in ``u``: a sign step of ``2 radius / steps``
    per coordinate in the box (``p="inf"``), a normalised gradient step of length
    ``radius`` in the Euclidean ball (``p="2"``, SAM's ascent step, Foret et al. 2021).
    """
    n, dt = prob.w.numel(), prob.w.dtype
    S = scale.to(dt)
    seeds = seed_base(seed)
    losses = prob.sampled_losses(p, radius * S, samples, seeds)
    base, found = float(losses[0]), losses[1:]
    best = float(np.nanmax(found)) if np.isfinite(found).any() else math.nan
    order = np.argsort(np.nan_to_num(found, nan=-np.inf))[::-1][: min(starts, samples)]
    u = radius * torch.stack([draw(p, n, seeds, int(i), dt) for i in order]).to(prob.w.device)
    for _ in range(steps):
        G, L = prob.gradients(prob.w + S * u)
        best = float(np.nanmax([best, *L.cpu().numpy()]))
        gu = G * S  # the gradient with respect to u
        if p == "inf":
            u = _project(p, u + (2 * radius / steps) * torch.sign(gu), radius)
        else:
            u = _project(p, u + radius * gu / gu.norm(dim=1, keepdim=True).clamp_min(1e-300), radius)
    if steps:
        best = float(np.nanmax([best, *prob.losses(prob.w + S * u)]))
    return best, base


def _check(samples, steps, starts):
    positive_int(samples, "samples")
    positive_int(starts, "starts")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise ValueError(f"`steps` must be a non-negative int; got {steps!r}.")


def epsilon_sharpness(model: nn.Module, data, *, loss_fn: Callable, epsilon: float = 1e-3, samples: int = 256,
                      steps: int = 10, starts: int = 4, seed: int | None = 0, device=None, dtype=torch.float32,
                      batch_size: int | None = None, chunk_size: int | str = "auto") -> float:
    """Keskar et al.'s epsilon-sharpness, in percent.

    Keskar, Mudigere, Nocedal, Smelyanskiy and Tang, "On Large-Batch Training for
    Deep Learning: Generalization Gap and Sharp Minima", ICLR 2017, Metric 2.1
    (the full space, ``A = I``)::

        phi(x, eps) = 100 * (max_{y in C_eps} f(x + y) - f(x)) / (1 + f(x)),
        C_eps = {z : |z_i| <= eps * (|x_i| + 1) for every i}

    with ``f`` the whole-dataset loss and ``x`` the model's parameters. The maximum
    is estimated by ``samples`` uniform points of the box and ``steps`` projected
    sign-ascent steps from the ``starts`` best (Keskar et al. used L-BFGS-B); it is a
    lower bound.

    Parameters
    ----------
    model : nn.Module
        Evaluated in eval mode; never written.
    data : (inputs, targets) pair, DataLoader, Dataset or iterable of such pairs
    loss_fn : callable ``(output, target) -> scalar tensor``
    epsilon : float
        The box's relative half-width (Keskar et al.: 1e-3 and 5e-4).
    samples, steps, starts : int
        Random points, ascent steps (0: sampling alone), ascent starts.
    seed : int or None
        Seeds the samples (default 0: reproducible). Sample ``i`` comes from its own generator
        (:func:`draw`), in ``dtype``: the same seed and dtype give the same samples.
    device, dtype, batch_size, chunk_size
        As for :func:`fastscape.loss_surface`; the samples are made a chunk at a time, so memory
        holds ``chunk_size`` of them, never all.

    Returns
    -------
    float
        ``phi`` in percent (NaN where the loss is not finite).
    """
    positive_number(epsilon, "epsilon")
    _check(samples, steps, starts)
    prob = _Problem.of(model, data, loss_fn, device, dtype, batch_size, chunk_size)
    top, base = _worst_case(prob, prob.w.abs() + 1, epsilon, "inf", samples, steps, starts, seed)
    return 100.0 * (top - base) / (1.0 + base)


def adaptive_sharpness(model: nn.Module, data, *, loss_fn: Callable, rho: float = 0.05, p: str = "2",
                       eta: float = 0.01, samples: int = 256, steps: int = 10, starts: int = 4,
                       seed: int | None = 0, device=None, dtype=torch.float32,
                       batch_size: int | None = None, chunk_size: int | str = "auto") -> float:
    """Adaptive (scale-invariant) sharpness of Kwon et al.

    Kwon, Kim, Park and Choi, "ASAM: Adaptive Sharpness-Aware Minimization for
    Scale-Invariant Learning of Deep Neural Networks", ICML 2021, Definition 3::

        S_rho(w) = max_{||T_w^{-1} e||_p <= rho} L(w + e) - L(w),   T_w = diag(|w_i| + eta)

    invariant to rescalings of ReLU layers up to ``eta``. Estimated as for
    :func:`epsilon_sharpness` in ``u = T_w^{-1} e``: samples of the ``p``-ball, then
    projected ascent (a normalised gradient step of length ``rho`` for ``p="2"``,
    a sign step for ``p="inf"``); a lower bound.

    Parameters
    ----------
    rho : float
        The neighbourhood's radius in the normalised coordinates.
    p : {"2", "inf"}
        The norm (see :data:`NORMS`).
    eta : float
        Kwon et al.'s offset, so that zero weights may move.
    model, data, loss_fn, samples, steps, starts, seed, device, dtype, batch_size, chunk_size
        As for :func:`epsilon_sharpness`.

    Returns
    -------
    float
        ``S_rho(w)``, in the loss's units.
    """
    positive_number(rho, "rho")
    p = str(p)
    if p not in NORMS:
        raise ValueError(f"`p` must be one of {list(NORMS)}; got {p!r}.")
    if not (isinstance(eta, (int, float)) and eta >= 0):
        raise ValueError(f"`eta` must be a non-negative number; got {eta!r}.")
    _check(samples, steps, starts)
    prob = _Problem.of(model, data, loss_fn, device, dtype, batch_size, chunk_size)
    top, base = _worst_case(prob, prob.w.abs() + eta, rho, p, samples, steps, starts, seed)
    return top - base


def mc_sharpness(model: nn.Module, data, *, loss_fn: Callable, sigma: float = 0.01, samples: int = 256,
                 seed: int | None = 0, device=None, dtype=torch.float32,
                 batch_size: int | None = None, chunk_size: int | str = "auto") -> tuple[float, float]:
    """Monte-Carlo sharpness: the mean loss increase under Gaussian weight noise.

    ``E_{d ~ N(0, sigma^2 I)} [L(w + d)] - L(w)``, the average-case sharpness of
    the PAC-Bayes view (Neyshabur, Bhojanapalli, McAllester and Srebro, "Exploring
    Generalization in Deep Learning", NeurIPS 2017, Sec. 2.2; Jiang et al.,
    "Fantastic Generalization Measures and Where to Find Them", ICLR 2020). Near a
    minimum it is about ``sigma^2 tr(H) / 2``. Estimated by the mean over
    ``samples`` draws, all evaluated by the batched evaluator.

    Parameters
    ----------
    sigma : float
        Standard deviation of the noise on every parameter.
    model, data, loss_fn, samples, seed, device, dtype, batch_size, chunk_size
        As for :func:`epsilon_sharpness`.

    Returns
    -------
    (mean, stderr) : floats
        The estimate and its standard error (sample standard deviation over ``sqrt(samples)``).
    """
    positive_number(sigma, "sigma")
    positive_int(samples, "samples")
    if samples < 2:
        raise ValueError(f"`samples` must be at least 2 for a standard error; got {samples}.")
    prob = _Problem.of(model, data, loss_fn, device, dtype, batch_size, chunk_size)
    losses = prob.sampled_losses("normal", sigma, samples, seed_base(seed))
    rise = losses[1:] - losses[0]
    return float(rise.mean()), float(rise.std(ddof=1) / math.sqrt(samples))
