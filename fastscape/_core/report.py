"""What the evaluator tells its caller: :class:`EvalReport` (the plan, the strategy, the
time), :class:`FallbackWarning`, and the warnings of a chunk passed on (:func:`batching_warnings`)
or turned into the per-point fallback (:func:`fall_back`)."""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field

from .memory import is_out_of_memory
from .strategies import Context, LoopStrategy, Strategy

__all__ = ["EvalReport", "FallbackWarning", "batching_warnings", "fall_back"]


class FallbackWarning(UserWarning):
    """The model could not be vectorised with vmap; points are evaluated one by one."""



@dataclass
class EvalReport:
    """What the evaluator did: the plan and the time it took."""

    strategy: str
    chunk_size: int
    batch_size: int
    n_points: int
    n_samples: int
    device: str
    dtype: str
    seconds: float = 0.0
    fallback: bool = False
    oom_backoffs: int = 0
    notes: list[str] = field(default_factory=list)
    memory_plan: dict = field(default_factory=dict)
    #: seconds per point over all the data batches, warm (the strategy's per-batch tables built):
    #: the second chunk's time, or for a single chunk what strategy="auto"'s probe measured; 0
    #: when nothing was timed
    point_seconds: float = 0.0

    @property
    def points_per_second(self) -> float:
        return self.n_points / self.seconds if self.seconds > 0 else float("inf")


@contextlib.contextmanager
def batching_warnings(report: EvalReport):
    """Warnings raised while a strategy runs a chunk, passed on, except PyTorch's "performance
    drop ... batching rule" warning: vmap is correct but loops over points inside for an operation
    without a batching rule, which becomes one FallbackWarning and a note in ``report``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        msg = str(w.message)
        if "performance drop" in msg and "batching rule" in msg:
            if not report.fallback and not any("slow batching" in n for n in report.notes):
                report.notes.append(f"slow batching: {msg.split('.')[0]}")
                warnings.warn(f"vmap has no batching rule for an operation of this model "
                              f"({msg.split('.')[0].split('for ')[-1]}); PyTorch evaluates it "
                              "point by point inside vmap, which is slower.", FallbackWarning, stacklevel=4)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def fall_back(err: RuntimeError, runner: Strategy, strategy: str, ctx: Context,
               report: EvalReport) -> Strategy:
    """The per-point loop, after vectorised ``runner`` failed with ``err`` (not out of memory)
    under ``strategy="auto"``: vmap met an operation without a batching rule (``nn.LSTM``,
    ``nn.GRU``), and the loop gives the same numbers. Warns once (FallbackWarning) and notes it.
    A named strategy raises ``ValueError`` saying what to use instead; an error of the loop
    itself, or out of memory, is the real one and propagates."""
    if is_out_of_memory(err) or isinstance(runner, LoopStrategy):
        raise err
    first = str(err).splitlines()[0] if str(err) else type(err).__name__
    if strategy != "auto":
        # the named strategy was checked against the model, but vmap meets an operation
        # without a batching rule only now
        raise ValueError(f"`strategy={strategy!r}` cannot evaluate this model: {first}. Use strategy='auto' "
                         "(it falls back to the per-point loop) or strategy='loop'.") from err
    warnings.warn(f"the model could not be vectorised with torch.func.vmap ({first}); falling back to "
                  "evaluating points one by one, which is slower.", FallbackWarning, stacklevel=3)
    report.fallback = True
    report.notes.append(f"vmap fallback: {first}")
    loop = LoopStrategy(ctx)
    loop.chunk = runner.chunk  # the chunk loop goes on at the chunk it ran at
    return loop
