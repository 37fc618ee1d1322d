"""The bookkeeping of one training epoch, kept out of the loop a student reads.

The loss terms of each step stay on the device; every ``train.log_every`` steps (and at the
end of the epoch) they come to the host in one transfer, are checked for NaN and added up.
Windows are counted once each, even when several processes pad their last batch with
repeated windows to even out.
"""

from __future__ import annotations

import math

import torch


class EpochTally:
    """Sums of the loss ``terms`` over an epoch's steps and the windows seen, per process.

    ``add`` each step's losses, ``sync`` them to the host now and then, ``totals`` at the end
    (summed over the processes). ``state``/``from_state`` carry an epoch stopped part-way
    into its checkpoint and back.
    """

    def __init__(self, terms: tuple[str, ...], accelerator, steps_per_epoch: int):
        self.terms, self.accelerator, self.steps_per_epoch = terms, accelerator, steps_per_epoch
        self.sums = {term: 0.0 for term in terms}
        self.seen = 0  # windows of this process, except the last batch's
        self.seen_last = 0  # windows of the last batch over all processes, counted once
        self.pending: list[torch.Tensor] = []  # (terms,) per step since the last sync

    def add(self, losses: dict[str, torch.Tensor], batch) -> bool:
        """Keep one step's loss terms (on the device) and count its windows; True at the
        epoch's last batch."""
        self.pending.append(torch.stack([losses[term].detach() for term in self.terms]))
        accelerator = self.accelerator
        last = accelerator.gradient_state.end_of_dataloader
        if last and accelerator.num_processes > 1:
            # the last batch may repeat windows to even out the processes: count it once
            self.seen_last = int(accelerator.gather_for_metrics(
                torch.ones(len(batch), device=accelerator.device)).sum().item())
        else:
            self.seen += len(batch)
        return last

    def sync(self, epoch: int, step: int) -> float:
        """Bring the loss terms of the steps ``step - len(pending) + 1 .. step`` to the host
        (one transfer), stop on a NaN or infinite one naming its step, and add them up.
        Returns the last step's total loss."""
        rows = torch.stack(self.pending).double().cpu().tolist()  # (steps, terms)
        self.pending = []
        first = step - len(rows) + 1
        for offset, row in enumerate(rows):
            if not all(math.isfinite(value) for value in row):
                at = first + offset
                raise FloatingPointError(
                    f"loss is {row[-1]} at epoch {epoch}, step {at} (global step "
                    f"{(epoch - 1) * self.steps_per_epoch + at}); terms: "
                    + ", ".join(f"{k}={v:.4g}" for k, v in zip(self.terms, row, strict=True))
                    + ". Lower train.lr (or a loss weight: train.w_align, train.w_next, "
                    "model.w_ground, model.w_regions), or check the input data.")
            for term, value in zip(self.terms, row, strict=True):
                self.sums[term] += value
        return rows[-1][-1]

    def means(self, steps: int) -> tuple[dict[str, float], int]:
        """(the mean of each term per step over every process, the windows seen)."""
        totals = sum_over_processes(self.accelerator, [*self.sums.values(), steps, self.seen])
        means = {term: value / totals[-2]
                 for term, value in zip(self.terms, totals, strict=False)}
        return means, int(totals[-1]) + self.seen_last

    def state(self, gather) -> dict:
        """What an epoch stopped part-way keeps: every process's sums and windows seen."""
        return {"sums": gather(self.sums), "seen": gather(self.seen),
                "seen_last": self.seen_last}

    def restore(self, part: dict, this_process) -> None:
        """Take back what :meth:`state` kept (``this_process`` picks this process's entry)."""
        self.sums, self.seen = this_process(part["sums"]), this_process(part["seen"])
        self.seen_last = part.get("seen_last", 0)


def sum_over_processes(accelerator, values: list[float]) -> list[float]:
    """Each value summed over the processes (one collective; itself in one process)."""
    if accelerator.num_processes == 1:
        return [float(v) for v in values]
    tensor = torch.tensor(values, dtype=torch.float64, device=accelerator.device)
    return accelerator.reduce(tensor, reduction="sum").tolist()
