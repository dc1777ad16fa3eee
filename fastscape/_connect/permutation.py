"""Which axes of which tensors one permutation of hidden units moves, read off the model's graph.

A hidden unit of a Linear or convolution (an output row, a filter) can be moved to another
place without changing the function, if everything that reads the unit (the next layer's
input column, the BatchNorm that normalises it, a residual sum it joins) moves with it
(Ainsworth, Hayase & Srinivasa, "Git Re-Basin", ICLR 2023, sec. 2). The model is traced with
``torch.fx``; each Linear/Conv output starts a *group* of channels (axis 1 of activations),
operations that act channel by channel pass it on, a residual sum joins the groups of its
operands (they share one permutation), and the model's input and output groups are fixed.
A ``Flatten`` of a (C, H, W) map before a Linear is followed too: the Linear's input axis
holds each channel ``H*W`` times, channel-major.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["PermutationSpec", "permutation_spec"]

_PASS_MODULES = (nn.ReLU, nn.LeakyReLU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.SiLU, nn.ELU, nn.Identity, nn.Dropout,
                 nn.Dropout2d, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d,
                 nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten)
_PASS_FUNCTIONS = {F.relu, torch.relu, torch.tanh, torch.sigmoid, F.gelu, F.silu, F.leaky_relu, F.dropout,
                   F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, torch.flatten, operator.mul,
                   operator.truediv, torch.mul}
_PASS_METHODS = {"relu", "tanh", "sigmoid", "flatten", "contiguous", "mul", "div"}
_ADD = {operator.add, operator.iadd, torch.add}


@dataclass
class PermutationSpec:
    """The permutation groups of a model.

    Attributes
    ----------
    sizes : dict group -> int
        Units in each permutable group, named after the first layer that makes it.
    axes : dict tensor name -> list of (axis, group, repeat)
        For each parameter and buffer, the axes a group's permutation moves; ``repeat`` > 1
        for a Linear input that reads a flattened map (each channel ``repeat`` times).
    """

    sizes: dict
    axes: dict = field(default_factory=dict)


class _Groups:
    """Union-find over channel groups; ``fixed`` groups are the model's input and output."""

    def __init__(self):
        self.parent, self.size, self.fixed, self.name = [], [], [], []

    def new(self, size, name, fixed=False) -> int:
        self.parent.append(len(self.parent))
        self.size.append(size)
        self.fixed.append(fixed)
        self.name.append(name)
        return len(self.parent) - 1

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            g = self.parent[g]
        return g

    def union(self, a: int, b: int, where: str) -> int:
        a, b = self.find(a), self.find(b)
        if a == b:
            return a
        if None not in (self.size[a], self.size[b]) and self.size[a] != self.size[b]:
            raise ValueError(f"`model`: {where} adds tensors of {self.size[a]} and {self.size[b]} channels.")
        lo, hi = min(a, b), max(a, b)
        self.parent[hi] = lo
        self.fixed[lo] = self.fixed[lo] or self.fixed[hi]
        self.size[lo] = self.size[lo] if self.size[lo] is not None else self.size[hi]
        return lo


def _trace(model: nn.Module, name: str) -> fx.GraphModule:
    try:
        return fx.symbolic_trace(model)
    except Exception as err:  # torch.fx raises many kinds; say which argument and why
        raise ValueError(f"`{name}` cannot be traced by torch.fx to find its hidden units "
                         f"({type(err).__name__}: {str(err).splitlines()[0]}).") from None


def _layer(mod, path, gin, groups, axes, name):
    """The group a Linear/Conv/BatchNorm module outputs; records its tensors' axes."""
    prefix = f"{path}."
    if isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        if getattr(mod, "groups", 1) != 1:
            raise ValueError(f"`{name}`: grouped convolution {path!r} is not supported by weight matching.")
        out = groups.new(mod.weight.shape[0], path)
        size_in = groups.size[groups.find(gin)]
        n_in = mod.weight.shape[1]
        repeat = n_in // size_in if size_in else 1
        if size_in and n_in != repeat * size_in:
            raise ValueError(f"`{name}`: {path!r} takes {n_in} inputs from a group of {size_in} channels.")
        axes[prefix + "weight"] = [(0, out, 1), (1, gin, repeat)]
        if mod.bias is not None:
            axes[prefix + "bias"] = [(0, out, 1)]
        return out
    if isinstance(mod, _BatchNorm):
        size_in = groups.size[groups.find(gin)]
        if size_in is not None and size_in != mod.num_features:
            raise ValueError(f"`{name}`: BatchNorm {path!r} has {mod.num_features} features; its input "
                             f"group has {size_in}.")
        for t in ("weight", "bias", "running_mean", "running_var"):
            if getattr(mod, t, None) is not None:
                axes[prefix + t] = [(0, gin, 1)]
        return gin
    if isinstance(mod, _PASS_MODULES):
        return gin
    raise ValueError(f"`{name}`: module {path!r} ({type(mod).__name__}) is not supported by weight matching; "
                     "supported: Linear, Conv1d/2d/3d, BatchNorm, elementwise activations, pooling, Flatten.")


def _node_group(node, gm, group_of, groups, axes, name):
    """The channel group of ``node``'s output (None for a value that is not an activation)."""
    tensors = [group_of[a] for a in node.args if isinstance(a, fx.Node) and group_of.get(a) is not None]
    if node.op == "placeholder":
        return groups.new(None, "input", fixed=True)
    if node.op == "call_module":
        return _layer(gm.get_submodule(node.target), node.target, tensors[0], groups, axes, name)
    if node.op == "call_function" and node.target in _ADD or node.op == "call_method" and node.target == "add":
        out = tensors[0]
        for g in tensors[1:]:
            out = groups.union(out, g, f"the sum {node.name!r}")
        return out
    if (node.op == "call_function" and node.target in _PASS_FUNCTIONS
            or node.op == "call_method" and node.target in _PASS_METHODS):
        return tensors[0] if tensors else None
    if node.op == "call_function" and node.target is getattr or node.op == "call_method" and node.target == "size":
        return None
    if node.op == "output":
        for g in tensors:
            groups.fixed[groups.find(g)] = True
        return None
    raise ValueError(f"`{name}`: operation {node.op} {getattr(node.target, '__name__', node.target)!r} "
                     f"({node.name}) is not supported by weight matching.")


def permutation_spec(model: nn.Module, name: str = "model") -> PermutationSpec:
    """The permutation groups of ``model`` (see the module docstring); ``ValueError`` naming
    ``name`` for an operation the tracer cannot follow or a model without hidden units."""
    if isinstance(model, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        raise ValueError(f"`{name}` has no hidden units to permute (a single {type(model).__name__} layer).")
    gm = _trace(model, name)
    groups, axes, group_of = _Groups(), {}, {}
    for node in gm.graph.nodes:
        group_of[node] = _node_group(node, gm, group_of, groups, axes, name)
    roots = {}
    for g in range(len(groups.parent)):
        r = groups.find(g)
        if not groups.fixed[r] and groups.size[r]:
            roots.setdefault(r, groups.name[r])
    if not roots:
        raise ValueError(f"`{name}` has no hidden units to permute (every layer's output is the model's output).")
    named = {k: [(ax, roots[groups.find(g)], rep) for ax, g, rep in v if groups.find(g) in roots]
             for k, v in axes.items()}
    missing = [k for k, _ in model.named_parameters() if k not in axes]
    if missing:
        raise ValueError(f"`{name}`: parameter {missing[0]!r} is not used by a layer weight matching follows.")
    return PermutationSpec(sizes={v: groups.size[r] for r, v in roots.items()},
                           axes={k: v for k, v in named.items() if v})
