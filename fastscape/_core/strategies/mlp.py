"""``"mlp"``: an ``nn.Sequential`` of ``nn.Linear`` layers, parameter-free elementwise
activations and ``nn.Flatten`` (also first, as in an MLP on images) that receives the raw
input and whose output is the model's (the model itself, or a module whose forward returns
it; checked on a probe forward).

The first layer goes by the affine rule (:mod:`.affine`), then every later layer is one
batched matrix product per chunk into a work buffer reused from chunk to chunk, with the
bias added and the activation applied in place. It computes what vmap computes without
vmap's fresh tensor for each of bmm, bias add and activation (speed: benchmarks/README.md).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn
import torch.nn.functional as F
from torch.func import functional_call, vmap

from ..rewrite import BatchNormParams, FoldedLayer, Values, batchnorm_scale_shift, plain
from .affine import ELEMENTWISE, AffineStrategy
from .base import NotApplicable, PointLoss


#: the "mlp" strategy on CPU: points per chunk at least, and bytes of the widest activation of
#: one block of samples (measured on the 784-256-128-10 MLP, 10 000 samples: 8 points in blocks
#: of 512 samples ran 1.24x faster per point than one point over the whole batch, which reads
#: the first layer's base and direction outputs, 30 MB, once per point)
MLP_CHUNK, MLP_BLOCK_BYTES = 8, 4 << 20


def _in_place(act: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``act`` as a function that may overwrite its argument (the module itself is not changed)."""
    if isinstance(act, (nn.Identity, nn.Dropout)):  # dropout: the model is in eval mode
        return lambda h: h
    if isinstance(act, nn.Tanh):
        return torch.tanh_
    if isinstance(act, nn.Sigmoid):
        return torch.sigmoid_
    if hasattr(act, "inplace"):
        twin = copy.copy(act)
        twin.inplace = True
        return twin
    return act


def _returns_output_of(model: nn.Module, seq: nn.Module, args: tuple, shared, points) -> bool:
    """Whether, on one probe forward, ``seq`` receives the model's raw input and the
    model returns exactly the tensor ``seq`` returns (``forward: return self.net(x)``)."""
    seen = {}

    def hook(mod, inp, out):
        seen["in"], seen["out"] = inp, out

    handle = seq.register_forward_hook(hook)
    try:
        with torch.no_grad():
            out = functional_call(model, {**shared, **{k: v[0] for k, v in points.stack(0, 1).items()}}, args)
    finally:
        handle.remove()
    return len(seen.get("in", ())) == 1 and seen["in"][0] is args[0] and out is seen.get("out")


class MlpStrategy(AffineStrategy):
    name = "mlp"
    rank, fused = 2, True

    def __init__(self, ctx):
        super().__init__(ctx)
        args0 = ctx.args0
        seq_path, _, first = self.path.rpartition(".")
        seq = ctx.model.get_submodule(seq_path)
        names = list(seq._modules) if type(seq) is nn.Sequential else []
        if names and self.flatten is not None and seq._modules[names[0]] is self.flatten:
            names = names[1:]  # Flatten, then the Linear: the first layer computes on flatten(x)
        if not names or first != names[0] or not isinstance(self.raw, nn.Linear):
            raise NotApplicable("the input layer is not an nn.Linear opening an nn.Sequential "
                                "(after an optional nn.Flatten)")
        if seq is not ctx.model and not _returns_output_of(ctx.model, seq, args0, ctx.shared, self.ctx.points):
            raise NotApplicable("the model's output is not its nn.Sequential's output on the raw input")
        prefix = f"{seq_path}." if seq_path else ""
        self.first_acts = [_in_place(a) for a in self.acts]
        # ("linear", parameter prefix, BatchNorm prefix or None) | ("flatten", None, None) | ("act", fn, None)
        self.tail = []
        for name in names[1 + self.consumed:]:
            mod = seq._modules[name]
            if plain(mod, (nn.Linear,)):
                self.tail.append(("linear", f"{prefix}{name}.", None))
            elif type(mod) is FoldedLayer and isinstance(mod.inner, nn.Linear):
                bn_name = next(n for n, m in seq._modules.items() if m is mod.bn)
                self.tail.append(("linear", f"{prefix}{name}.", f"{prefix}{bn_name}."))
            elif type(mod) is BatchNormParams:
                continue  # folded into the Linear before it
            elif type(mod) is nn.Flatten and mod.start_dim == 1 and mod.end_dim == -1:
                self.tail.append(("flatten", None, None))
            elif isinstance(mod, ELEMENTWISE) and not any(True for _ in mod.parameters()):
                self.tail.append(("act", _in_place(mod), None))
            else:
                raise NotApplicable(f"module {prefix}{name} ({type(mod).__name__}) is not a Linear, Flatten "
                                    "or parameter-free elementwise activation")
        # the model's output is computed here, layer by layer: only the loss remains for each point
        self.values = vmap(PointLoss(None, ctx.loss_fn, ctx.metrics), in_dims=(None, None, None, None, 0, None))
        self._work: dict[tuple, torch.Tensor] = {}

    def best_chunk(self, plan: dict) -> int:
        """On CPU at least :data:`MLP_CHUNK` points (within the memory plan): the mlp path walks
        the samples in cache-sized blocks, and the first layer's per-batch outputs are then read
        once for several points."""
        if plan.get("device_type") == "cuda":
            return self.ctx.chunk
        fits = plan["budget_bytes"] // max(1, plan["point_bytes"])
        return int(max(self.ctx.chunk, min(MLP_CHUNK, fits, self.ctx.job_points)))

    def _param(self, key: str, moving: dict):
        return moving[key] if key in moving else self.ctx.shared.get(key)

    def _weights(self, moving: dict) -> list:
        """(weight, bias) of every Linear of the tail for this chunk, a folded BatchNorm applied:
        (P, out, in) and (P, out) where the point moves them, else (out, in) and (out,)."""
        out = []
        for kind, what, bn in self.tail:
            if kind != "linear":
                out.append(None)
                continue
            w, b = self._param(what + "weight", moving), self._param(what + "bias", moving)
            if bn is not None:
                vals = {n: self._param(bn + n, moving) for n in ("weight", "bias", "running_mean", "running_var")}
                holder = self.ctx.model.get_submodule(bn[:-1])
                scale, shift = batchnorm_scale_shift(Values(vals, holder.eps))
                w = w * scale.unsqueeze(-1)
                b = shift if b is None else b * scale + shift
            out.append((w, b))
        return out

    def _buffer(self, tag, shape, like: torch.Tensor) -> torch.Tensor:
        """A work tensor reused from chunk to chunk. On CPU a fresh
        multi-MiB tensor is mapped page by page on first touch (measured: the MNIST-size
        MLP ran 1.6x slower allocating its activations anew for every chunk)."""
        key = (tag, tuple(shape))
        buf = self._work.get(key)
        if buf is None or buf.dtype != like.dtype or buf.device != like.device:
            buf = self._work[key] = torch.empty(shape, dtype=like.dtype, device=like.device)
        return buf

    def _block(self, points: int, base: torch.Tensor, weights: list) -> int:
        """Samples per block: the chunk's widest activation of a block stays near
        ``MLP_BLOCK_BYTES``, so each layer reads what the one before it just wrote from cache,
        and the first layer's base and direction outputs are read once for all the chunk's
        points (CPU; one block on CUDA)."""
        n = base.shape[0]
        if base.device.type != "cpu":
            return n
        lead = base[0].numel() // base.shape[-1]  # positions per sample (tokens) before the features
        widths = [base[0].numel()] + [wb[0].shape[-2] * lead for wb in weights if wb is not None]
        per_sample = points * max(widths) * base.element_size()
        return int(max(1, min(n, MLP_BLOCK_BYTES // max(1, per_sample))))

    def run(self, start, stop, moving, batch_index, args, y):
        base, z = self._layer_outputs(batch_index, args[0])
        coords = self._used_coords(start, stop)
        P, n = stop - start, base.shape[0]
        weights = self._weights(moving)
        block = self._block(P, base, weights)
        z3 = z.view(z.shape[0], n, -1)
        total = None
        for s0 in range(0, n, block):
            s1 = min(n, s0 + block)
            rows = s1 - s0
            # the first layer for this block of samples, every point: base + coords @ Z into a reused buffer
            table = self._buffer("first", (P, rows * z3.shape[2]), base)
            h = torch.addmm(base[s0:s1].reshape(1, -1), coords, z3[:, s0:s1].reshape(z.shape[0], -1), out=table)
            h = h.view(P, rows, *base.shape[1:])  # (P, rows, ..., F)
            if self.bn is not None and self.bn_moves:
                scale, shift = self._bn_rows(coords)
                view = (P, 1, -1, *[1] * (base.dim() - 2))
                h.mul_(scale.view(view)).add_(shift.view(view))
            for act in self.first_acts:
                h = act(h)
            for i, (kind, what, _) in enumerate(self.tail):
                if kind == "act":
                    h = what(h)
                elif kind == "flatten":
                    h = h.flatten(2)
                else:
                    h = self._linear(i, h, *weights[i])
            vals = self.values({}, {}, (), y[s0:s1], h, None)
            if block >= n:
                return vals
            # sample-weighted, as the evaluator weighs its batches
            total = vals.double() * rows if total is None else total.add_(vals.double(), alpha=rows)
        return (total / n).to(base.dtype)

    def _linear(self, i, h, w, b):
        """``F.linear`` of each point's activations ``h`` (P, n, ..., in) with its own
        (``w`` (P, out, in), ``b`` (P, out)) or a shared (``w`` (out, in), ``b`` (out,)) layer."""
        if w.dim() == 2:
            out = F.linear(h, w, b if b is None or b.dim() == 1 else None)
            return out if b is None or b.dim() == 1 else out.add_(b.view(b.shape[0], *[1] * (h.dim() - 2), -1))
        flat = h.reshape(h.shape[0], -1, h.shape[-1])
        out = torch.bmm(flat, w.transpose(1, 2), out=self._buffer(i, (flat.shape[0], flat.shape[1], w.shape[1]), h))
        if b is not None:
            out.add_(b.unsqueeze(-2))  # (P, 1, out) or (1, out)
        return out.view(*h.shape[:-1], w.shape[1])

