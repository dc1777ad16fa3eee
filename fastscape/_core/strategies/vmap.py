"""``"vmap"``: ``torch.func.vmap`` over ``functional_call`` on the stacked parameters of
the chunk; the data batch is shared by all points.
"""

from __future__ import annotations

from torch.func import vmap

from ..rewrite import shallow_clone_with
from .base import PointLoss, Strategy, math_attention, pad_rows


class VmapStrategy(Strategy):
    name = "vmap"

    def __init__(self, ctx):
        super().__init__(ctx)
        # a compiled function is cached while the user holds the model: it must not hold the model itself
        model = shallow_clone_with(ctx.model, {}) if self.compiled else ctx.model
        self.point = PointLoss(model, ctx.loss_fn, ctx.metrics, tiny_linear=not self.compiled)
        self.fn = vmap(self.point, in_dims=(None, 0, None, None))  # every point of a chunk at once

    def run(self, start, stop, moving, batch_index, args, y):
        c = stop - start
        if self.compiled:
            moving = {k: pad_rows(v, self.chunk) for k, v in moving.items()}
        with math_attention():
            return self.fn(self.ctx.shared, moving, args, y)[:c]

