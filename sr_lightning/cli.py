"""The LightningCLI behind ``train.py`` (fit / validate / test)."""

from __future__ import annotations

import sys
from pathlib import Path

from lightning.pytorch.cli import LightningCLI

from .data.datamodule import OneStepDataModule
from .data.stream import BadInputError
from .module import OneStepLM


def find_last_checkpoint(root: Path) -> tuple[Path, int | str]:
    """The newest ``version_*/checkpoints/last.ckpt`` under a logger's root, and its version."""
    candidates = sorted(root.glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise FileNotFoundError(f"--ckpt_path last: no run under {root} has checkpoints/last.ckpt to resume from")
    path = candidates[-1]
    version = path.parent.parent.name
    return path, int(version.removeprefix("version_")) if version.startswith("version_") else version


class TrainCLI(LightningCLI):
    """LightningCLI whose ``--ckpt_path last`` resumes the newest run and keeps logging into its directory.

    Plain Lightning looks for ``last.ckpt`` in the NEW run's (empty) directory and silently starts
    from scratch when the logger numbers versions itself.
    """

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        if config is None or config.get("ckpt_path") != "last":
            return
        trainer = config.trainer
        logger = trainer.get("logger")
        if not hasattr(logger, "init_args"):
            return  # no configurable logger: Lightning's own lookup applies
        args = logger.init_args
        root = Path(args.get("save_dir") or trainer.get("default_root_dir") or ".") / (args.get("name") or "")
        path, version = find_last_checkpoint(root)
        config.ckpt_path = str(path)
        args.version = version
        print(f"resuming from {path}", file=sys.stderr)


def main(args: list[str] | None = None) -> LightningCLI | None:
    try:
        return TrainCLI(OneStepLM, OneStepDataModule, save_config_kwargs={"overwrite": True}, args=args)
    except (FileNotFoundError, BadInputError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
