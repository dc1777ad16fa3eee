"""fastscape: fast loss landscapes of PyTorch models.

Every grid point of a chunk is evaluated at once (``torch.func.vmap`` over
``functional_call``), so fine grids over weight space are routine.
"""

from ._data import Batches as Batches
from ._directions import Directions as Directions
from ._directions import axis_directions as axis_directions
from ._directions import axis_origin as axis_origin
from ._directions import normalize as normalize
from ._directions import random_directions as random_directions
from ._distributed import init_distributed as init_distributed
from ._evaluator import FallbackWarning as FallbackWarning
from ._metrics import accuracy as accuracy
from ._plotting import plot_contour as plot_contour
from ._plotting import plot_surface3d as plot_surface3d
from ._plotting import save_figure as save_figure
from ._surface import Surface as Surface
from ._surface import load_surface as load_surface
from ._surface import loss_surface as loss_surface
from ._trajectory import Trajectory as Trajectory
from ._trajectory import train as train
from ._vtk import save_vtp as save_vtp

__version__ = "0.1.0"

__all__ = [
    "Batches",
    "Directions",
    "FallbackWarning",
    "Surface",
    "Trajectory",
    "__version__",
    "accuracy",
    "axis_directions",
    "axis_origin",
    "init_distributed",
    "load_surface",
    "loss_surface",
    "normalize",
    "plot_contour",
    "plot_surface3d",
    "random_directions",
    "save_figure",
    "save_vtp",
    "train",
]
