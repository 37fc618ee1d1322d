"""Training: :func:`train_step` (one optimiser step), the :class:`Trainer` that runs it over
the epochs, and :func:`train`, which trains or resumes a run folder.

- :mod:`~cmar.train.trainer`: the loop a student reads;
- :mod:`~cmar.train.checkpoints`: best.pt, last.pt and exact resume;
- :mod:`~cmar.train.tally`: the epoch's loss sums, NaN checks and window counts;
- :mod:`~cmar.train.optim`: AdamW's parameter groups and the warm-up + cosine schedule;
- :mod:`~cmar.train.launch`: the Accelerator (device, precision, process group);
- :mod:`~cmar.train.guards`: a graceful stop on a signal, a memory check before epoch 1.
"""

from cmar.train.checkpoints import seed_everything
from cmar.train.optim import warmup_cosine
from cmar.train.trainer import TERMS, Trainer, loss_terms, train, train_step

__all__ = ["TERMS", "Trainer", "loss_terms", "seed_everything", "train", "train_step",
           "warmup_cosine"]
