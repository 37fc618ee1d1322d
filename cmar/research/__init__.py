"""Research instruments: code that measures a model or the code, beside the core it measures.

- :mod:`~cmar.research.bench`: ``cmar bench``, speed and memory side by side on one machine;
- :mod:`~cmar.research.study`: ``cmar study``, the grid of fusions x decoders x seeds;
- :mod:`~cmar.research.probes`: ``cmar probe``, what a representation holds.

They import the core (``cmar.data``, ``cmar.models``, ``cmar.train``, ``cmar.evaluation``);
no core module imports them. The command line mounts them as sub-commands.
"""
