"""Injected timings for tests of ``strategy="auto"``: a fake clock that a strategy's ``run``
advances by a chosen number of seconds per point, so a timed choice never depends on the
machine's load. Nothing here measures time."""

from __future__ import annotations

import itertools


class FakeClock:
    """Seconds that pass only when a strategy runs: ``costs[name]`` per point, a number or a
    list of numbers used in turn (a disturbed probe), cycling. Install it with :meth:`install`."""

    def __init__(self, costs: dict):
        self.now = 0.0
        self.costs = {k: itertools.cycle(v if isinstance(v, (list, tuple)) else [v]) for k, v in costs.items()}

    def __call__(self, device) -> float:
        return self.now

    def install(self, monkeypatch, load: float = 1.0):
        """Patch auto's clock and load, and every registered strategy's ``run`` to advance the clock."""
        from fastscape._core import auto
        from fastscape._core.strategies import STRATEGIES

        monkeypatch.setattr(auto, "clock", self)
        monkeypatch.setattr(auto, "load", lambda: load)
        clock = self
        for cls in {c for c in STRATEGIES.values()}:
            real = cls.__dict__.get("run") or cls.run

            def run(self, start, stop, *args, _real=real, _cls=cls):
                if type(self) is _cls and self.name in clock.costs:
                    clock.now += next(clock.costs[self.name]) * (stop - start)
                return _real(self, start, stop, *args)

            monkeypatch.setattr(cls, "run", run)
        auto.AUTO_CHOICES.clear()
        return self
