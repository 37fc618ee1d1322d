"""``cmar.metrics.caption_scores``, the name other code relies on; the scorers live in
:mod:`cmar.evaluation.metrics`."""

from cmar.evaluation.metrics import caption_scores, exact_match, simple_tokenize

__all__ = ["caption_scores", "exact_match", "simple_tokenize"]
