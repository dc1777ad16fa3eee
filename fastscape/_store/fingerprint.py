"""What a surface file vouches for: the whole schema, in one place.

A file (or its sidecar of finished units) is resumed or returned only for a
request whose :func:`request_settings` equal the ones it recorded, key by key
over :data:`SETTINGS_KEYS`:

- ``format``: the layout of the file and of this schema (:data:`FORMAT`);
- ``model_fingerprint``: the model's parameters and buffers (names, shapes,
  dtypes, bytes); ``origin_fingerprint``, ``directions_fingerprint``: likewise;
- ``model_code_fingerprint``: the model's module tree and code
  (:func:`fastscape._store.hasher.model_fingerprint`);
- ``grid_shape``, ``grid_fingerprint``: the exact float64 coordinates;
- ``n_samples``, ``data_fingerprint``: the data's samples, in any order (:func:`data_fingerprint`);
- ``loss``, ``loss_fingerprint``, ``metrics``, ``metrics_fingerprint``: the
  functions' names and what they compute (:mod:`fastscape._store.hasher`);
- ``dtype``: the evaluation dtype.

What cannot be fingerprinted (a model, loss or metric holding a lock or an open
file; data that changes each time it is read) is announced when the run starts,
and its file is never resumed or reused (``request_settings``'s ``why``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from .._core.params import fingerprint
from .hasher import VOUCH_ATTR, Unhashable, callable_fingerprint, digest, model_fingerprint

__all__ = ["FORMAT", "SETTINGS_KEYS", "request_settings", "grid_fingerprint", "data_fingerprint",
           "callable_name", "check_settings", "differing", "unfingerprintable_message", "manifest_digest", "values_digest"]

#: 3: a whole-file digest in the HDF5 user block; the model's code; an order-free data fingerprint
FORMAT = 3
#: the settings a file must share with a request to be resumed or reused.
SETTINGS_KEYS = ("format", "model_fingerprint", "model_code_fingerprint", "origin_fingerprint", "directions_fingerprint",
                 "grid_shape", "grid_fingerprint", "n_samples", "data_fingerprint", "loss", "loss_fingerprint",
                 "metrics", "metrics_fingerprint", "dtype")


def grid_fingerprint(axes) -> str:
    """SHA-1 over the exact float64 coordinates of every axis."""
    h = hashlib.sha1()
    for a in axes:
        a = np.ascontiguousarray(a, dtype=np.float64)
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()




def data_fingerprint(batches) -> str:
    """SHA-256 of the data's samples, independent of their order and of how they are cut into batches.

    Each sample (its input tensors and its target together; floating values as
    float64, so that the evaluation dtype, a setting of its own, does not count
    twice) gets a 128-bit key: its bytes as 64-bit words, each mixed with its
    position (splitmix64's finaliser), summed, and summed again with odd weights.
    The keys are sorted, then hashed with the per-sample shapes and kinds and the
    sample count. The same samples in any order (a shuffled ``DataLoader``) give
    the same fingerprint; any changed value, a sample's input paired with another
    target, or a sample more or less changes it (a changed sample goes unseen with
    a chance of about 2**-128). Every byte of the data is read.

    The mean loss of the same samples in another order differs only by float32
    rounding (each batch's mean and the sum over batches add other numbers), so
    a file resumed with another order mixes units that differ by that rounding.
    """
    if getattr(batches, "names", None) is not None:  # several datasets: one fingerprint each, by name
        top = hashlib.sha256(b"datasets")
        for name, part in batches.parts.items():
            top.update(f"{name}={data_fingerprint(part)};".encode())
        return top.hexdigest()
    head, keys = None, []
    for x, y in batches.tensors():
        ts = [*(x if isinstance(x, (tuple, list)) else (x,)), y]
        kinds = [f"{tuple(t.shape[1:])} {'float' if t.is_floating_point() else t.dtype}" for t in ts]
        if head is None:
            head = kinds
        elif len(kinds) != len(head):
            raise ValueError("`data` batches must all hold the same number of input tensors.")
        n = ts[-1].shape[0]
        row = max(1, sum(8 * t[:1].numel() for t in ts))
        step = max(1, _HASH_BYTES // row)
        keys += [_sample_keys([t[lo:lo + step] for t in ts]) for lo in range(0, n, step)]
    table = np.concatenate(keys) if keys else np.zeros((0, 2), np.uint64)
    table = table[np.lexsort((table[:, 1], table[:, 0]))]
    top = hashlib.sha256(f"samples {batches.n_samples} {head}".encode())
    top.update(np.ascontiguousarray(table).tobytes())
    return top.hexdigest()


#: the data is keyed this many bytes (as float64) at a time: bounds the temporary memory
_HASH_BYTES = 32 << 20
_GOLDEN, _M1, _M2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, elementwise on uint64 (a bijection that scatters every bit)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def _words(t: torch.Tensor) -> np.ndarray:
    """``(n, w)`` uint64: each sample's bytes (floating values as float64), zero-padded to whole words."""
    t = t.detach().cpu()
    t = t.double() if t.is_floating_point() else t.to(torch.uint8) if t.dtype == torch.bool else t
    b = t.contiguous().reshape(t.shape[0], -1).view(torch.uint8).numpy()
    if b.shape[1] % 8:
        b = np.pad(b, ((0, 0), (0, -b.shape[1] % 8)))
    return np.ascontiguousarray(b).view(np.uint64)


def _sample_keys(ts: list) -> np.ndarray:
    """``(n, 2)`` uint64: the key of each sample of the tensors ``ts`` (inputs and target)."""
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps modulo 2**64, as meant
        words = np.concatenate([_words(t) for t in ts], axis=1)
        pos = np.arange(words.shape[1], dtype=np.uint64)
        mixed = _mix(words ^ _mix(pos * _GOLDEN))
        first = mixed.sum(axis=1, dtype=np.uint64)
        second = (mixed * (_mix(pos + _GOLDEN) | np.uint64(1))).sum(axis=1, dtype=np.uint64)
    return np.stack([first, second], axis=1)


def unstable_data(data) -> str | None:
    """Why ``data`` gives other values each time it is read (a random transform), or None.

    The first samples of a map-style ``Dataset`` (a ``DataLoader``'s own) are
    read twice and compared; the random number generators are put back after.
    """
    if isinstance(data, Mapping):
        for name, part in data.items():
            why = unstable_data(part)
            if why:
                return f"its dataset {name!r}: {why}"
        return None
    from torch.utils.data import DataLoader, Dataset, IterableDataset

    ds = data.dataset if isinstance(data, DataLoader) else data
    if not isinstance(ds, Dataset) or isinstance(ds, IterableDataset) or not hasattr(ds, "__len__"):
        return None
    state, np_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            for i in range(min(len(ds), 4)):
                if digest(ds[i], "a sample") != digest(ds[i], "a sample"):
                    return f"sample {i} of its dataset differs between two reads: a random transform or augmentation?"
    except Unhashable:
        return None
    finally:
        random.setstate(state)
        np.random.set_state(np_state)
    return None


def request_settings(model, given, batches, orig, buffers, directions, axes, dt, *, loss_fn, metrics,
                     hash_inputs: bool, data=None) -> tuple[dict, dict]:
    """What a file must vouch for (every key of :data:`SETTINGS_KEYS`), and why it cannot.

    ``given`` is the data as given, ``batches`` as cut to ``batch_size``;
    ``orig`` the origin over the directions' names and ``buffers`` the origin
    model's buffers (or None); ``data`` the data as the user gave it (read twice
    to see a random transform). ``why`` maps an argument (``"model"``,
    ``"data"``, ``"loss_fn"``, ``"metrics['acc']"``) that cannot be fingerprinted
    to the reason. Hashing the data, the model's code and the functions is only
    needed for a file (``hash_inputs``).
    """
    why = {}
    loss_fp = data_fp = code_fp = None
    metrics_fp = {}
    if hash_inputs:
        code_fp, reason = model_fingerprint(model)
        if reason:
            why["model"] = reason
        reason = unstable_data(data)
        if reason:
            why["data"] = reason
        data_fp = data_fingerprint(given)
        loss_fp, reason = callable_fingerprint(loss_fn, name="loss_fn")
        if reason:
            why["loss_fn"] = reason
        for name, fn in metrics.items():
            metrics_fp[name], reason = callable_fingerprint(fn, name=f"metrics[{name!r}]")
            if reason:
                why[f"metrics[{name!r}]"] = reason
    # the three tensor fingerprints hash the model's bytes about four times over (45 MB each for
    # resnet18): hashlib releases the GIL on large buffers, so they run side by side
    tensors = ({**dict(model.named_parameters()), **dict(model.named_buffers())}, {**orig, **(buffers or {})},
               {f"{i}/{n}": t for i, d in enumerate(directions) for n, t in d.items()})
    with ThreadPoolExecutor(max_workers=len(tensors)) as pool:
        model_fp, origin_fp, directions_fp = pool.map(fingerprint, tensors)
    settings = {
        "format": FORMAT,
        "model_fingerprint": model_fp,
        "model_code_fingerprint": code_fp,
        "origin_fingerprint": origin_fp,
        "directions_fingerprint": directions_fp,
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
    """What a run cannot vouch for (``name``: ``"model"``, ``"data"``, ``"loss_fn"``, ...), and the way out."""
    if name == "data":
        head = (f"`data` gives other values each time it is read ({why}), so fastscape cannot tell whether "
                + (f"{where} was computed with the same data; it is not reused. " if where else
                   "a later run reads the same data: this run's file will not be resumed or reused. "))
        return head + ("Delete the file (and its .parts folder) to recompute, or evaluate with deterministic "
                       "transforms (the evaluation transform, without random augmentation).")
    head = (f"`{name}` cannot be fingerprinted ({why}), so fastscape cannot tell whether "
            + (f"{where} was computed with the same {'model' if name == 'model' else 'function'}; it is not "
               "reused. " if where else
               f"a later run uses the same {'model' if name == 'model' else 'function'}: this run's file will "
               "not be resumed or reused. "))
    return (head + f"Delete the file (and its .parts folder) to recompute, or vouch for it: give it "
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
    diff = differing(wanted, found)
    if diff:
        parts = ", ".join(f"{k} ({_show(k, found.get(k))} in the file, {_show(k, wanted.get(k))} now)" for k in diff)
        raise ValueError(f"{where} was computed with different settings: {parts}. {remedy}")


def differing(wanted: dict, found: dict) -> list[str]:
    """The keys of :data:`SETTINGS_KEYS` whose values differ between two settings dicts."""
    return [k for k in SETTINGS_KEYS
            if json.dumps(found.get(k), sort_keys=True) != json.dumps(wanted.get(k), sort_keys=True)]


def manifest_digest(manifest: dict) -> str:
    """SHA-256 of a manifest (its settings and plan): the name of a run's units."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def values_digest(arr: np.ndarray) -> str:
    a = np.ascontiguousarray(arr, dtype=np.float64)
    return hashlib.sha256(f"{a.shape}".encode() + a.tobytes()).hexdigest()

