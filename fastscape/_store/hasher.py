"""The code hasher: a SHA-256 of what a callable (a loss, a metric, a model's code) computes.

A function is hashed through its code (bytecode, constants, names), its defaults,
the values it closes over, the globals it reads and the attributes its code reads
from the user's modules; a class through its methods and plain class attributes;
an object through its class and its attributes. Functions and classes of the
libraries in :data:`LIBRARIES` are named, not hashed. What cannot be hashed (an
open file, a lock) raises :class:`Unhashable`, and the caller announces it.
"""

from __future__ import annotations

import dis
import enum
import functools
import hashlib
import logging
import types

import numpy as np
import torch

__all__ = ["Unhashable", "digest", "callable_fingerprint", "model_fingerprint", "VOUCH_ATTR", "LIBRARIES"]

#: how a user vouches for a callable fastscape cannot fingerprint.
VOUCH_ATTR = "fastscape_fingerprint"

class Unhashable(Exception):
    """What made a callable impossible to fingerprint."""


#: modules whose functions and classes are named, not hashed: what they compute is fixed by
#: the library's version (recorded in a surface's meta as ``torch_version``).
LIBRARIES = frozenset({"torch", "numpy", "math", "builtins", "operator", "_operator", "functools", "fastscape",
                        "typing", "collections", "abc", "_abc", "einops"})


def _library(module) -> bool:
    return isinstance(module, str) and module.split(".")[0] in LIBRARIES


#: entries of a class's namespace that are Python's bookkeeping, not the user's settings
_CLASS_INTERNALS = frozenset({"_abc_impl", "_is_protocol", "_is_runtime_protocol"})


def _names(co: types.CodeType) -> set[str]:
    """Every attribute or global name the code (and the code nested in it) reads."""
    names = set(co.co_names)
    for c in co.co_consts:
        if isinstance(c, types.CodeType):
            names |= _names(c)
    return names


def _global_loads(co: types.CodeType) -> set[str]:
    names = {i.argval for i in dis.get_instructions(co) if i.opname in ("LOAD_GLOBAL", "LOAD_NAME")}
    for c in co.co_consts:
        if isinstance(c, types.CodeType):
            names |= _global_loads(c)
    return names


class _Hasher:
    """A SHA-256 of a value's behaviour-relevant content, stable across processes."""

    def __init__(self):
        self.h = hashlib.sha256()
        self.seen: dict[int, int] = {}

    def tag(self, text: str) -> None:
        self.h.update(text.encode() + b"\0")

    def once(self, obj) -> bool:
        """False (and a back-reference) when ``obj`` was hashed already: cycles end here."""
        if id(obj) in self.seen:
            self.tag(f"seen {self.seen[id(obj)]}")
            return False
        self.seen[id(obj)] = len(self.seen)
        return True

    def value(self, v, where: str, depth: int = 0) -> None:
        if depth > 40:
            raise Unhashable(f"{where} nests too deeply")
        if v is None or v is Ellipsis or isinstance(v, (bool, int, str, bytes, complex)):
            self.tag(f"{type(v).__name__} {v!r}")
        elif isinstance(v, float):
            self.tag(f"float {v.hex()}")
        elif isinstance(v, (tuple, list)):
            self.tag(f"{type(v).__name__} {len(v)}")
            for i, x in enumerate(v):
                self.value(x, f"{where}[{i}]", depth + 1)
        elif isinstance(v, (set, frozenset)):
            # iteration order follows the hash seed: sort the members' own digests
            self.tag(f"set {sorted(digest(x, where, depth + 1) for x in v)}")
        elif isinstance(v, dict):
            items = sorted((digest(k, where, depth + 1), k, x) for k, x in v.items()) if v else []
            self.tag(f"dict {len(v)}")
            for _, k, x in items:
                self.value(k, f"{where} (a key)", depth + 1)
                self.value(x, f"{where}[{k!r}]", depth + 1)
        elif isinstance(v, torch.Tensor):
            t = v.detach().cpu().contiguous()
            self.tag(f"tensor {tuple(t.shape)} {t.dtype}")
            if t.numel():
                self.h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(v, np.ndarray) and v.dtype != object:
            a = np.ascontiguousarray(v)
            self.tag(f"ndarray {a.shape} {a.dtype.str}")
            self.h.update(a.tobytes())
        elif isinstance(v, np.generic):
            self.value(v.item(), where, depth + 1)
        elif isinstance(v, (torch.dtype, torch.device, torch.Size, torch.layout, torch.memory_format)):
            self.tag(f"{type(v).__name__} {v}")
        elif isinstance(v, enum.Enum):
            self.tag(f"enum {type(v).__module__}.{type(v).__qualname__}.{v.name}")
        elif isinstance(v, types.ModuleType):
            self.tag(f"module {v.__name__}")
        elif isinstance(v, type):
            self.cls(v, where, depth)
        elif isinstance(v, types.CodeType):
            self.code(v, where, depth)
        elif callable(v):
            self.callable(v, where, depth)
        elif isinstance(v, logging.Logger):  # where messages go, not what is computed
            self.tag(f"logger {v.name}")
        elif hasattr(v, "__dict__") and not _library(type(v).__module__):  # a user's object: a config
            self.obj(v, where, depth)
        else:
            raise Unhashable(f"{where} is a {type(v).__module__}.{type(v).__qualname__}")

    def code(self, co: types.CodeType, where: str, depth: int) -> None:
        self.tag(f"code {co.co_argcount} {co.co_kwonlyargcount} {co.co_flags}")
        self.h.update(co.co_code)
        self.tag(" ".join(co.co_names) + "|" + " ".join(co.co_varnames) + "|" + " ".join(co.co_freevars))
        self.tag(f"consts {len(co.co_consts)}")
        for c in co.co_consts:
            self.value(c, f"{where} (a constant)", depth + 1)

    def function(self, fn: types.FunctionType, where: str, depth: int) -> None:
        if not self.once(fn):
            return
        self.code(fn.__code__, where, depth)
        self.value(fn.__defaults__, f"{where} (its defaults)", depth + 1)
        self.value(fn.__kwdefaults__, f"{where} (its keyword defaults)", depth + 1)
        for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or ()):
            try:
                content = cell.cell_contents
            except ValueError:  # not yet assigned
                self.tag(f"cell {name} empty")
                continue
            self.tag(f"cell {name}")
            self.value(content, f"{where} (the variable {name!r} it closes over)", depth + 1)
        glb = fn.__globals__
        for name in sorted(_global_loads(fn.__code__)):
            if name in glb:  # a builtin otherwise
                self.tag(f"global {name}")
                self.value(glb[name], f"{where} (the global {name!r} it reads)", depth + 1)
                if isinstance(glb[name], types.ModuleType):
                    self.module_attributes(glb[name], _names(fn.__code__), f"{where} (the module {name!r})", depth)

    def module_attributes(self, module: types.ModuleType, names: set[str], where: str, depth: int) -> None:
        """The attributes of a user's module that code naming ``names`` may read (``config.SMOOTH``)."""
        if _library(module.__name__) or depth > 40:
            return
        found = vars(module)
        for attr in sorted(n for n in names if n in found):
            self.tag(f"module attribute {attr}")
            value = found[attr]
            self.value(value, f"{where}.{attr}", depth + 1)
            if isinstance(value, types.ModuleType):  # config.sub.X
                self.module_attributes(value, names, f"{where}.{attr}", depth + 1)

    def cls(self, cls: type, where: str, depth: int) -> None:
        self.tag(f"class {cls.__module__}.{cls.__qualname__}")
        if _library(cls.__module__) or not self.once(cls):
            return
        for klass in cls.__mro__:  # the user's classes: every method they define
            if _library(klass.__module__) or klass is object:
                continue
            for attr in sorted(vars(klass)):
                member = vars(klass)[attr]
                if isinstance(member, (staticmethod, classmethod)):
                    member = member.__func__
                elif isinstance(member, property):
                    member = member.fget
                if isinstance(member, types.FunctionType):
                    self.tag(f"method {klass.__qualname__}.{attr}")
                    self.function(member, f"{where}.{attr}", depth + 1)
                elif member is not None and not (attr.startswith("__") or attr in _CLASS_INTERNALS
                          or isinstance(member, (property, types.MemberDescriptorType,
                                                 types.GetSetDescriptorType))):
                    self.tag(f"class attribute {klass.__qualname__}.{attr}")  # Cfg.smoothing
                    self.value(member, f"{where}.{attr}", depth + 1)

    def callable(self, fn, where: str, depth: int) -> None:
        if isinstance(fn, functools.partial):
            self.tag("partial")
            self.value(fn.func, f"{where}.func", depth + 1)
            self.value(fn.args, f"{where} (its positional arguments)", depth + 1)
            self.value(fn.keywords, f"{where} (its keyword arguments)", depth + 1)
        elif isinstance(fn, types.MethodType):
            self.tag("method")
            self.value(fn.__func__, where, depth + 1)
            self.value(fn.__self__, f"{where} (its object)", depth + 1)
        elif isinstance(fn, types.FunctionType):
            if _library(fn.__module__):
                self.tag(f"named {fn.__module__}.{fn.__qualname__}")
            else:
                self.function(fn, where, depth)
        elif isinstance(fn, (types.BuiltinFunctionType, types.BuiltinMethodType)) or (
                hasattr(fn, "__qualname__") and _library(getattr(fn, "__module__", None))):
            self.tag(f"named {getattr(fn, '__module__', None)}.{getattr(fn, '__qualname__', type(fn).__name__)}")
        else:  # a callable object: its class's code and its state
            self.obj(fn, where, depth)

    def obj(self, obj, where: str, depth: int) -> None:
        """An object through its class (code and class attributes) and its own attributes."""
        self.cls(type(obj), where, depth)
        if not self.once(obj):
            return
        if isinstance(obj, torch.nn.Module):
            for k, t in obj.state_dict().items():
                self.tag(f"state {k}")
                self.value(t, f"{where}.{k}", depth + 1)
            state = plain_attributes(obj)
        elif hasattr(obj, "__dict__"):
            state = dict(vars(obj))
        else:
            slots = [n for c in type(obj).__mro__ for n in getattr(c, "__slots__", ())]
            if not slots:
                raise Unhashable(f"{where} is a {type(obj).__qualname__} whose state cannot be read")
            state = {n: getattr(obj, n) for n in slots if hasattr(obj, n)}
        state.pop(VOUCH_ATTR, None)
        self.attributes(state, where, depth)

    def attributes(self, state: dict, where: str, depth: int) -> None:
        self.tag(f"attributes {len(state)}")
        for k in sorted(state, key=str):
            self.tag(f"attribute {k}")
            self.value(state[k], f"{where}.{k}", depth + 1)

    def module_tree(self, model: torch.nn.Module, where: str) -> None:
        """Every submodule: its name, class (the user's classes through their code), ``extra_repr()``
        and plain attributes (parameters and buffers are fingerprinted apart, by value)."""
        for name, m in model.named_modules():
            at = f"{where}.{name}" if name else where
            self.tag(f"submodule {name}")
            self.cls(type(m), at, 1)
            try:
                text = m.extra_repr()
            except Exception as err:  # the user's extra_repr
                raise Unhashable(f"{at}.extra_repr() raised {type(err).__name__}") from None
            self.tag(f"extra_repr {text}")
            state = plain_attributes(m)
            state.pop(VOUCH_ATTR, None)
            self.attributes(state, at, 1)


def plain_attributes(module: torch.nn.Module) -> dict:
    """A module's own attributes: not its parameters, buffers, submodules, hooks or training flag."""
    return {k: v for k, v in vars(module).items() if not k.startswith("_") and k != "training"}


def digest(v, where: str, depth: int = 0) -> str:
    h = _Hasher()
    h.value(v, where, depth)
    return h.h.hexdigest()


def callable_fingerprint(fn, *, name: str) -> tuple[str | None, str | None]:
    """``(fingerprint, why_not)`` of what a loss or metric computes.

    A function is hashed through its code (bytecode, constants, names), its
    defaults, the values it closes over and the globals it reads; a
    ``functools.partial`` through its function and arguments; a callable
    object through its class's methods and its attributes (an ``nn.Module``
    loss through its state too). Functions of torch, numpy and fastscape are
    named, not hashed. The result does not depend on the process (hash seeds,
    addresses), so a run resumes across processes.

    When something it depends on cannot be hashed (an open file, a lock, an
    object without readable state), the fingerprint is ``None`` and
    ``why_not`` says what. A callable with a non-empty string attribute
    ``fastscape_fingerprint`` is vouched for by its owner: that string is the
    fingerprint.
    """
    vouched = getattr(fn, VOUCH_ATTR, None)
    if isinstance(vouched, str) and vouched:
        return "vouched:" + vouched, None
    try:
        return digest(fn, f"`{name}`"), None
    except (Unhashable, RecursionError) as err:
        return None, str(err) if isinstance(err, Unhashable) else f"`{name}` nests too deeply"



def model_fingerprint(model: torch.nn.Module) -> tuple[str | None, str | None]:
    """``(fingerprint, why_not)`` of a model's code: its module tree (each submodule's name,
    class, ``extra_repr()`` and plain attributes) and the code of the user's classes in it
    (``forward`` and every other method, with what they read), hashed as
    :func:`callable_fingerprint` hashes a loss. Parameters and buffers are not part of it.
    A model with a non-empty string attribute ``fastscape_fingerprint`` is vouched for.
    """
    vouched = getattr(model, VOUCH_ATTR, None)
    if isinstance(vouched, str) and vouched:
        return "vouched:" + vouched, None
    h = _Hasher()
    try:
        h.module_tree(model, "`model`")
    except (Unhashable, RecursionError) as err:
        return None, str(err) if isinstance(err, Unhashable) else "`model` nests too deeply"
    return h.h.hexdigest(), None
