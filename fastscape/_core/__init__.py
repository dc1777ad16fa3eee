"""The room that runs the model. It imports nothing outside itself; everything above calls
:func:`evaluate` (``evaluator.py``) and never a strategy directly. One job per file:

- ``evaluator.py``: ``evaluate``, plan -> select -> chunk loop, and nothing else
- ``plan.py``: the chunk and batch sizes of a call, from one forward's activations and the free memory
- ``auto.py``: ``strategy="auto"``: its memory of picks, its probe, its rule, its clock
- ``report.py``: what a call tells its caller (``EvalReport``, ``FallbackWarning``, warnings passed on)
- ``strategies/``: how one chunk is computed, one file per strategy, the registry in its ``__init__``
- ``recalibrate.py``: BatchNorm running statistics recomputed at every point of a chunk at once
- ``rewrite.py``: model surgery for the strategies (BatchNorm folding, shallow clones), never in place
- ``points.py``: sets of points in weight space and their device tables
- ``grid.py``: grid axes and meshes of coordinates
- ``params.py``: a model's parameters as dicts, checks of models and the model-state guard
- ``data.py``: the data as batches on the evaluation device
- ``memory.py``: free memory and the memory plan of a chunk
- ``metrics.py``: batch-mean metrics for ``metrics=`` and their checks
- ``objective.py``: the differentiable whole-data loss of a model's weights, and loss checks
- ``guards.py``: what a run tells the user when the model or data misbehave
"""
