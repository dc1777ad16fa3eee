"""Permutation alignment by weight matching (Ainsworth, Hayase & Srinivasa, "Git Re-Basin:
Merging Models modulo Permutation Symmetries", ICLR 2023, sec. 3.2, Algorithm 1).

The hidden units of ``model_b`` are permuted to maximise ``sum_l <W_l^A, P_l W_l^B P_{l-1}^T>``
over every weight that a permutation touches. Coordinate descent: for one permutation at a
time, the others held, the objective is a linear assignment problem, solved exactly with
``scipy.optimize.linear_sum_assignment``; the groups are visited in a random order until a
full sweep improves nothing. The permuted model computes the same function as ``model_b``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .common import check_same
from .permutation import PermutationSpec, permutation_spec

__all__ = ["Alignment", "align"]


@dataclass
class Alignment:
    """``model_b`` with its hidden units permuted to match ``model_a``.

    Attributes
    ----------
    model : nn.Module
        A new model: a copy of ``model_b`` with permuted parameters and buffers.
    permutations : dict group -> ndarray of shape (units,)
        For each group (named after the layer that makes it) the unit of ``model_b`` now at
        each place: ``aligned[i] = b[perm[i]]``.
    spec : PermutationSpec
    meta : dict
        ``sweeps`` (coordinate-descent sweeps run) and ``objective`` (the matched inner product,
        before and after).
    """

    model: nn.Module
    permutations: dict
    spec: PermutationSpec
    meta: dict = field(default_factory=dict)


def _index(perm: np.ndarray, repeat: int) -> torch.Tensor:
    """The permutation of an axis holding each unit ``repeat`` times, unit-major."""
    p = torch.as_tensor(perm, dtype=torch.long)
    if repeat == 1:
        return p
    return (p[:, None] * repeat + torch.arange(repeat)[None, :]).reshape(-1)


def permute_state(state: dict, spec: PermutationSpec, perms: dict, skip: str | None = None) -> dict:
    """``state`` with every axis of ``spec`` permuted (except the axes of group ``skip``)."""
    out = dict(state)
    for key, entries in spec.axes.items():
        if key not in out:
            continue
        t = out[key]
        for axis, group, repeat in entries:
            if group != skip:
                t = t.index_select(axis, _index(perms[group], repeat).to(t.device))
        out[key] = t
    return out


def _cost(a: dict, b_perm: dict, spec: PermutationSpec, group: str) -> np.ndarray:
    """``C[i, j] = sum over weights of <unit i of A, unit j of B>`` for ``group``."""
    n = spec.sizes[group]
    cost = torch.zeros(n, n, dtype=torch.float64)
    for key, entries in spec.axes.items():
        if key not in a:
            continue
        for axis, g, _repeat in entries:
            if g != group:
                continue
            wa = a[key].to(torch.float64).movedim(axis, 0).reshape(n, -1)
            wb = b_perm[key].to(torch.float64).movedim(axis, 0).reshape(n, -1)
            cost += wa @ wb.T
    return cost.numpy()


def align(model_a: nn.Module, model_b: nn.Module, *, max_sweeps: int = 100, seed: int = 0) -> Alignment:
    """Permute ``model_b``'s hidden units to match ``model_a`` by weight matching (Git Re-Basin).

    Works on any model ``torch.fx`` traces into Linear/Conv layers, BatchNorm, elementwise
    activations, pooling, Flatten and residual sums (the units joined by a sum share one
    permutation); see :mod:`fastscape._connect.permutation`.

    Parameters
    ----------
    model_a, model_b : nn.Module
        Same architecture; neither is modified.
    max_sweeps : int
        Most sweeps of coordinate descent over the permutations.
    seed : int
        Seeds the order in which the permutations are visited.

    Returns
    -------
    Alignment
        ``.model`` is the permuted copy of ``model_b``.
    """
    from scipy.optimize import linear_sum_assignment

    check_same(model_a, model_b, "model_a", "model_b")
    if isinstance(max_sweeps, bool) or not isinstance(max_sweeps, int) or max_sweeps < 1:
        raise ValueError(f"`max_sweeps` must be a positive integer; got {max_sweeps!r}.")
    spec = permutation_spec(model_a, "model_a")
    a = {k: p.detach().cpu() for k, p in model_a.named_parameters()}
    b_state = {k: v.detach().cpu() for k, v in model_b.state_dict().items()}
    b = {k: b_state[k] for k in a}
    perms = {g: np.arange(n) for g, n in spec.sizes.items()}
    rng = np.random.default_rng(seed)
    names = list(spec.sizes)
    objective = [_objective(a, b, spec, perms)]
    sweeps = 0
    for sweeps in range(1, max_sweeps + 1):
        improved = False
        for i in rng.permutation(len(names)):
            g = names[i]
            cost = _cost(a, permute_state(b, spec, perms, skip=g), spec, g)
            _, cols = linear_sum_assignment(cost, maximize=True)
            rows = np.arange(len(cols))
            if cost[rows, cols].sum() > cost[rows, perms[g]].sum() + 1e-12 * abs(cost).max():
                improved = True
                perms[g] = cols
        if not improved:
            break
    objective.append(_objective(a, b, spec, perms))
    aligned = copy.deepcopy(model_b)
    permuted = permute_state(b_state, spec, perms)
    with torch.no_grad():
        for k, v in aligned.state_dict(keep_vars=True).items():
            v.copy_(permuted[k])
    return Alignment(model=aligned, permutations=perms, spec=spec,
                     meta={"sweeps": sweeps, "objective": objective})


def _objective(a: dict, b: dict, spec: PermutationSpec, perms: dict) -> float:
    """``sum_l <W_l^A, permuted W_l^B>`` over the parameters a permutation touches."""
    pb = permute_state(b, spec, perms)
    return float(sum((a[k].to(torch.float64) * pb[k].to(torch.float64)).sum() for k in spec.axes if k in a))
