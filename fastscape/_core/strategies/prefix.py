"""The ``"prefix"`` strategy: the part of the forward that no moving tensor reaches, computed once.

When the directions move only part of a model (its head, its last block, a LoRA adapter in the
last layers), everything the forward computes before that part is the same at every grid point.
This strategy finds that part from the model's graph, evaluates it once per data batch, and maps
only the rest over the chunk's points with ``torch.func.vmap`` over ``functional_call``.

The graph comes from ``torch.fx`` symbolic tracing (:class:`_Tracer`): modules without children
are leaves; a module whose own forward cannot be traced (Python control flow on tensor values,
as in ``nn.TransformerEncoderLayer``'s fast-path checks) is kept whole as a leaf instead of
failing the trace, so a residual net or a stack of transformer blocks splits block by block. A
node *moves* when it reads a moving tensor (a ``get_attr`` of it, or a leaf module that owns it,
tied weights included by identity) or takes a moving node as input. The frozen nodes that a moving
node or the output uses are the boundary: the prefix graph computes them from the model's inputs,
the suffix graph computes the output from them. A model whose graph cannot be captured (the root
forward itself does not trace), or in which every operation moves, raises :class:`NotApplicable`;
the split is checked on a probe forward against the model's own output before it is used.
"""

from __future__ import annotations

import inspect
import math

import torch
from torch import fx, nn
from torch.func import functional_call, vmap

from ..data import head_samples
from ..guards import values_agree
from ..plan import CPU_TARGET_BYTES, CUDA_TARGET_BYTES
from .base import NotApplicable, PerBatch, PointLoss, Strategy, math_attention

__all__ = ["PrefixStrategy", "rename", "split_graph"]

#: bytes of one intermediate of the moving part that a chunk aims at: the plan's targets, applied to
#: the moving part's activations instead of the whole model's
TARGET_BYTES = {"cpu": CPU_TARGET_BYTES, "cuda": CUDA_TARGET_BYTES}
#: samples of the probe batch on which the split is checked against the model's own output
CHECK_SAMPLES = 8
#: bytes of the chunk's stacked moving tensors, at most (CPU: a 21x21 fc-only resnet18 plane,
#: 441 x 20 KB, is one chunk; layer4 alone, 33 MB a point, runs 2 points a chunk; measured in
#: benchmarks/README.md, "Parameter subsets and the frozen prefix")
PARAM_BYTES = {"cpu": 64 << 20, "cuda": 1 << 30}


class _Tracer(fx.Tracer):
    """Modules without children are leaves; a module whose forward fails to trace becomes one."""

    def __init__(self):
        super().__init__()
        self.opaque: set[str] = set()

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname in self.opaque or not any(True for _ in m.children())

    def call_module(self, m, forward, args, kwargs):
        path = self.path_of_module(m)
        if self.is_leaf_module(m, path):
            return super().call_module(m, forward, args, kwargs)
        mark = next(reversed(self.graph.nodes), None)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:  # noqa: BLE001 - any failure inside: keep the module whole
            nodes = list(self.graph.nodes)
            start = nodes.index(mark) + 1 if mark is not None else 0
            for node in reversed(nodes[start:]):
                self.graph.erase_node(node)
            self.opaque.add(path)
            return super().call_module(m, forward, args, kwargs)


def _trace(model: nn.Module, n_args: int) -> fx.GraphModule:
    """The model's graph, with forward parameters after the first ``n_args`` fixed at their defaults."""
    params = list(inspect.signature(model.forward).parameters.values())
    concrete = {p.name: p.default for p in params[n_args:]
                if p.default is not inspect.Parameter.empty and p.kind is not p.VAR_KEYWORD}
    tracer = _Tracer()
    try:
        graph = tracer.trace(model, concrete_args=concrete or None)
    except Exception as err:  # noqa: BLE001 - fx raises many kinds; all mean "no graph"
        first = str(err).splitlines()[0] if str(err) else ""
        raise NotApplicable(f"torch.fx cannot capture the model's graph ({type(err).__name__}: {first[:120]})") from None
    return fx.GraphModule(model, graph)


def _tensors_of(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, nn.Module):
        return [*obj.parameters(), *obj.buffers()]
    return []


def split_graph(gm: fx.GraphModule, moving: set[int]) -> tuple[fx.GraphModule, fx.GraphModule, int]:
    """``(prefix, suffix, frozen_ops)``: the prefix maps the model's inputs to the boundary values
    (a tuple), the suffix maps those to the model's output; ``moving`` holds the ``id`` of every
    moving tensor; ``frozen_ops`` counts the operations the prefix computes."""
    moves: dict[fx.Node, bool] = {}
    nodes = list(gm.graph.nodes)
    for node in nodes:
        if node.op in ("get_attr", "call_module"):
            target = gm.get_submodule(node.target) if node.op == "call_module" else _attr(gm, node.target)
            own = any(id(t) in moving for t in _tensors_of(target))
        else:
            own = False
        moves[node] = own or any(moves[a] for a in node.all_input_nodes)
    output = next(n for n in nodes if n.op == "output")
    users_moving = lambda n: any(moves[u] or u.op == "output" for u in n.users)  # noqa: E731
    boundary = [n for n in nodes if n.op not in ("get_attr", "output") and not moves[n] and users_moving(n)]
    frozen_ops = sum(1 for n in nodes if not moves[n] and n.op.startswith("call_"))

    pre, env = fx.Graph(), {}
    for node in nodes:
        if node.op != "output" and not moves[node]:
            env[node] = pre.node_copy(node, env.__getitem__)
    pre.output(tuple(env[n] for n in boundary))
    prefix = fx.GraphModule(gm, pre)
    prefix.graph.eliminate_dead_code()
    prefix.recompile()

    post, env = fx.Graph(), {}
    for i, node in enumerate(boundary):
        env[node] = post.placeholder(f"boundary_{i}")
    for node in nodes:
        if node.op == "output":
            post.output(fx.graph.map_arg(node.args[0], env.__getitem__))
        elif moves[node] or (node.op == "get_attr" and users_moving(node)):
            env[node] = post.node_copy(node, env.__getitem__)
    return prefix, fx.GraphModule(gm, post), frozen_ops


def _attr(gm: nn.Module, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _aliases(part: nn.Module, model: nn.Module) -> dict[str, list[str]]:
    """For every tensor name of ``model``, the first name the same tensor has in ``part`` (in a list):
    ``functional_call`` gives a tied tensor's value to its other names."""
    where: dict[int, list[str]] = {}
    for name, t in [*part.named_parameters(remove_duplicate=False), *part.named_buffers(remove_duplicate=False)]:
        where.setdefault(id(t), []).append(name)
    model_named = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    return {name: where[id(t)][:1] for name, t in model_named if id(t) in where}


def rename(values: dict, aliases: dict[str, list[str]]) -> dict:
    return {alias: v for k, v in values.items() for alias in aliases.get(k, ())}


class _Rewrap(nn.Module):
    """The suffix graph with its output rebuilt as the model's own output type: fx returns a
    Hugging Face ``ModelOutput`` (an ordered dict) as a plain dict, and a loss reads ``.logits``."""

    def __init__(self, graph: fx.GraphModule, kind: type):
        super().__init__()
        self.graph_module, self.kind = graph, kind

    def forward(self, *args):
        return self.kind(**self.graph_module(*args))


class PrefixStrategy(Strategy):
    """The frozen prefix once per data batch, the moving rest under vmap (see the module docstring)."""

    name = "prefix"
    #: the affine path's rank: a prefix of one layer is the affine path, a longer one saves more
    rank = 3

    def __init__(self, ctx):
        super().__init__(ctx)
        model = ctx.user_model  # traced as the user wrote it (BatchNorm folding makes opaque modules)
        moving_names = set(ctx.points.moving)
        named = dict([*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)])
        moving = {id(named[k]) for k in moving_names if k in named}
        if not moving:
            raise NotApplicable("no moving tensor belongs to the model")
        gm = _trace(model, len(ctx.args0))
        self.pre, self.post, frozen_ops = split_graph(gm, moving)
        if frozen_ops == 0:
            raise NotApplicable("every operation of the forward depends on a moving tensor: nothing to compute once")
        self.pre_alias, self.post_alias = _aliases(self.pre, model), _aliases(self.post, model)
        missing = [k for k in moving_names if k not in self.post_alias]
        if missing:
            raise NotApplicable(f"the moving tensors {missing[:3]} are not reached by the graph's moving part")
        self.pre_shared = rename(ctx.shared, self.pre_alias)
        self.post_shared = rename(ctx.shared, self.post_alias)
        self.point = PointLoss(self.post, ctx.loss_fn, ctx.metrics)
        self.fn = vmap(self.point, in_dims=(None, 0, None, None))
        self._boundaries = PerBatch()  # the boundary values of each data batch, kept across chunks
        self._moving_sample_bytes = self._check(model)
        if self.out_kind is not None:
            self.post = _Rewrap(self.post, self.out_kind)
            self.post_alias = _aliases(self.post, model)
            self.post_shared = rename(ctx.shared, self.post_alias)
            self.point = PointLoss(self.post, ctx.loss_fn, ctx.metrics)
            self.fn = vmap(self.point, in_dims=(None, 0, None, None))

    def _boundary(self, batch_index, args):
        """The boundary values of one data batch: computed on its first chunk, then reused."""
        return self._boundaries.get(batch_index, args[0] if args else None,
                                    lambda: tuple(functional_call(self.pre, self.pre_shared, args)))

    def _check(self, model) -> int:
        """Run the split once on a few of the probe's samples at the first point and compare with the
        model's own output; returns the largest intermediate of the moving part, in bytes per sample."""
        c = self.ctx
        # CHECK_SAMPLES of them: the split is per sample, and a full probe would cost resnet18 three forwards
        args = head_samples(c.args0, CHECK_SAMPLES)
        point = {k: v[0] for k, v in c.points.stack(0, 1).items()}
        largest = [0]

        class Measure(fx.Interpreter):
            def run_node(self, n):
                out = super().run_node(n)
                if isinstance(out, torch.Tensor) and n.op != "placeholder":
                    largest[0] = max(largest[0], out.numel() * out.element_size())
                return out

        try:
            with torch.no_grad(), math_attention():
                bound = tuple(functional_call(self.pre, self.pre_shared, args))
                got = functional_call(self.post, {**self.post_shared, **rename(point, self.post_alias)}, bound)
                Measure(self.post).run(*bound)  # the same shapes with the model's own tensors
                want = functional_call(model, {**c.shared, **point}, args)
        except Exception as err:  # noqa: BLE001 - a graph that does not run is not applicable
            raise NotApplicable(f"the split graph does not run ({type(err).__name__}: {str(err)[:100]})") from None
        if not _same(got, want):
            raise NotApplicable("the traced graph does not reproduce the model's output")
        # a Mapping output type that fx rebuilt as a plain dict is restored around the suffix
        self.out_kind = type(want) if isinstance(want, dict) and type(got) is dict and type(want) is not dict else None
        if self.out_kind is None and type(got) is not type(want):
            raise NotApplicable(f"the traced graph returns a {type(got).__name__}, the model a {type(want).__name__}")
        n = _samples(args)
        return max(1, math.ceil(largest[0] / max(1, n)))

    def best_chunk(self, plan: dict) -> int:
        """Chunks sized by the moving part's activations and stacked tensors, not the whole model's."""
        kind = "cuda" if plan.get("device_type") == "cuda" else "cpu"
        param_bytes = max(1, self.ctx.points.moving_numel() * _itemsize(self.ctx))
        per_point = self._moving_sample_bytes * max(1, plan["batch"])
        chunk = min(TARGET_BYTES[kind] // per_point, PARAM_BYTES[kind] // param_bytes,
                    plan["budget_bytes"] // (param_bytes + 2 * per_point))
        return int(max(1, min(chunk, self.ctx.job_points)))

    def run(self, start, stop, moving, batch_index, args, y):
        bound = self._boundary(batch_index, args)
        with math_attention():  # the fused attention kernels have no batching rule
            return self.fn(self.post_shared, rename(moving, self.post_alias), bound, y)


def _itemsize(ctx) -> int:
    t = next(iter(ctx.shared.values()), None)
    return t.element_size() if isinstance(t, torch.Tensor) and t.is_floating_point() else 4


def _samples(args) -> int:
    for a in args:
        if isinstance(a, torch.Tensor) and a.dim() > 0:
            return a.shape[0]
    return 1


def _same(a, b) -> bool:
    """Whether two outputs hold the same tensors (a Hugging Face ``ModelOutput`` is a pytree whose
    cache objects are not compared: they are recomputed by every call)."""
    from torch.utils._pytree import tree_leaves

    ta = [t for t in tree_leaves(a) if isinstance(t, torch.Tensor)]
    tb = [t for t in tree_leaves(b) if isinstance(t, torch.Tensor)]
    return bool(ta) and len(ta) == len(tb) and all(
        x.shape == y.shape and values_agree(x.double().flatten(), y.double().flatten(), rtol=1e-4)
        for x, y in zip(ta, tb))
