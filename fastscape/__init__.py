"""fastscape: fast loss landscapes of PyTorch models.

Every grid point of a chunk is evaluated at once (``torch.func.vmap`` over
``functional_call``), so fine grids over weight space are routine.
"""

from importlib import metadata as _metadata

from ._directions import Directions as Directions
from ._directions import axis_directions as axis_directions
from ._directions import axis_origin as axis_origin
from ._directions import interpolation_directions as interpolation_directions
from ._directions import interpolation_plane as interpolation_plane
from ._directions import normalize as normalize
from ._directions import orthogonalize as orthogonalize
from ._directions import random_directions as random_directions
from ._distributed import init_distributed as init_distributed
from ._core.evaluator import FallbackWarning as FallbackWarning
from ._core.metrics import accuracy as accuracy
from ._pca import path_loss as path_loss
from ._pca import pca_directions as pca_directions
from ._pca import project as project
from ._compare import OptimizerComparison as OptimizerComparison
from ._compare import compare_optimizers as compare_optimizers
from ._landscape import loss_surface as loss_surface
from ._surface import Surface as Surface
from ._surface import load_surface as load_surface
from ._trajectory import Trajectory as Trajectory
from ._trajectory import record as record
from ._trajectory import train as train
from ._views import cross_sections as cross_sections
from ._views import hidden_activations as hidden_activations
from ._views import lr_steps as lr_steps
from ._views import snapshot_predictions as snapshot_predictions
from ._views import thresholded_prediction as thresholded_prediction
from ._vtk import save_vtp as save_vtp
from . import connect as connect
from . import curvature as curvature
from . import plot as plot

try:
    __version__ = _metadata.version("torch-fastscape")
except _metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "__version__",
    "accuracy",
    "axis_directions",
    "axis_origin",
    "compare_optimizers",
    "connect",
    "cross_sections",
    "curvature",
    "Directions",
    "FallbackWarning",
    "hidden_activations",
    "init_distributed",
    "interpolation_directions",
    "interpolation_plane",
    "load_surface",
    "loss_surface",
    "lr_steps",
    "normalize",
    "OptimizerComparison",
    "orthogonalize",
    "path_loss",
    "pca_directions",
    "plot",
    "project",
    "random_directions",
    "record",
    "snapshot_predictions",
    "save_vtp",
    "Surface",
    "thresholded_prediction",
    "train",
    "Trajectory",
]


# Names that left the top level (the public API is capped at 32 names): they still resolve, with a
# FutureWarning that says where they live now.
_MOVED = {
    "hessian_eigenpairs": ("fastscape.curvature.hessian_eigenpairs", "curvature"),
    "hessian_trace": ("fastscape.curvature.hessian_trace", "curvature"),
    "hessian_vector_product": ("fastscape.curvature.hessian_vector_product", "curvature"),
    "ConvergenceWarning": ("fastscape.curvature.ConvergenceWarning", "curvature"),
    "Batches": ("no public name: pass data as (x, y), a list of batches or a DataLoader", None),
    "Recorder": ("no public name: it is what fastscape.record returns", None),
}


def __getattr__(name: str):
    if name not in _MOVED:
        raise AttributeError(f"module 'fastscape' has no attribute {name!r}")
    import warnings

    where, module = _MOVED[name]
    warnings.warn(f"`fastscape.{name}` moved: {where}.", FutureWarning, stacklevel=2)
    if module == "curvature":
        return getattr(curvature, name)
    if name == "Batches":
        from ._core.data import Batches
        return Batches
    from ._trajectory import Recorder
    return Recorder
