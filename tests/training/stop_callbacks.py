"""Callbacks the training tests use to stop a run midway (picklable, so data-parallel ranks can run them too)."""

from __future__ import annotations

from lightning.pytorch.callbacks import Callback


class Crash(Callback):
    """Raises at the start of the batch that would make optimizer step ``at_step + 1`` (on every rank)."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.at_step:
            raise RuntimeError("simulated crash")


class CtrlC(Callback):
    """Raises KeyboardInterrupt (what Python does on Ctrl-C) at the start of the batch after ``at_step``."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.at_step:
            raise KeyboardInterrupt
