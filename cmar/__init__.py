"""cmar: Cross-Modal Attention Refinement for visual storytelling.

Given k consecutive frames of a story (image + caption), predict the caption of frame k+1.
"""

__version__ = "0.1.0"
