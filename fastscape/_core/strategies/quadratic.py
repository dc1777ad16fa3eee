"""``"quadratic"``: ``F.mse_loss`` (mean) with no metrics, on a model whose output is the
output of an ``nn.Linear``.

The loss is a quadratic form in that layer's weights,
``(tr(W G W^T) - 2 tr(W C) + sum(Y^2)) / (n * out)`` with ``G = H^T H`` and ``C = H^T Y``
over the layer's input ``H``. When some directions move only that layer (axis directions
over the seed-000 net's two weights), ``H`` depends on the other coordinates alone: the
rest of the model runs once per distinct value of those, and each point costs a few
float64 numbers whatever the number of samples, with no compiling (speed:
benchmarks/README.md).
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F
from torch.func import functional_call, vmap

from ..points import distinct_rows
from ..rewrite import plain, shallow_clone_with
from .base import NotApplicable, Strategy, affine_points, math_attention, PerBatch, TinyLinear


def _is_mean_mse(loss_fn) -> bool:
    return loss_fn is F.mse_loss or (type(loss_fn) is nn.MSELoss and loss_fn.reduction == "mean")


def _output_linear(model: nn.Module, args: tuple, params) -> tuple[str, nn.Module]:
    """(path, layer) of the plain ``nn.Linear`` whose output is the model's output, called
    once per forward and sharing no parameter with another module; raises NotApplicable."""
    outs: dict[str, list] = {}
    handles = []
    for path, mod in model.named_modules():
        if plain(mod, (nn.Linear,)):
            handles.append(mod.register_forward_hook(
                lambda m, i, o, path=path: outs.setdefault(path, []).append(o)))
    try:
        with torch.no_grad():
            out = functional_call(model, dict(params), args)
    finally:
        for h in handles:
            h.remove()
    for path, seen in outs.items():
        if len(seen) == 1 and seen[0] is out:
            head = model.get_submodule(path)
            own = [p for p in head.parameters(recurse=False)]
            if any(q is p for m in model.modules() if m is not head for q in m.parameters(recurse=False)
                   for p in own):
                raise NotApplicable("the output layer shares a parameter with another module")
            return path, head
    raise NotApplicable("the model's output is not the output of an nn.Linear called once")


class QuadraticStrategy(Strategy):
    """Mean squared error of a model that ends in an ``nn.Linear``: with ``H`` the layer's input
    (plus a column of ones for its bias) and ``W`` its weights, ``mean((H W^T - Y)^2)`` is
    ``(tr(W G W^T) - 2 tr(W C) + sum(Y^2)) / (n * out)`` with ``G = H^T H`` and ``C = H^T Y``.
    When some directions move only that layer, ``H`` depends on the other coordinates alone:
    the rest of the model runs once per distinct value of those (vmap over the distinct rows),
    ``G`` and ``C`` are formed once per distinct value, and each point costs a quadratic form
    in its weights, whatever the number of samples. ``G``, ``C`` and the forms are float64,
    so the expansion loses nothing to cancellation at float32 precision."""

    name = "quadratic"
    rank, fused = 0, True

    def __init__(self, ctx):
        super().__init__(ctx)
        args0 = ctx.args0
        points = affine_points(ctx)
        if not _is_mean_mse(ctx.loss_fn) or ctx.metrics:
            raise NotApplicable("the loss is not F.mse_loss (mean) with no metrics")
        if len(args0) != 1 or not isinstance(args0[0], torch.Tensor):
            raise NotApplicable("the model's input is not a single tensor")
        p0 = ctx.first_point()
        path, head = _output_linear(ctx.model, args0, p0)
        prefix = f"{path}." if path else ""
        self.w_key, self.b_key = prefix + "weight", (prefix + "bias" if head.bias is not None else None)
        self.in_features, self.out_features = head.in_features, head.out_features
        head_keys = {self.w_key, self.b_key} - {None}
        k = len(points.directions)
        moves = [{key for key in points.moving if bool(points.directions[i][key].any())} for i in range(k)]
        self.dirs_rest = [i for i in range(k) if moves[i] - head_keys]
        if len(self.dirs_rest) == k:
            raise NotApplicable("every direction moves layers before the output layer, so its input "
                                "differs at every point")
        self.body_moving = [key for key in points.moving if key not in head_keys]
        self.body = shallow_clone_with(ctx.model, {path: nn.Identity()}) if path else None
        if self.body is None:
            raise NotApplicable("the model is a single nn.Linear")
        self.body_shared = {key: v for key, v in ctx.shared.items() if key not in head_keys}
        body = self.body

        def one_row(moving, args):
            with TinyLinear():
                return functional_call(body, {**self.body_shared, **moving}, args)

        self.body_fn = vmap(one_row, in_dims=(0, None))
        self._cache = PerBatch()  # (G, C, yy) per batch when no direction moves the body

    def best_chunk(self, plan: dict) -> int:
        """A point costs a few numbers, not a forward: up to :data:`QUADRATIC_CHUNK` points within
        :data:`QUADRATIC_CHUNK_BYTES` of per-point tensors."""
        fits = max(1, QUADRATIC_CHUNK_BYTES // max(1, self.point_bytes()))
        return int(max(self.ctx.chunk, min(QUADRATIC_CHUNK, fits, self.ctx.job_points)))

    def point_bytes(self) -> int:
        """Bytes a chunk holds per point: its moving tensors and its (G, C) in float64."""
        f = self.in_features + (self.b_key is not None)
        return 8 * f * (f + self.out_features) + 8 * self.ctx.points.moving_numel()

    def _stats(self, rows, args, y):
        """G (R, F+1, F+1), C (R, F+1, out), sum(y^2), float64, for rows of body coordinates."""
        pts = self.ctx.points
        moving = pts.at(rows, self.dirs_rest, self.body_moving)
        with math_attention():
            if moving:
                h = self.body_fn(moving, args)  # (R, n, F)
            else:  # nothing before the output layer moves
                with TinyLinear():
                    h = functional_call(self.body, self.body_shared, args).unsqueeze(0)
        if h.dim() != 3 or y.shape != (h.shape[1], self.out_features):
            raise NotApplicable(f"the targets' shape {tuple(y.shape)} is not the output's "
                                f"({h.shape[1]}, {self.out_features}): mse_loss would broadcast")
        h = h.double()
        if self.b_key is not None:
            h = torch.cat([h, h.new_ones(h.shape[0], h.shape[1], 1)], dim=2)
        yd = y.double()
        return h.transpose(1, 2) @ h, h.transpose(1, 2) @ yd, float((yd * yd).sum())

    def run(self, start, stop, moving, batch_index, args, y):
        pts, P = self.ctx.points, stop - start
        w = moving[self.w_key] if self.w_key in moving else self.ctx.shared[self.w_key].expand(P, -1, -1)
        w = w.double()
        if self.b_key is not None:
            b = moving[self.b_key] if self.b_key in moving else self.ctx.shared[self.b_key].expand(P, -1)
            w = torch.cat([w, b.double().unsqueeze(2)], dim=2)  # (P, out, F+1)
        if self.dirs_rest:
            rows, index = distinct_rows(pts.device_coords[start:stop][:, self.dirs_rest])
            g, c, yy = self._stats(rows, args, y)
        else:  # nothing before the output layer moves: one (G, C) per batch
            one = pts.device_coords[:1, :0]
            g, c, yy = self._cache.get(batch_index, args[0], lambda: self._stats(one, args, y))
            index = torch.zeros(P, dtype=torch.long, device=w.device)
        # sum_o w_o^T G w_o = <G, sum_o w_o w_o^T> and tr(W C) = <C, W^T>, per point with its row's G, C
        wwt = torch.einsum("poi,poj->pij", w, w).reshape(P, -1)
        quad = (g.reshape(g.shape[0], -1)[index] * wwt).sum(1)
        lin = (c.reshape(c.shape[0], -1)[index] * w.transpose(1, 2).reshape(P, -1)).sum(1)
        loss = (quad - 2 * lin + yy) / (y.shape[0] * self.out_features)
        return loss.to(y.dtype).unsqueeze(1)


#: points per chunk of the "quadratic" strategy, at most (a point costs a few numbers, not a
#: forward), and the bytes its per-point tensors may take. Few chunks matter on a loaded
#: machine: every kernel of a chunk is a parallel region that waits for a descheduled
#: thread (measured at load 3 on 2 cores: seed-000 1001x1001 in 16 chunks took 1.27 s warm)
QUADRATIC_CHUNK, QUADRATIC_CHUNK_BYTES = 1 << 20, 256 << 20
