"""The LightningCLI behind ``train.py`` (fit / validate / test)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from lightning.pytorch.cli import LightningCLI

from .console import configure_console, fit_summary
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


def first_new_ancestor(path: Path) -> Path | None:
    """The outermost folder of ``path`` (itself included) that does not exist yet; None if it exists."""
    if path.exists():
        return None
    while not path.parent.exists():
        path = path.parent
    return path


class TrainCLI(LightningCLI):
    """LightningCLI whose ``--ckpt_path last`` resumes the newest run and keeps logging into its directory.

    Plain Lightning looks for ``last.ckpt`` in the NEW run's (empty) directory and silently starts
    from scratch when the logger numbers versions itself.
    """

    def add_arguments_to_parser(self, parser) -> None:
        """The DataModule gets the task contract its model builds (tokenizer, context length, labels)."""
        parser.link_arguments("model.task", "data.task", apply_on="instantiate")

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

    def fit(self, model: OneStepLM, **kwargs) -> None:
        """``Trainer.fit``; a launch that fails before its first step leaves no run directory behind.

        Lightning creates the logger's directory (an events file) before the data is set up, so a
        missing data file would otherwise leave an empty ``version_N`` that TensorBoard lists.
        """
        log_dir = self.trainer.log_dir  # a broadcast: every rank asks
        created = first_new_ancestor(Path(log_dir)) if log_dir else None
        try:
            self.trainer.fit(model, **kwargs)
        except BaseException:
            if created is not None and self.trainer.is_global_zero and self.trainer.global_step == 0 \
                    and not any(created.glob("**/*.ckpt")):
                shutil.rmtree(created, ignore_errors=True)
            raise

    def after_fit(self) -> None:
        if self.trainer.is_global_zero:
            print(fit_summary(self.trainer), file=sys.stderr)


def missing_config_files(argv: list[str]) -> list[str]:
    """``--config``/``-c`` values that name a file which is not there (inline YAML is left alone)."""
    values = []
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            values.append(argv[i + 1])
        elif arg.startswith("--config="):
            values.append(arg.partition("=")[2])
    return [v for v in values if not any(c in v for c in "{}:\n") and not Path(v).exists()]


def main(args: list[str] | None = None) -> LightningCLI | None:
    """Run the CLI; a missing config or data file is one ``error:`` line and exit status 2."""
    configure_console()
    missing = missing_config_files(sys.argv[1:] if args is None else list(args))
    try:
        if missing:
            raise FileNotFoundError(f"config file not found: {missing[0]}")
        return TrainCLI(OneStepLM, OneStepDataModule, save_config_kwargs={"overwrite": True}, args=args,
                        trainer_defaults={"enable_model_summary": False})
    except (FileNotFoundError, BadInputError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
