"""Optional dependencies: import them on first use, or say which extra installs them.

The core (evaluating surfaces, directions, trajectories, curvature) needs torch,
numpy and tqdm only. Drawing needs the ``plot`` extra (plotly, matplotlib,
kaleido, Pillow); surface files need the ``files`` extra (h5py).
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["require"]

#: module -> the extra of torch-fastscape that installs it
EXTRAS = {"h5py": "files", "plotly": "plot", "matplotlib": "plot", "kaleido": "plot", "PIL": "plot"}


def require(module: str, *, what: str) -> ModuleType:
    """``import module``, or an ImportError naming the extra to install for ``what``."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        top = module.split(".")[0]
        extra = EXTRAS.get(top, "all")
        raise ImportError(
            f"{what} needs the `{top}` package, which is not installed; install it with "
            f"`pip install 'torch-fastscape[{extra}]'` (or `pip install {top if top != 'PIL' else 'pillow'}`)."
        ) from err
