"""Model surgery for the strategies, never touching the user's model: BatchNorm folding
(:func:`fold_batchnorm`) and shallow clones with some submodules swapped
(:func:`shallow_clone_with`)."""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn
import torch.nn.functional as F
from torch.func import functional_call

__all__ = ["fold_batchnorm", "shallow_clone_with", "batchnorm_scale_shift", "plain", "AFFINE_MODULES"]


AFFINE_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


# ----------------------------------------------------------------------------- BatchNorm folding

BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class BatchNormParams(nn.Module):
    """Stands in for a BatchNorm folded into the layer before it: holds the BatchNorm's
    parameters and buffers under their own names (so every point's values still reach
    them through ``functional_call``) and passes its input through."""

    def __init__(self, bn: nn.Module):
        super().__init__()
        for name, p in bn.named_parameters(recurse=False):
            self.register_parameter(name, p)
        for name, b in bn.named_buffers(recurse=False):
            self.register_buffer(name, b)
        self.eps = bn.eps

    def forward(self, x):
        return x


def batchnorm_scale_shift(bn):
    """Per-channel ``(scale, shift)`` of an eval-mode BatchNorm, ``bn(h) = h * scale + shift``,
    from whatever values ``bn``'s tensors hold now (a point's, under ``functional_call``, or
    rows of stacked values, shape (R, C), through :class:`Values`)."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


class FoldedLayer(nn.Module):
    """A Linear/Conv with the eval-mode BatchNorm after it folded in, per point: the
    weight scaled per output channel, the bias replaced by the BatchNorm's shift
    (``bn(conv(x; W, b)) == conv(x; W * s, b * s + t)`` up to rounding). The layer's own
    parameters keep their names; the BatchNorm's stay in its ``BatchNormParams`` stand-in,
    which this module reads (without owning it) at call time."""

    def __init__(self, layer: nn.Module, holder: BatchNormParams):
        super().__init__()
        for name, p in layer.named_parameters(recurse=False):
            self.register_parameter(name, p)
        if "bias" not in self._parameters:
            self.bias = None
        object.__setattr__(self, "inner", layer)  # not a submodule: names stay unchanged
        object.__setattr__(self, "bn", holder)

    def forward(self, x):
        scale, shift = batchnorm_scale_shift(self.bn)
        w = self.weight * scale.view(-1, *[1] * (self.weight.dim() - 1))
        b = shift if self.bias is None else self.bias * scale + shift
        if isinstance(self.inner, nn.Linear):
            return F.linear(x, w, b)
        return self.inner._conv_forward(x, w, b)


def plain(mod: nn.Module, kinds) -> bool:
    """``mod`` is one of ``kinds`` and runs that class's own forward."""
    return isinstance(mod, kinds) and type(mod).forward in {k.forward for k in kinds}


def fold_batchnorm(model: nn.Module, args: tuple, params: Mapping[str, torch.Tensor]):
    """``(clone, folded)``: a shallow clone of ``model`` in which each eval-mode BatchNorm that
    directly follows a Linear/Conv in an ``nn.Sequential`` is folded into that layer, and the
    paths of the folded BatchNorms (``model`` itself and ``[]`` when there are none).

    Eval-mode BatchNorm is an affine map per channel, so the fold is exact up to rounding and
    saves a pass over the layer's output at every point. A pair is folded only where one probe
    forward shows the Sequential running the pair once, the BatchNorm receiving exactly the
    layer's output, and the BatchNorm using running statistics. Parameters are shared, the
    model is not touched.
    """
    pairs = []
    for seq_path, seq in model.named_modules():
        if type(seq) is not nn.Sequential:
            continue
        names = list(seq._modules)
        for a, b in zip(names[:-1], names[1:]):
            layer, bn = seq._modules[a], seq._modules[b]
            if (plain(layer, AFFINE_MODULES) and plain(bn, BATCHNORMS) and bn.track_running_stats
                    and bn.running_mean is not None and bn.running_var is not None):
                prefix = f"{seq_path}." if seq_path else ""
                pairs.append((seq, f"{prefix}{a}", layer, f"{prefix}{b}", bn))
    if not pairs:
        return model, []
    # one probe forward: each pair runs once, inside its Sequential, the BatchNorm on the layer's output
    seen: dict[int, list] = {}
    inside: dict[int, int] = {}
    handles = []

    def enter(mod, inp):
        inside[id(mod)] = inside.get(id(mod), 0) + 1

    def leave(mod, inp, out):
        inside[id(mod)] -= 1

    for seq, _, layer, _, bn in pairs:
        if id(seq) not in inside:
            inside[id(seq)] = 0
            handles += [seq.register_forward_pre_hook(enter), seq.register_forward_hook(leave)]

        def after_layer(mod, inp, out, seq=seq):
            seen.setdefault(id(mod), []).append((out, inside[id(seq)] == 1))

        def before_bn(mod, inp):
            seen.setdefault(id(mod), []).append(inp)

        handles += [layer.register_forward_hook(after_layer), bn.register_forward_pre_hook(before_bn)]
    try:
        with torch.no_grad():
            functional_call(model, dict(params), args)
    finally:
        for h in handles:
            h.remove()
    swaps, folded = {}, []
    for _, lpath, layer, bpath, bn in pairs:
        outs, ins = seen.get(id(layer), []), seen.get(id(bn), [])
        out = outs[0][0] if len(outs) == 1 else None
        if (out is not None and len(ins) == 1 and outs[0][1] and len(ins[0]) == 1 and ins[0][0] is out
                and not bn.training and isinstance(out, torch.Tensor) and out.dim() >= 2
                and out.shape[1] == bn.num_features and (out.dim() == 2 or not isinstance(layer, nn.Linear))):
            # (a Linear on (n, T, F) inputs feeds BatchNorm1d its T axis as channels: not folded)
            holder = BatchNormParams(bn)
            swaps[lpath], swaps[bpath] = FoldedLayer(layer, holder), holder
            folded.append(bpath)
    if not folded:
        return model, []
    return shallow_clone_with(model, swaps), folded



def shallow_clone_with(model: nn.Module, swaps: Mapping[str, nn.Module]):
    """A shallow copy of ``model`` in which the submodule at each path of ``swaps`` is
    replaced by its value. Only the modules on the way are copied; parameters are
    shared; the model itself is not touched."""
    if "" in swaps:
        return swaps[""]

    def rebuild(mod: nn.Module, prefix: str) -> nn.Module:
        clone = copy.copy(mod)
        clone._modules = dict(mod._modules)
        for name, child in mod._modules.items():
            full = f"{prefix}{name}"
            if full in swaps:
                clone._modules[name] = swaps[full]
            elif any(s.startswith(full + ".") for s in swaps):
                clone._modules[name] = rebuild(child, full + ".")
        return clone

    return rebuild(model, "")



class Values:
    """Attribute access to a dict of tensors (a BatchNorm's values for :func:`batchnorm_scale_shift`)."""

    def __init__(self, values: dict, eps: float):
        self.__dict__.update(values)
        self.eps = eps
        for n in ("weight", "bias"):
            self.__dict__.setdefault(n, None)

