"""The learning-rate schedule of Section 4.2 (transformers' get_linear_schedule_with_warmup), as plain arithmetic
so that reports can say where a run stopped in it without importing torch."""
from __future__ import annotations


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Multiplier of the peak learning rate after ``step`` scheduler steps: a linear rise from 0 over ``warmup``
    steps, then a linear decay to 0 at step ``total``; transformers' get_linear_schedule_with_warmup, which the
    paper names, step for step (so the first optimizer step has learning rate 0)."""
    if step < warmup:
        return step / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


def lr_left_after(epochs_run: int, epochs: int, warmup_ratio: float, steps_per_epoch: int) -> float:
    """The learning rate, as a fraction of its peak, when a run of an ``epochs``-epoch schedule stops after
    ``epochs_run`` epochs (0 when the schedule ran to its end)."""
    total = steps_per_epoch * epochs
    return lr_factor(steps_per_epoch * epochs_run, int(warmup_ratio * total), total)
