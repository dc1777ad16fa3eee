"""Curvature beyond one point: spectral densities, curvature over a plane, sharpness.

- :mod:`.lanczos`: Lanczos runs advanced in lockstep, one batched product per step.
- :mod:`.density`: the Hessian eigenvalue density by stochastic Lanczos quadrature.
- :mod:`.hvp`: Hessian-vector products at many points at once, and the timed choice of how.
- :mod:`.plane`: the extreme eigenvalues and the trace at every point of a grid.
- :mod:`.sharpness`: epsilon-, adaptive and Monte-Carlo sharpness.

The Hessian of one point (products, top eigenpairs, trace) is :mod:`fastscape._hessian`.
"""
