"""The store: keeps a request on disk and never runs the model (it imports neither the
evaluator nor a strategy; run planning lives in :mod:`fastscape._units`).

- ``fingerprint.py``: what a file vouches for, the whole schema (``SETTINGS_KEYS``,
  ``request_settings``) and how settings are compared;
- ``hasher.py``: the code hasher behind the loss, metric and model fingerprints;
- ``sidecar.py``: ``SurfaceStore``, the file and its ``.parts`` sidecar: lock,
  manifest, units, atomic writes, the finished file.
"""

from .fingerprint import (
    FORMAT,
    SETTINGS_KEYS,
    callable_name,
    check_settings,
    data_fingerprint,
    grid_fingerprint,
    request_settings,
    unfingerprintable_message,
)
from .hasher import VOUCH_ATTR, callable_fingerprint
from .sidecar import SurfaceStore, unit_len

__all__ = ["FORMAT", "SETTINGS_KEYS", "callable_name", "check_settings", "data_fingerprint", "grid_fingerprint",
           "request_settings", "unfingerprintable_message", "VOUCH_ATTR", "callable_fingerprint", "SurfaceStore",
           "unit_len"]
