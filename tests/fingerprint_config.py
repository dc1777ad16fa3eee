"""A user's configuration module: a loss in tests/test_fingerprint.py reads ``SMOOTH`` from it."""

SMOOTH = 0.0
