"""The ``fastscape`` command line: ``demo``, ``surface`` and ``plot``.

``fastscape surface`` computes a surface of a user's own model into a
crash-safe HDF5 file (running it again resumes; under ``torchrun`` the grid is
sharded over the ranks); ``fastscape plot`` draws the figures of such a file.
Bad arguments get one line on stderr and exit status 2, never a traceback (set
``FASTSCAPE_TRACEBACK=1`` to see one).

``--model``, ``--data`` and ``--loss`` name ``package.module:attribute``, imported
with the working directory first on the import path (as ``python -m`` has it).
Everything else goes through the public API (``import fastscape``,
``fastscape.plot``): the command line is one more caller of it.

The room, one line per file:

- ``inputs.py``: options parsed and checked; model, data, checkpoints and directions loaded.
- ``commands.py``: one function per subcommand, calling the public API.
- ``main.py``: the argparse wiring and the entry point :func:`main`.
"""

from .inputs import LOSSES as LOSSES
from .main import main as main

__all__ = ["main", "LOSSES"]
