"""``"loop"``: one point after another, the fallback for models vmap cannot batch
(``nn.LSTM``, ``nn.GRU``). One point at a time may use PyTorch's fused transformer
kernels and, for CPU convolutions, the channels-last layout.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from ..guards import values_agree
from .base import PointLoss, Strategy, mha_fastpath_set, PerBatch


#: first points the loop probes for its channels-last decision before it keeps the
#: plain layout, when each of them diverges (no finite output to compare)
LAYOUT_TRIES = 4


class LoopStrategy(Strategy):
    name = "loop"
    rank = 4

    def __init__(self, ctx):
        super().__init__(ctx)
        # one point at a time has no batched matmul to rewrite: plain F.linear (see TinyLinear)
        self.point = PointLoss(ctx.model, ctx.loss_fn, ctx.metrics, tiny_linear=False)
        self.channels_last: bool | None = None  # decided on a probe forward (see _layout)
        self._layout_tries = 0
        self._converted = PerBatch()  # channels-last args per data batch

    def run(self, start, stop, moving, batch_index, args, y):
        c = self.ctx
        points = [{k: v[i] for k, v in moving.items()} for i in range(stop - start)]
        # one point at a time may use the fused transformer kernels, as a plain forward would
        # (measured: 12% faster on the benchmark's encoder layer)
        with mha_fastpath_set(c.mha_fastpath):
            if self.channels_last is None:
                # a diverging first point cannot tell the layouts apart: ask again on the
                # next chunk's first point, a few times, then keep the plain layout
                self._layout_tries += 1
                decided = self._layout({**c.shared, **points[0]}, args)
                self.channels_last = decided if decided is not None or self._layout_tries >= LAYOUT_TRIES else None
            if self.channels_last:
                args = self._to_channels_last(args, batch_index)
            values = []
            for one in points:
                values.append(self.point(c.shared, one, args, y))
            return torch.stack(values)

    def _to_channels_last(self, args: tuple, batch_index: int) -> tuple:
        """``args`` with the image batch in channels-last layout, converted once per data batch."""
        return self._converted.get(
            batch_index, args[0], lambda: (args[0].contiguous(memory_format=torch.channels_last),) + args[1:])

    def _layout(self, params, args) -> bool | None:
        """Whether to feed a CPU image batch to the model in channels-last layout.

        oneDNN's CPU convolutions run about twice as fast on channels-last data
        (measured on the benchmark CNN: 244 -> 127 ms per point). Used only where
        one probe forward in that layout runs and matches the plain one: a
        model that calls ``.view`` on a convolution's output cannot take it.
        None when the probe cannot tell (the point diverges: no finite output).
        """
        x = args[0] if args else None
        if (not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point()
                or x.device.type != "cpu"
                or not any(isinstance(getattr(m, "inner", m), nn.Conv2d) for m in self.ctx.model.modules())):
            return False
        plain = functional_call(self.ctx.model, params, args)
        try:
            other = functional_call(self.ctx.model, params, (x.contiguous(memory_format=torch.channels_last),) + args[1:])
        except RuntimeError:
            return False
        if not isinstance(plain, torch.Tensor) or not isinstance(other, torch.Tensor):
            return False
        if not bool(torch.isfinite(plain).any()):
            return None
        return values_agree(plain, other, rtol=1e-4)

