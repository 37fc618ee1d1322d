"""Benchmarks, run side by side on the same machine: ``cmar bench TARGET`` prints a table and
writes its JSON.

- :mod:`~cmar.research.bench.runner`: the targets (data, loader, train, decode, metrics, ...);
- :mod:`~cmar.research.bench.tables`: the tables they print;
- :mod:`~cmar.research.bench.ram`: peak RAM of a workload in a child process;
- :mod:`~cmar.research.bench.pretrained`: what a preset with pretrained parts would cost.
"""

from cmar.research.bench.runner import TARGETS, bench_all, run_target
from cmar.research.bench.tables import render

__all__ = ["TARGETS", "bench_all", "render", "run_target"]
