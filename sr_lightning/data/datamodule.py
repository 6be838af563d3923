"""The LightningDataModule: JSONL files (or the built-in default data) to batches.

It owns the data position: the epoch and the number of training batches consumed are saved
in every checkpoint (``state_dict``) so ``--ckpt_path last`` resumes mid-epoch on the very
next batch, with the same shuffle.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Literal

import lightning as L

from ..task import OneStepTask
from .dataset import BatchStream, EpochLoader, OneStepBatches, StreamSettings
from .online import HELDOUT_FILE, OnlineBatches, OnlineSettings, write_heldout_set
from .points import ProblemIndex
from .stream import BadInputError, FileSpec, cache_dir, resolve_files

log = logging.getLogger(__name__)


def default_data_dir() -> Path:
    return cache_dir() / "default_data"


class OneStepDataModule(L.LightningDataModule):
    """One-step pairs from JSONL files, sharded over ranks and workers, padded per batch.

    Args:
        train_files: Training JSONL (plain or ``.gz``): a path, a glob or a list. None: the
            built-in default data set, generated on first use into ``default_data_dir``.
        val_files: Validation JSONL (fixed and ordered). None with no train files: the default set's.
        test_files: Test JSONL, like ``val_files``.
        batch_size: Examples per training batch (per process).
        val_batch_size: Examples per validation/test batch (default: ``batch_size``).
        num_workers: DataLoader worker processes per rank.
        seed: Seeds the shuffle (with the epoch and the rank).
        shuffle_buffer: Lines in each reader's shuffle buffer.
        length_grouping: Sort chunks of this many batches by length (0: off) to cut padding.
        pad_to_multiple: Round batch widths up to a multiple of this (use 64-128 on GPUs).
        strict: Stop at the first bad line instead of skipping and counting it.
        default_data_dir: Where the default data set is generated (default: the user cache).
        default_problems: Problems in the generated default data set (split 80/10/10 by problem).
        default_targets: ``ancestors`` (members that lead to the run's best), ``new-ancestors`` (those of
            them the read generation does not already hold) or ``all`` members.
        source: ``files`` (JSONL) or ``online``: training problems generated in the workers, validated
            on a fixed held-out set (written once into ``default_data_dir``) unless ``val_files`` is set.
        online: The online generator's settings (``--data.online.examples_per_problem 16`` ...).
        points_file: A points file for every example (JSON, NPZ or pickle by expression id) when the model
            reads points; else each file's own (``metadata.source_expressions_file`` or ``problems.json``).
        mode: ``onestep`` (a population -> one member of the next generation) or ``direct`` (a problem's
            points and primitives -> its whole expression; the model must read the points). The generated
            default data, the online source and its held-out set follow it; lines of the other kind are
            skipped and counted.
        task: The model's `OneStepTask` (tokenizer, context length, labels): ``train.py`` links it from
            the LightningModule; in code pass ``task=module.task``.
    """

    def __init__(
        self,
        train_files: FileSpec | None = None,
        val_files: FileSpec | None = None,
        test_files: FileSpec | None = None,
        batch_size: int = 16,
        val_batch_size: int | None = None,
        num_workers: int = 2,
        seed: int = 42,
        shuffle_buffer: int = 10_000,
        length_grouping: int = 50,
        pad_to_multiple: int = 1,
        strict: bool = False,
        default_data_dir: str | None = None,
        default_problems: int = 400,
        default_targets: str = "ancestors",
        source: Literal["files", "online"] = "files",
        online: OnlineSettings = OnlineSettings(),
        points_file: str | None = None,
        mode: Literal["onestep", "direct"] = "onestep",
        task: OneStepTask | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["task"])
        self.online = OnlineSettings.of(online)
        self.hparams.online = asdict(self.online)  # plain data: checkpoints stay loadable with weights_only
        self.task = task
        self.datasets: dict[str, BatchStream] = {}
        self.position = (0, 0)  # (epoch, training batches consumed in it)
        self._restored: tuple[int, int] | None = None  # a checkpoint's position, until used
        self.skipped: Counter = Counter()  # training lines skipped, by reason

    # -- files ----------------------------------------------------------------------------
    def _default_dir(self) -> Path:
        """One directory per (mode, targets, problems, seed), so changing a setting never reuses stale data."""
        h = self.hparams
        root = Path(h.default_data_dir) if h.default_data_dir else default_data_dir()
        kind = "direct" if h.mode == "direct" else h.default_targets
        return root / f"{kind}-{h.default_problems}problems-seed{h.seed}"

    def _uses_default_data(self) -> bool:
        return self.hparams.source == "files" and self.hparams.train_files is None and self.hparams.val_files is None

    def _heldout_dir(self) -> Path:
        """One directory per held-out-shaping settings, so a changed setting never reuses a stale set."""
        h = self.hparams
        root = Path(h.default_data_dir) if h.default_data_dir else default_data_dir()
        mode = "direct-" if h.mode == "direct" else ""
        return root / f"online-heldout-{mode}{self.online.heldout_key()}"

    def _files(self, split: str) -> list[Path]:
        spec = self.hparams[f"{split}_files"]
        if spec is None and split == "val" and self.hparams.source == "online":
            spec = self._heldout_dir() / HELDOUT_FILE
        if spec is None and self._uses_default_data():
            spec = self._default_dir() / f"{split}.jsonl"
        return resolve_files(spec)

    def prepare_data(self) -> None:
        """Generate the default data set, or the online held-out set, once (local rank 0 only)."""
        h = self.hparams
        if h.source == "online" and h.val_files is None and not (self._heldout_dir() / "manifest.json").is_file():
            log.info("writing the online held-out validation set into %s (first use only)", self._heldout_dir())
            write_heldout_set(self._heldout_dir(), self.online, h.mode)
        if not self._uses_default_data():
            return
        out = self._default_dir()
        if (out / "manifest.json").is_file():
            return
        from ..sr.problems import ProblemConfig
        from ..sr.search import SearchConfig
        from .generate import Job, write_dataset

        log.info("generating the default data set: %d BasicSR runs into %s (first use only; "
                 "SR_LIGHTNING_CACHE or --data.default_data_dir moves it)", h.default_problems, out)
        start = time.perf_counter()
        job = Job(h.seed, ProblemConfig(), SearchConfig(), h.default_targets, h.mode)
        splits = write_dataset(out, h.default_problems, job, workers=max(1, os.cpu_count() or 1))["splits"]
        log.info("wrote %s in %.0f s", ", ".join(f"{c['examples']:,} {name} examples" for name, c in splits.items()),
                 time.perf_counter() - start)

    # -- datasets -------------------------------------------------------------------------
    def _settings(self, shuffle: bool, batch_size: int) -> StreamSettings:
        h = self.hparams
        return StreamSettings(
            batch_size=batch_size, shuffle=shuffle, shuffle_buffer=h.shuffle_buffer,
            length_grouping=h.length_grouping if shuffle else 0, pad_to_multiple=h.pad_to_multiple,
            strict=h.strict, seed=h.seed,
        )

    def setup(self, stage: str | None = None) -> None:
        if self.task is None:
            raise ValueError("OneStepDataModule has no task: train.py links the model's; in code pass "
                             "OneStepDataModule(..., task=module.task)")
        try:
            self.task = replace(self.task, mode=self.hparams.mode)  # --data.mode: what the examples ask
        except ValueError as error:
            raise BadInputError(f"--data.mode {self.hparams.mode}: {error}") from None
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        val_batch = self.hparams.val_batch_size or self.hparams.batch_size
        problems = ProblemIndex(self.hparams.points_file) if self.task.reads_points else None  # read once
        splits = {"fit": ["train", "val"], "validate": ["val"], "test": ["test"], None: ["train", "val", "test"]}
        for split in splits.get(stage, []):
            if split == "train" and self.hparams.source == "online":
                settings = self._settings(True, self.hparams.batch_size)
                self.datasets[split] = OnlineBatches(self.task, settings, self.online, rank, world)
                continue
            files = self._files(split)
            if not files:
                continue
            train = split == "train"
            settings = self._settings(train, self.hparams.batch_size if train else val_batch)
            self.datasets[split] = OneStepBatches(files, self.task, settings, rank, world, problems)
        if stage == "fit" and "train" not in self.datasets:
            raise ValueError("no training data: set --data.train_files (a path, glob or list)")

    def _loader(self, split: str, position) -> EpochLoader | list:
        if split not in self.datasets:
            return []
        workers = self.hparams.num_workers
        return EpochLoader(self.datasets[split], position, num_workers=workers,
                           persistent_workers=False, pin_memory=False,
                           prefetch_factor=4 if workers else None)

    def train_dataloader(self) -> EpochLoader:
        return self._loader("train", self._train_position)

    def val_dataloader(self) -> EpochLoader | list:
        return self._loader("val", lambda: (0, 0))

    def test_dataloader(self) -> EpochLoader | list:
        return self._loader("test", lambda: (0, 0))

    def _train_position(self) -> tuple[int, int]:
        """(epoch, first batch) for a new training iterator.

        After a restore, the saved position wins: Lightning builds the first iterator (to count
        stepping batches) before it restores its own epoch counter.
        """
        if self._restored is not None:
            (epoch, consumed), self._restored = self._restored, None
            return (epoch + 1, 0) if consumed >= len(self.datasets["train"]) else (epoch, consumed)
        return (self.trainer.current_epoch if self.trainer else 0), 0

    # -- position and bad-line counts -----------------------------------------------------
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.trainer is not None and self.trainer.training:
            self.position = (batch["epoch"], batch["batch_index"] + 1)
            self.skipped.update(batch["skipped"])
        return batch

    def state_dict(self) -> dict[str, Any]:
        epoch, consumed = self.position
        return {"epoch": epoch, "batches_consumed": consumed, "skipped": dict(self.skipped)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position = self._restored = (state["epoch"], state["batches_consumed"])
        self.skipped = Counter(state.get("skipped", {}))
