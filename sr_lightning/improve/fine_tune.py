"""A fine-tune of a loop iteration: the previous model, the iteration's mix, the Lightning Trainer."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from ..data.datamodule import OneStepDataModule
from ..module import OneStepLM

if TYPE_CHECKING:
    from .loop import LoopSettings

VAL_BATCH = 32


def fine_tune(start: str, train_file: Path, val_files: list[str], run_dir: Path, settings: LoopSettings,
              accelerator: str = "auto") -> float:
    """Train ``start`` for ``settings.steps`` steps on ``train_file`` into ``run_dir``; the final val/loss.

    A fresh optimizer and schedule (warmup, then cosine to ``min_lr_ratio``) at the loop's learning
    rate; validation once, at the end, on ``val_batches`` batches of ``val_files``."""
    L.seed_everything(settings.seed, verbose=False)
    module = OneStepLM.load_from_checkpoint(start, map_location="cpu", learning_rate=settings.learning_rate,
                                            warmup_steps=settings.warmup_steps)
    data = OneStepDataModule(train_files=str(train_file), val_files=val_files, batch_size=settings.batch_size,
                             val_batch_size=VAL_BATCH, num_workers=0, seed=settings.seed, task=module.task)
    logger = TensorBoardLogger(run_dir.parent, name="", version=run_dir.name, default_hp_metric=False)
    checkpoints = ModelCheckpoint(monitor="val/loss", mode="min", save_last=True, save_top_k=1,
                                  filename="step={step}-val_loss={val/loss:.4f}", auto_insert_metric_name=False)
    trainer = L.Trainer(accelerator=accelerator, devices=1, precision=settings.precision, max_steps=settings.steps,
                        max_epochs=-1, val_check_interval=settings.steps, check_val_every_n_epoch=None,
                        limit_val_batches=settings.val_batches, num_sanity_val_steps=0, log_every_n_steps=10,
                        gradient_clip_val=1.0, logger=logger, callbacks=[checkpoints], enable_model_summary=False)
    trainer.fit(module, datamodule=data)
    return float(trainer.callback_metrics["val/loss"])
