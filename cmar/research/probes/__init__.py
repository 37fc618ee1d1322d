"""Probes, ``cmar probe``: is a variable the captions need readable from a representation?

- :mod:`~cmar.research.probes.facing`: can a small CNN learn ShapeStories' facing cue from
  the frames at all (a probe trained from scratch, beside its floors);
- :mod:`~cmar.research.probes.region`: a trained run's region vectors under each character,
  read by a linear probe.
"""
