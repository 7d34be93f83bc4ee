"""The training clocks: each method's own seconds of training, read the same way on
CPUs and GPUs (a GPU's queued work is waited for before each reading), and when a
logged clock first saw an accuracy.

    clock = Clock(device)
    with clock:
        ...one training step...
    clock.seconds      # the sum of every `with clock:` so far

Several methods trained in one loop keep one Clock each, log it as a column
(sec/<method>) and tell the Run which column is whose (`run.clock_of`), so each
curve, time to target and closing line is on the method's own clock.
"""
import time

import torch


def synchronize(device):
    """Wait for queued GPU work so the clock reads real elapsed time."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class Clock:
    """One method's own training clock: the seconds spent inside `with clock:`.

    Several methods trained in one loop each keep one, so each curve can be
    drawn against the time its own steps took (synchronised on GPUs).
    """

    def __init__(self, device):
        self.device, self.seconds = device, 0.0

    def __enter__(self):
        synchronize(self.device)
        self._began = time.perf_counter()
        return self

    def __exit__(self, *exc):
        synchronize(self.device)
        self.seconds += time.perf_counter() - self._began
        return False


def first_time_at(rows, accuracy_column, clock_column, target):
    """The clock reading of the first row whose accuracy reaches target, else None."""
    for row in rows:
        value = row.get(accuracy_column)
        if value not in (None, "") and float(value) >= target:
            return float(row[clock_column])
    return None
