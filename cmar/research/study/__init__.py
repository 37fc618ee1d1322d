"""The ablation study, ``cmar study``: fusion x decoder x decoder memory x seed (x mode).

- :mod:`~cmar.research.study.grid`: the grids, and training and evaluating every cell;
- :mod:`~cmar.research.study.table`: the columns, seed means and paired differences;
- :mod:`~cmar.research.study.report`: ``study.md`` and ``study.png``.
"""

from cmar.research.study.grid import GRIDS, Grid, run_study

__all__ = ["GRIDS", "Grid", "run_study"]
