"""What a surface file vouches for: the whole schema, in one place.

A file (or its sidecar of finished units) is resumed or returned only for a
request whose :func:`request_settings` equal the ones it recorded, key by key
over :data:`SETTINGS_KEYS`:

- ``format``: the layout of the file and of this schema (:data:`FORMAT`);
- ``model_fingerprint``: the model's parameters and buffers (names, shapes,
  dtypes, bytes); ``origin_fingerprint``, ``directions_fingerprint``: likewise;
- ``grid_shape``, ``grid_fingerprint``: the exact float64 coordinates;
- ``n_samples``, ``data_fingerprint``: the data's content (:func:`data_fingerprint`);
- ``loss``, ``loss_fingerprint``, ``metrics``, ``metrics_fingerprint``: the
  functions' names and what they compute (:mod:`fastscape._store.hasher`);
- ``dtype``: the evaluation dtype.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math

import numpy as np
import torch

from .._core.params import fingerprint
from .hasher import VOUCH_ATTR, callable_fingerprint

__all__ = ["FORMAT", "SETTINGS_KEYS", "request_settings", "grid_fingerprint", "data_fingerprint",
           "callable_name", "check_settings", "unfingerprintable_message", "manifest_digest", "values_digest"]

FORMAT = 2
#: the settings a file must share with a request to be resumed or reused.
SETTINGS_KEYS = ("format", "model_fingerprint", "origin_fingerprint", "directions_fingerprint",
                 "grid_shape", "grid_fingerprint", "n_samples", "data_fingerprint", "loss", "loss_fingerprint",
                 "metrics", "metrics_fingerprint", "dtype")
#: at most this many unit files per surface; units hold whole chunks.
#: data up to this many bytes is hashed whole; larger data through a strided sample of its samples.
DATA_HASH_BYTES = 256 << 20


def grid_fingerprint(axes) -> str:
    """SHA-1 over the exact float64 coordinates of every axis."""
    h = hashlib.sha1()
    for a in axes:
        a = np.ascontiguousarray(a, dtype=np.float64)
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()




def data_fingerprint(batches) -> str:
    """SHA-256 of the data's content, independent of how it is cut into batches.

    Every input tensor and the targets are hashed as one stream each: the
    per-sample shape and dtype (floating data as float64, so that the evaluation
    dtype, a setting of its own, does not count twice), the sample count, and the
    bytes of every sample
    (data of at most :data:`DATA_HASH_BYTES`), or of every ``stride``-th sample
    (larger data: about :data:`DATA_HASH_BYTES` of them, the stride counted over
    the whole data so that the batching does not matter).
    """
    if getattr(batches, "names", None) is not None:  # several datasets: one fingerprint each, by name
        top = hashlib.sha256(b"datasets")
        for name, part in batches.parts.items():
            top.update(f"{name}={data_fingerprint(part)};".encode())
        return top.hexdigest()
    pairs = list(batches.tensors())
    n = batches.n_samples

    def parts(x, y):
        return [*(x if isinstance(x, (tuple, list)) else (x,)), y]

    total = sum(t.numel() * t.element_size() for x, y in pairs for t in parts(x, y))
    stride = max(1, math.ceil(total / DATA_HASH_BYTES))
    streams = None
    start = 0
    for x, y in pairs:
        ts = parts(x, y)
        if streams is None:
            streams = [hashlib.sha256() for _ in ts]
            for h, t in zip(streams, ts):
                kind = "float" if t.is_floating_point() else str(t.dtype)
                h.update(f"{tuple(t.shape[1:])} {kind} {n}/{stride}".encode())
        if len(ts) != len(streams):
            raise ValueError("`data` batches must all hold the same number of input tensors.")
        m = ts[-1].shape[0]
        first = (-start) % stride  # the first sample of this batch on the global stride
        for h, t in zip(streams, ts):
            rows = t[first::stride] if stride > 1 else t
            if rows.is_floating_point():  # float32 data cast to float64 is exact: the dtype is a separate setting
                rows = rows.double()
            if rows.numel():
                h.update(rows.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
        start += m
    top = hashlib.sha256(f"samples {n}".encode())
    for h in streams or ():
        top.update(h.digest())
    return top.hexdigest()



def request_settings(model, given, batches, orig, buffers, directions, axes, dt, *, loss_fn, metrics,
                     hash_inputs: bool) -> tuple[dict, dict]:
    """What a file must vouch for (every key of :data:`SETTINGS_KEYS`), and why it cannot.

    ``given`` is the data as given, ``batches`` as cut to ``batch_size``;
    ``orig`` the origin over the directions' names and ``buffers`` the origin
    model's buffers (or None). ``why`` maps an argument (``"loss_fn"``,
    ``"metrics['acc']"``) that cannot be fingerprinted to the reason. Hashing the
    data and the functions is only needed for a file (``hash_inputs``).
    """
    why = {}
    loss_fp = data_fp = None
    metrics_fp = {}
    if hash_inputs:
        data_fp = data_fingerprint(given)
        loss_fp, reason = callable_fingerprint(loss_fn, name="loss_fn")
        if reason:
            why["loss_fn"] = reason
        for name, fn in metrics.items():
            metrics_fp[name], reason = callable_fingerprint(fn, name=f"metrics[{name!r}]")
            if reason:
                why[f"metrics[{name!r}]"] = reason
    settings = {
        "format": FORMAT,
        "model_fingerprint": fingerprint({**{n: p for n, p in model.named_parameters()},
                                          **{n: b for n, b in model.named_buffers()}}),
        "origin_fingerprint": fingerprint({**orig, **(buffers or {})}),
        "directions_fingerprint": fingerprint({f"{i}/{n}": t for i, d in enumerate(directions) for n, t in d.items()}),
        "grid_shape": [len(a) for a in axes],
        "grid_fingerprint": grid_fingerprint(axes),
        # several datasets: samples per name, so that another split is another request
        "n_samples": batches.n_samples if batches.names is None else dict(zip(batches.names, batches.counts)),
        "data_fingerprint": data_fp,
        "loss": callable_name(loss_fn),
        "loss_fingerprint": loss_fp,
        "metrics": list(metrics),
        "metrics_fingerprint": metrics_fp,
        "dtype": str(dt).replace("torch.", ""),
    }
    return settings, why


def callable_name(fn) -> str:
    """``module.qualname`` of a function (or of a callable object's class)."""
    if isinstance(fn, functools.partial):
        return f"partial({callable_name(fn.func)})"
    target = fn if hasattr(fn, "__qualname__") else type(fn)
    return f"{getattr(target, '__module__', '?')}.{target.__qualname__}"


def unfingerprintable_message(name: str, why: str, where: str | None = None) -> str:
    """How to vouch for a callable fastscape cannot fingerprint."""
    head = (f"`{name}` cannot be fingerprinted ({why}), so fastscape cannot tell whether "
            + (f"{where} was computed with the same function; it is not reused. " if where else
               "a later run uses the same function: this run's file will not be resumed or reused. "))
    return (head + f"Delete the file (and its .parts folder) to recompute, or vouch for the callable: give it "
            f"an attribute `{VOUCH_ATTR}`, a string you change whenever what it computes changes.")


def _show(key: str, value) -> str:
    if value is None:
        return "none"
    if key.endswith("fingerprint") and isinstance(value, str):
        return value[:10]
    if key == "metrics_fingerprint" and isinstance(value, dict):
        return json.dumps({k: v[:10] if isinstance(v, str) else v for k, v in value.items()})
    return json.dumps(value)


def check_settings(wanted: dict, found: dict, *, where: str, remedy: str, why: dict | None = None) -> None:
    """Raise ``ValueError`` naming every setting where ``found`` differs from ``wanted``.

    A loss or metric that cannot be fingerprinted (``None`` in ``wanted``) is
    never taken as equal: ``why`` maps its argument name (``"loss_fn"``,
    ``"metrics['acc']"``) to the reason, which the message gives.
    """
    for arg, reason in (why or {}).items():
        raise ValueError(unfingerprintable_message(arg, reason, where))
    diff = [k for k in SETTINGS_KEYS if json.dumps(found.get(k), sort_keys=True) != json.dumps(wanted.get(k), sort_keys=True)]
    if diff:
        parts = ", ".join(f"{k} ({_show(k, found.get(k))} in the file, {_show(k, wanted.get(k))} now)" for k in diff)
        raise ValueError(f"{where} was computed with different settings: {parts}. {remedy}")


def manifest_digest(manifest: dict) -> str:
    """SHA-256 of a manifest (its settings and plan): the name of a run's units."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def values_digest(arr: np.ndarray) -> str:
    a = np.ascontiguousarray(arr, dtype=np.float64)
    return hashlib.sha256(f"{a.shape}".encode() + a.tobytes()).hexdigest()

