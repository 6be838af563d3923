"""The LightningCLI behind ``train.py`` (fit / validate / test)."""

from __future__ import annotations

from lightning.pytorch.cli import LightningCLI

from .data.datamodule import OneStepDataModule
from .module import OneStepLM


def main(args: list[str] | None = None) -> LightningCLI:
    return LightningCLI(
        OneStepLM,
        OneStepDataModule,
        save_config_kwargs={"overwrite": True},
        args=args,
    )
