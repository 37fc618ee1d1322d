"""cmar: Cross-Modal Attention Refinement for visual storytelling.

Given k consecutive frames of a story (image + caption), predict the caption of frame k+1.
The package follows the data flow, one room per stage:

- :mod:`cmar.settings` and :mod:`cmar.config`: the settings (``Config()`` is the default
  preset), presets, overrides and their checks;
- :mod:`cmar.data`: sources -> validated stories -> windows -> padded batches;
- :mod:`cmar.models`: image and text encoders, fusions (concat / cross / cmar), the story
  encoder, decoders with shared decoding, and the StoryModel that composes them;
- :mod:`cmar.train`: ``train_step``, the Trainer, checkpoints and exact resume;
- :mod:`cmar.evaluation`: free-running generation scored at corpus level beside the floors;
- :mod:`cmar.research`: benchmarks, the ablation study and probes (no core module imports
  them); :mod:`cmar.cli` is the ``cmar`` command.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``cmar.provenance(run_dir)``: the reference system of a run (version, commit, config,
    data and checkpoint hashes), imported on first use so ``import cmar`` stays light."""
    if name == "provenance":
        from cmar.experiment.reference import provenance

        return provenance
    raise AttributeError(f"module 'cmar' has no attribute {name!r}")
