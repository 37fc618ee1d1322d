"""Evaluation: free-running generation over a whole split, scored at corpus level beside the
floors, and the alignment scores beside theirs.

- :mod:`~cmar.evaluation.metrics`: corpus-level caption scores (BLEU, CIDEr-D, ROUGE-L, METEOR);
- :mod:`~cmar.evaluation.floors`: the systems that learn nothing, scored on the same windows;
- :mod:`~cmar.evaluation.alignment`: retrieval, image-text alignment, context sensitivity;
- :mod:`~cmar.evaluation.grounding`: where CMAR's attention lands against the entity boxes;
- :mod:`~cmar.evaluation.slots`: ShapeStories captions parsed back into their slots;
- :mod:`~cmar.evaluation.report`: the tables printed and written to report.md;
- :mod:`~cmar.evaluation.run`: ``evaluate_run``, which writes metrics.json of a run folder.
"""

from cmar.evaluation.metrics import caption_scores, exact_match, simple_tokenize
from cmar.evaluation.run import evaluate_run, generate_captions, load_run

__all__ = ["caption_scores", "evaluate_run", "exact_match", "generate_captions", "load_run",
           "simple_tokenize"]
