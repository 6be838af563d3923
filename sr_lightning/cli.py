"""The LightningCLI behind ``train.py`` (fit / validate / test)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from lightning.pytorch.cli import LightningCLI

from .data.datamodule import OneStepDataModule
from .data.stream import BadInputError
from .module import OneStepLM


SEEDED_MKL = "AVX2,STRICT"
"""MKL's Conditional Numerical Reproducibility mode (``MKL_CBWR``) for seeded runs: gemm kernels
chosen independently of memory alignment, for 15-30% of CPU matmul speed."""
DETERMINISTIC_MKL = "COMPATIBLE"
"""The mode for ``trainer.deterministic: true``: every MKL routine on one generic code path,
about 3x slower CPU matmuls, bit-identical results whatever the allocation history."""


def pin_cpu_matmul_kernels(deterministic: bool) -> str:
    """Choose MKL's CPU kernels for reproducibility, unless ``MKL_CBWR`` is already set.

    Why: MKL picks kernels by each buffer's alignment, and a process resumed from a checkpoint
    allocates differently from the run it continues, so its losses drifted in the last bits
    (measured: 1.6e-7 relative, two steps after the resume). Strict gemm mode makes that rare;
    only the compatible path made resumed losses bit-identical in every trial. It must be set
    before MKL's first product, so the CLI calls it before building anything. GPUs are unaffected.
    Returns the mode in force.
    """
    return os.environ.setdefault("MKL_CBWR", DETERMINISTIC_MKL if deterministic else SEEDED_MKL)


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
        if config is None:
            return
        deterministic = config.trainer.get("deterministic") in (True, "warn")
        if deterministic or config.get("seed_everything") not in (None, False):
            pin_cpu_matmul_kernels(deterministic)
        if config.get("ckpt_path") != "last":
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
