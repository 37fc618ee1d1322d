"""Investigations in a notebook: import the reference system, expose your intervention,
compare fairly with controls.

- :func:`compare`: arms (name -> Config) x seeds, trained or read back, each scored as-is and
  under named controls; ``.table``, ``.paired(reference, metric)``, ``.drops(metric)``,
  ``.plot()``;
- :data:`CONTROLS`: evaluation-time interventions on a run's input (``images_blanked``,
  ``captions_blanked``, ``context_from_other_story``, ``one_frame_blanked``,
  ``order_reversed``); register your own;
- :func:`probe`: is a label decodable from a named representation (beside a shuffled-label
  control and the majority class)?
- :func:`intervene`: is it used? Swap one frame's representation for another story's and
  measure the change;
- :func:`provenance`: the reference system's version, commit and hashes, for a report.
"""

from cmar.experiment.compare import Comparison, compare
from cmar.experiment.controls import CONTROLS, SplitWindows
from cmar.experiment.intervene import intervene
from cmar.experiment.probe import TARGETS, probe
from cmar.experiment.reference import provenance
from cmar.experiment.representations import REPRESENTATIONS

__all__ = ["CONTROLS", "Comparison", "REPRESENTATIONS", "SplitWindows", "TARGETS", "compare",
           "intervene", "probe", "provenance"]
