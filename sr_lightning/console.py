"""What a training run prints: the package's own progress lines, none of Lightning's notices
that do not apply to this project, and a closing summary that says where everything went.

The filters are narrow (one message each) and installed by the command-line entry point only,
so a program that imports the package keeps its own warning and logging settings.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

NOT_APPLICABLE_WARNINGS = (
    # The batch streams cut one fixed sequence of batches that the loader's workers share out
    # (data/dataset.py), so their length is exact whatever num_workers is.
    r"Your `IterableDataset` has `__len__` defined",
    # Metrics are logged by optimizer step across epoch boundaries: short epochs lose no log point.
    r"The number of training batches \(\d+\) is smaller than the logging interval",
    # Raised inside Lightning's own pytree helper on current torch; nothing a user can change.
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
)
ADVERT_PREFIX = "💡 Tip:"  # Lightning's suggestion to install a cloud logger


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(ADVERT_PREFIX)


class _ConsoleFormat(logging.Formatter):
    """Progress lines as they are; warnings and errors say what they are."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {text}"


def configure_console() -> None:
    """Show the package's INFO lines on stderr and silence the notices that do not apply."""
    package = logging.getLogger("sr_lightning")
    if not package.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_ConsoleFormat("%(message)s"))
        package.addHandler(handler)
        package.setLevel(logging.INFO)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropAdverts())
    for message in NOT_APPLICABLE_WARNINGS:
        warnings.filterwarnings("ignore", message=message)


def _shown(path: str | Path) -> str:
    """A path relative to the working directory when it lies below it (shorter to copy)."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _why_it_stopped(trainer: L.Trainer) -> str:
    if trainer.interrupted:
        return "interrupted"
    stopper = trainer.early_stopping_callback
    if isinstance(stopper, EarlyStopping) and stopper.stopped_epoch:
        return f"early stopping: {stopper.monitor} did not improve for {stopper.patience} validations"
    if trainer.max_steps != -1 and trainer.global_step >= trainer.max_steps:
        return f"max_steps={trainer.max_steps} reached"
    return "max_epochs reached" if trainer.max_epochs else "done"


def _best(trainer: L.Trainer) -> str:
    callback = trainer.checkpoint_callback
    if not isinstance(callback, ModelCheckpoint) or not callback.best_model_path:
        last = getattr(callback, "last_model_path", "")
        return f"none recorded (no validation ran){'; last: ' + _shown(last) if last else ''}"
    score = callback.best_model_score
    value = f" ({callback.monitor} {float(score):.4f})" if score is not None and callback.monitor else ""
    return _shown(callback.best_model_path) + value


def fit_summary(trainer: L.Trainer) -> str:
    """Where the run is, its best checkpoint, and the two commands to run next (on global rank zero).

    The logger's own ``log_dir``, not ``trainer.log_dir``: that one is a collective every rank must join.
    """
    run = _shown(getattr(trainer.logger, "log_dir", None) or trainer.default_root_dir)
    return os.linesep.join([
        f"training finished at step {trainer.global_step} ({_why_it_stopped(trainer)})",
        f"  run directory:   {run}  (config.yaml, tokenizer.json, TensorBoard events, checkpoints/)",
        f"  best checkpoint: {_best(trainer)}",
        "next:",
        f"  tensorboard --logdir {run}",
        f"  python evaluate.py --checkpoint {run}",
    ])
