"""Slow, obviously correct references the tests compare fastscape with.

Nothing here imports fastscape.
"""

from __future__ import annotations

import copy

import numpy as np
import torch


def loop_surface(model, x, y, loss_fn, origin, directions, axes, *, batch_size=None, dtype=torch.float64):
    """The loss at every grid point, one point at a time: copy
    ``origin + sum_i c_i d_i`` into a deep copy of the model, run it in eval
    mode over the data and take the sample-weighted mean. float64 by default.

    Returns an ndarray shaped like the grid (axis i along direction i).
    """
    m = copy.deepcopy(model).to(dtype).eval()
    x = x.to(dtype) if x.is_floating_point() else x
    y = y.to(dtype) if y.is_floating_point() else y
    n = x.shape[0]
    bs = batch_size or n
    shape = tuple(len(a) for a in axes)
    out = np.empty(shape)
    named = dict(m.named_parameters())
    named.update({k: b for k, b in m.named_buffers()})
    for idx in np.ndindex(*shape):
        with torch.no_grad():
            for name in directions[0]:
                value = origin[name].to(dtype).clone()
                for i, d in enumerate(directions):
                    value += float(axes[i][idx[i]]) * d[name].to(dtype)
                named[name].copy_(value)
            total = 0.0
            for s in range(0, n, bs):
                xb, yb = x[s:s + bs], y[s:s + bs]
                total += float(loss_fn(m(xb), yb)) * xb.shape[0]
        out[idx] = total / n
    return out
