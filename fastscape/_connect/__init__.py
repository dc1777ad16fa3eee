"""Mode connectivity: curves between trained models, barriers on lines, permutation alignment.

One file per job: ``common`` (checked states; points as combinations of anchor states, one
evaluator call), ``barrier`` (Frankle et al. 2020), ``curves`` (Garipov et al. 2018),
``align`` (weight matching, Ainsworth et al. 2023). The public names are in
:mod:`fastscape.connect`.
"""
