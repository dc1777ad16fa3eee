"""``"affine"``: the first-layer fast path.

When an ``nn.Linear`` or ``nn.Conv1d/2d/3d`` receives the model's raw input (or an
``nn.Flatten`` of it), its output is affine in the grid coordinates:
``f(X; W0 + sum_i c_i D_i) = f(X; W0) + sum_i c_i f_0(X; D_i)`` (``f_0`` without the
origin's bias). Those ``1 + k`` outputs are computed once per data batch and combined per
point; the rest of the model runs under vmap as usual. Parameter-free elementwise
activations that directly follow the layer in an ``nn.Sequential`` are folded in, and when
only some directions move the layer (e.g. axis directions over single weights), the layer
and its activation are computed once per distinct value of those coordinates instead of
once per point. Applies only where a probe forward shows the layer receiving the raw input
tensor, once per forward; forcing it on another model raises ``ValueError`` with the
reason. A folded BatchNorm (:func:`fastscape._core.rewrite.fold_batchnorm`) is applied to
the first-layer table, once per batch when no direction moves it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.func import functional_call, vmap

from ..points import distinct_rows
from ..rewrite import AFFINE_MODULES, BatchNormParams, FoldedLayer, Values, batchnorm_scale_shift, plain
from ..rewrite import shallow_clone_with
from .base import NotApplicable, PointLoss, Strategy, affine_points, math_attention, pad_rows, PerBatch


#: parameter-free modules that act element by element on any shape; they may be
#: folded into the first layer of the affine path when they follow it in a Sequential.
ELEMENTWISE = (nn.Identity, nn.ReLU, nn.ReLU6, nn.Tanh, nn.Sigmoid, nn.GELU, nn.SiLU, nn.ELU,
               nn.LeakyReLU, nn.Softplus, nn.Hardtanh, nn.Mish, nn.Dropout)


#: device types on which the affine path finds the distinct coordinate rows of each chunk
#: anew; elsewhere (GPUs) it finds those of the whole grid once, because ``torch.unique``
#: makes the host wait for the device to learn its output size (measured on CPU: per chunk
#: is 2-3x cheaper than once over a 1001 x 1001 grid)
PER_CHUNK_UNIQUE_DEVICES = frozenset({"cpu"})


class _Injected(nn.Module):
    """Stands in for the first layer in a shallow clone of the model: returns the
    precomputed (per-point) output held in its ``pre`` buffer. Keeps the layer's
    own parameters under the same names, so the parameter dict is unchanged."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        for name, p in layer.named_parameters(recurse=False):
            self.register_parameter(name, p)
        for name, b in layer.named_buffers(recurse=False):
            self.register_buffer(name, b)
        self.register_buffer("pre", torch.empty(0), persistent=False)

    def forward(self, *args, **kwargs):
        return self.pre


def _find_raw_input_layer(model: nn.Module, args: tuple, shared: Mapping[str, torch.Tensor]):
    """(path, layer, flatten) of the Linear/Conv that receives the model's raw first input,
    found with forward hooks on one plain forward; raises NotApplicable.

    ``flatten`` is the ``nn.Flatten`` module between the raw input and the layer when
    the layer receives ``flatten(raw)`` (an MLP on images), else None: the layer's output
    is still affine in its weights, computed on the flattened input."""
    if len(args) != 1 or not isinstance(args[0], torch.Tensor) or not args[0].is_floating_point():
        raise NotApplicable("the model's input is not a single floating-point tensor")
    raw = args[0]
    calls: dict[str, list] = {}
    flattened: list[tuple[torch.Tensor, nn.Module]] = []  # (flatten(raw), the Flatten module)
    handles = []

    def source(t):
        if t is raw:
            return "raw"
        return next((f for out, f in flattened if t is out), False)

    for path, mod in model.named_modules():
        if isinstance(mod, (*AFFINE_MODULES, FoldedLayer)):
            def hook(m, inp, path=path):
                calls.setdefault(path, []).append(source(inp[0]) if len(inp) == 1 else False)
            handles.append(mod.register_forward_pre_hook(hook))
        elif type(mod) is nn.Flatten:
            def flat_hook(m, inp, out):
                if len(inp) == 1 and inp[0] is raw:
                    flattened.append((out, m))
            handles.append(mod.register_forward_hook(flat_hook))
    try:
        with torch.no_grad():
            functional_call(model, dict(shared), args)
    finally:
        for h in handles:
            h.remove()
    for path, seen in calls.items():
        mod = model.get_submodule(path)
        if len(seen) == 1 and seen[0] is not False and (plain(mod, AFFINE_MODULES) or type(mod) is FoldedLayer):
            return path, mod, (None if seen[0] == "raw" else seen[0])
    raise NotApplicable("no nn.Linear/nn.Conv layer receives the model's raw input tensor "
                        "(or its nn.Flatten) exactly once per forward")



class AffineStrategy(Strategy):
    name = "affine"

    def __init__(self, ctx):
        super().__init__(ctx)
        points = affine_points(ctx)
        path, layer, self.flatten = _find_raw_input_layer(ctx.model, ctx.args0, ctx.first_point())
        prefix = f"{path}." if path else ""
        own = [n for n, _ in layer.named_parameters(recurse=False)]
        self.keys = {n: prefix + n for n in own}
        # a BatchNorm folded into the layer (see fold_batchnorm): applied per table row
        self.raw = layer.inner if isinstance(layer, FoldedLayer) else layer
        self.bn, self.bn_keys = None, {}
        if isinstance(layer, FoldedLayer):
            bn_path = next(p for p, m in ctx.model.named_modules() if m is layer.bn)
            self.bn = layer.bn
            self.bn_keys = {n: f"{bn_path}.{n}" for n in ("weight", "bias", "running_mean", "running_var")
                            if getattr(layer.bn, n, None) is not None}
        # which directions move the layer (or its BatchNorm); the rest do not change its output
        mine = [*self.keys.values(), *self.bn_keys.values()]
        self.dirs_used = [i for i in range(len(points.directions))
                          if any(k in points.moving and bool(points.directions[i][k].any()) for k in mine)]
        self.bn_moves = any(k in points.moving for k in self.bn_keys.values())
        # parameter-free elementwise modules right after the layer in a Sequential
        # (a folded BatchNorm's stand-in passes its input through and is stepped over)
        self.acts, identities, self.consumed = [], [], 0
        if path:
            parent_path, _, idx = path.rpartition(".")
            parent = ctx.model.get_submodule(parent_path)
            if type(parent) is nn.Sequential:
                names = list(parent._modules)
                for name in names[names.index(idx) + 1:]:
                    mod = parent._modules[name]
                    if isinstance(mod, BatchNormParams) and mod is self.bn:
                        self.consumed += 1
                        continue
                    if not isinstance(mod, ELEMENTWISE) or any(True for _ in mod.parameters()):
                        break
                    self.acts.append(mod)
                    self.consumed += 1
                    identities.append(f"{parent_path}.{name}" if parent_path else name)
        self.layer, self.path = layer, path
        self.clone = shallow_clone_with(ctx.model, {path: _Injected(layer),
                                                     **{p: nn.Identity() for p in identities}})
        self.pre_key = prefix + "pre"
        self._cache = PerBatch()  # (base, z) per data batch
        self._grid_rows = None  # (distinct rows, each point's row, the same on the host): see _distinct
        self._used_index = None  # dirs_used on the device, when they are not consecutive
        self.point = PointLoss(self.clone, ctx.loss_fn, ctx.metrics, pre_key=self.pre_key,
                               tiny_linear=not self.compiled)
        # every point of a chunk at once; each takes its first-layer output from the table's row
        self.fn = vmap(self.point, in_dims=(None, 0, None, None, None, 0))

    @property
    def rank(self) -> int:
        """1 when only some directions move the first layer (it is computed once per distinct
        value of their coordinates), else 3 (see :attr:`Strategy.rank`)."""
        return 1 if self._some_directions() else 3

    def _some_directions(self) -> bool:
        """Whether some directions move the layer, but not all of them."""
        return 0 < len(self.dirs_used) < len(self.ctx.points.directions)

    def _layer_outputs(self, batch_index, x):
        """(base, Z): the layer's output at the origin, shape (n, ...), and the
        outputs of the used directions without bias offset, shape (len(dirs_used), n*...).
        A folded BatchNorm that no direction moves is applied here, once per batch."""
        return self._cache.get(batch_index, x, lambda: self._compute_layer_outputs(x))

    def _compute_layer_outputs(self, x) -> tuple:
        pts, shared = self.ctx.points, self.ctx.shared
        if self.flatten is not None:
            x = self.flatten(x)
        origin = {n: (pts.origin_of(k) if k in pts.moving else shared[k]) for n, k in self.keys.items()}
        base = functional_call(self.raw, origin, (x,))
        zs = []
        for i in self.dirs_used:
            d = {n: (pts.direction_of(i, k) if k in pts.moving else torch.zeros_like(shared[k]))
                 for n, k in self.keys.items()}
            zs.append(functional_call(self.raw, d, (x,)).reshape(-1))
        z = torch.stack(zs) if zs else base.new_zeros(0, base.numel())
        if self.bn is not None and not self.bn_moves:
            # fixed BatchNorm: bn(base + c.z) = bn(base) + c.(scale * z)
            scale, shift = self._bn_rows(None)
            view = (1, -1, *[1] * (base.dim() - 2))
            base = base * scale.view(view) + shift.view(view)
            z = (z.view(z.shape[0], *base.shape) * scale.view(view)).reshape(z.shape[0], -1)
        return base, z

    def _bn_rows(self, rows):
        """(scale, shift) of the folded BatchNorm: shape (C,) from the shared values when
        ``rows`` is None, else (R, C), one per row of coordinates over ``dirs_used``."""
        pts, shared = self.ctx.points, self.ctx.shared
        vals = {}
        for n, k in self.bn_keys.items():
            if rows is not None and k in pts.moving:
                vals[n] = pts.at(rows, self.dirs_used, [k])[k]
            else:
                vals[n] = pts.origin_of(k) if k in pts.moving else shared[k]
        return batchnorm_scale_shift(Values(vals, self.bn.eps))

    def _table(self, rows, base, z):
        """The layer's output (its BatchNorm and activations applied) for each row of
        ``rows`` (R, len(dirs_used)): shape (R, *base.shape)."""
        table = torch.addmm(base.reshape(1, -1), rows, z).view(rows.shape[0], *base.shape)
        if self.bn is not None and self.bn_moves:  # the BatchNorm moves: per row, in place
            scale, shift = self._bn_rows(rows)
            view = (rows.shape[0], 1, -1, *[1] * (base.dim() - 2))
            table.mul_(scale.view(view)).add_(shift.view(view))
        for act in self.acts:
            table = act(table)
        return table

    def run(self, start, stop, moving, batch_index, args, y):
        c = stop - start
        base, z = self._layer_outputs(batch_index, args[0])
        coords = self._used_coords(start, stop)
        if self.compiled:
            moving = {k: pad_rows(v, self.chunk) for k, v in moving.items()}
            coords = pad_rows(coords, self.chunk)
        if self._some_directions():
            # the layer depends on some coordinates only: once per distinct value
            distinct, index = self._distinct(start, stop, coords)
            table = self._table(distinct, base, z)
            if self.compiled:
                # the compiled function takes the table's row count as a dynamic size, so a
                # new grid (another number of distinct rows per chunk) does not recompile;
                # at least 2 rows, as sizes 0 and 1 are always specialised
                table = pad_rows(table, 2)
                torch._dynamo.mark_dynamic(table, 0)
        else:  # one row per point (coords is already padded to the chunk when compiled)
            table, index = self._table(coords, base, z), torch.arange(coords.shape[0], device=coords.device)
        with math_attention():
            return self.fn(self.ctx.shared, moving, args, y, table, index)[:c]


    def _used_coords(self, start: int, stop: int) -> torch.Tensor:
        """Coordinates of points ``start:stop`` along the directions that move the layer,
        shape (stop-start, len(dirs_used)): a slice when those directions are consecutive
        (always, for 1 or 2 directions); a Python list as an index would be copied to the
        device, and waited for, at every chunk."""
        c = self.ctx.points.device_coords[start:stop]
        used = self.dirs_used
        if not used:
            return c[:, :0]
        if used == list(range(used[0], used[-1] + 1)):
            return c[:, used[0]:used[-1] + 1]
        if self._used_index is None or self._used_index.device != c.device:
            self._used_index = torch.tensor(used, device=c.device)
        return c.index_select(1, self._used_index)

    def _distinct(self, start: int, stop: int, coords: torch.Tensor):
        """``(distinct, index)``: the distinct rows of the used coordinates of points
        ``start:stop`` and each point's row (``coords`` is those coordinates, padded to
        the chunk on the compiled path).

        On CPU per chunk. On a GPU the whole grid's distinct rows (sorted) and each
        point's row are found once, with the one host wait of an evaluation, and a
        chunk takes the consecutive range of rows its points use, decided on the
        host copy of the index: no wait per chunk.
        """
        if coords.device.type in PER_CHUNK_UNIQUE_DEVICES:
            return distinct_rows(coords)
        if self._grid_rows is None:
            rows, inverse = distinct_rows(self._used_coords(0, self.ctx.points.n))
            self._grid_rows = (rows, inverse, inverse.cpu().numpy())
        rows, inverse, host = self._grid_rows
        part = host[start:stop]
        lo, hi = int(part.min()), int(part.max()) + 1
        if hi - lo > coords.shape[0]:  # rows far apart in this chunk: one row per point
            return coords, torch.arange(coords.shape[0], device=coords.device)
        return rows[lo:hi], pad_rows(inverse[start:stop] - lo, coords.shape[0])

