"""Training progress a person can read, in a terminal and in a pipe alike.

Keras' own progress bar (verbose=1) does not draw when the output is not a terminal, and
verbose=2 prints only at the end of each epoch, which on a long epoch means no sign of life for
many minutes. `TrainingProgress` replaces both: in a terminal a tqdm bar, otherwise a line at
least every `interval` seconds (UNET3P_PROGRESS_INTERVAL, default 30) on the console logger
(set up by common/logs.py), each with step/total, images/s, ETA, loss and the last
validation Dice.
Validation inside fit gets a line too when it runs longer than the interval.
"""
from __future__ import annotations

import logging
import math
import sys
import time
from typing import Optional

import keras

from schema.contract import CONSOLE_LOGGER, progress_interval


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class TrainingProgress(keras.callbacks.Callback):
    """Progress of model.fit (use with verbose=0). `batch_size` is the global batch, for
    images/s; `monitor` the validation Dice log key (val_dice or val_mask_dice)."""

    def __init__(self, epochs: int, steps_per_epoch: int, batch_size: int,
                 monitor: str = "val_dice", validation_steps: Optional[int] = None,
                 interval: Optional[float] = None, terminal: Optional[bool] = None):
        super().__init__()
        self.epochs = int(epochs)
        self.steps_per_epoch = int(steps_per_epoch)
        self.batch_size = int(batch_size)
        self.monitor = monitor
        self.validation_steps = validation_steps
        self.interval = interval if interval is not None else progress_interval()
        self.terminal = sys.stdout.isatty() if terminal is None else terminal
        self._log = logging.getLogger(CONSOLE_LOGGER)
        self._bar = None

    # --- state ---
    def on_train_begin(self, logs=None):
        self._start = self._last_line = time.time()
        self._steps_done = 0          # in this process (a resumed run starts past 0)
        self._first_step_end = None
        self._epoch = 0
        self._step = 0
        self._loss = float("nan")
        self._val_dice = None
        self._val_epoch = None
        if self.terminal:
            from tqdm.auto import tqdm
            self._bar = tqdm(total=self.epochs * self.steps_per_epoch, unit="step",
                             desc="Training", file=sys.stdout, dynamic_ncols=True)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._step = epoch * self.steps_per_epoch
        if self._bar is not None and self._bar.n != self._step:
            self._bar.n = self._step   # resumed from a checkpoint past epoch 0
            self._bar.refresh()

    def on_train_batch_end(self, batch, logs=None):
        self._steps_done += 1
        if self._steps_done == 1:
            self._first_step_end = time.time()   # the rate leaves out the first step's tracing
        self._step = self._epoch * self.steps_per_epoch + batch + 1
        if logs and "loss" in logs:
            self._loss = float(logs["loss"])
        if self._bar is not None:
            self._bar.update(self._step - self._bar.n)
            self._bar.set_postfix_str(self._fields(short=True), refresh=False)
        elif time.time() - self._last_line >= self.interval:
            self._line("Training")

    def on_test_begin(self, logs=None):
        self._val_start = time.time()

    def on_test_batch_end(self, batch, logs=None):
        # Only a validation longer than the interval gets its own lines.
        if self._bar is None and time.time() - self._last_line >= self.interval:
            total = f"/{self.validation_steps}" if self.validation_steps else ""
            self._log.info("Training: validating after epoch %d/%d, batch %d%s, %s so far",
                           self._epoch + 1, self.epochs, batch + 1, total,
                           _duration(time.time() - self._val_start))
            self._last_line = time.time()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if "loss" in logs:
            self._loss = float(logs["loss"])
        if self.monitor in logs:
            self._val_dice, self._val_epoch = float(logs[self.monitor]), epoch + 1
        if self._bar is not None:
            self._bar.set_postfix_str(self._fields(short=True))
        else:
            self._line(f"Epoch {epoch + 1}/{self.epochs} done")

    def on_train_end(self, logs=None):
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    # --- output ---
    def _fields(self, short: bool = False) -> str:
        rate = 0.0   # steps/s after the first step, validation time included
        if self._first_step_end is not None and self._steps_done > 1:
            rate = (self._steps_done - 1) / max(time.time() - self._first_step_end, 1e-9)
        eta = (self.epochs * self.steps_per_epoch - self._step) / rate if rate else math.inf
        speed = f"{rate * self.batch_size:.1f}" if rate else "?"
        dice = ("n/a" if self._val_dice is None
                else f"{self._val_dice:.4f} (epoch {self._val_epoch})")
        if short:   # tqdm shows step/total, rate and ETA itself
            return f"{speed} img/s, loss {self._loss:.4f}, val Dice {dice}"
        return (f"step {self._step}/{self.epochs * self.steps_per_epoch}, "
                f"{speed} images/s, ETA {_duration(eta)}, "
                f"loss {self._loss:.4f}, val Dice {dice}")

    def _line(self, what: str) -> None:
        self._log.info("%s: %s", what, self._fields())
        self._last_line = time.time()
