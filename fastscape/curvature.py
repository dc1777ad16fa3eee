"""Curvature of the loss: Hessian products, eigenpairs, trace, spectral density, curvature
over a plane and sharpness measures.

- :func:`hessian_vector_product`, :func:`hessian_eigenpairs` (either end of the spectrum),
  :func:`hessian_trace`: the Hessian at one point.
- :func:`hessian_density`: its eigenvalue density (stochastic Lanczos quadrature), a
  :class:`SpectralDensity`.
- :func:`curvature_surface`: ``lambda_max``, ``lambda_min``, ``ratio`` and ``trace`` at every
  point of a grid, a :class:`fastscape.Surface`.
- :func:`epsilon_sharpness`, :func:`adaptive_sharpness`, :func:`mc_sharpness`.

Draw them with :func:`fastscape.plot.spectral_density`, :func:`fastscape.plot.curvature_map`
(or any surface view), :func:`fastscape.plot.sharpness_generalization` and
:func:`fastscape.plot.edge_of_stability`.
"""

from ._curvature.density import SpectralDensity as SpectralDensity
from ._curvature.density import hessian_density as hessian_density
from ._curvature.plane import curvature_surface as curvature_surface
from ._curvature.sharpness import adaptive_sharpness as adaptive_sharpness
from ._curvature.sharpness import epsilon_sharpness as epsilon_sharpness
from ._curvature.sharpness import mc_sharpness as mc_sharpness
from ._hessian import ConvergenceWarning as ConvergenceWarning
from ._hessian import hessian_eigenpairs as hessian_eigenpairs
from ._hessian import hessian_trace as hessian_trace
from ._hessian import hessian_vector_product as hessian_vector_product

__all__ = [
    "adaptive_sharpness",
    "ConvergenceWarning",
    "curvature_surface",
    "epsilon_sharpness",
    "hessian_density",
    "hessian_eigenpairs",
    "hessian_trace",
    "hessian_vector_product",
    "mc_sharpness",
    "SpectralDensity",
]
