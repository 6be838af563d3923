"""An iterable dataset of ready batches, sharded by rank and worker, exactly once per epoch.

Every rank and every worker reads the same line stream; line ``i`` belongs to rank
``i % world_size``. Each rank's lines are buffer-shuffled (seeded by seed, epoch and rank),
optionally grouped by length, and cut into a fixed sequence of batches of ``batch_size`` lines.
Batch ``j`` is built by worker ``(j - start) % num_workers``, so the order in which the
DataLoader hands batches out is the same whatever the number of workers, and a run resumed
at batch ``start`` continues exactly where it stopped. Every rank yields the same number of
batches (short ranks add label-free padding batches) so distributed training never hangs.
Bad lines keep their slot and are dropped from their batch, which keeps the plan fixed.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..task import OneStepTask
from .format import Pair
from .points import ProblemIndex
from .stream import LineReport, count_lines, iter_raw_lines, parse_lines, shuffled


@dataclass
class StreamSettings:
    """How lines become batches (shared by training, validation and test streams)."""

    batch_size: int = 16
    """Lines per batch (bad lines are dropped from their batch)."""
    shuffle: bool = False
    """Buffer-shuffle lines (training only: validation and test stay fixed and ordered)."""
    shuffle_buffer: int = 10_000
    """Lines held by the shuffle buffer of each reader."""
    length_grouping: int = 0
    """Sort chunks of this many batches by line length before batching (0: off)."""
    pad_to_multiple: int = 1
    """Round each batch's width up to a multiple of this (GPUs like few distinct shapes)."""
    strict: bool = False
    """Stop at the first bad line instead of skipping and counting it."""
    seed: int = 42


class BatchStream(IterableDataset):
    """What the file and online streams share: the epoch and start batch, the share-out of
    batch ``j`` to worker ``(j - start) % num_workers``, encoding and collation, and the
    position and skip counts every batch carries for the DataModule.

    A subclass says how batch ``index`` is made (`_worker_batches`) and how many there are.
    """

    def __init__(self, task: OneStepTask, settings: StreamSettings, rank: int = 0, world_size: int = 1,
                 problems: ProblemIndex | None = None):
        self.task = task
        self.problems = problems  # where each example's points are found, when the model reads them
        self.settings = settings
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.start = 0

    def __len__(self) -> int:
        raise NotImplementedError

    def begin_epoch(self, epoch: int, start: int = 0) -> None:
        """Called in the main process before workers start: which epoch, from which batch."""
        self.epoch, self.start = epoch, start

    def _worker_batches(self, worker: int, workers: int, report: LineReport) -> Iterator[tuple[int, dict]]:
        """``(index, batch)`` for the batches of this epoch, from ``start``, that ``worker`` builds."""
        raise NotImplementedError

    def _collate(self, pairs: Sequence[Pair], report: LineReport, problems: ProblemIndex | None = None) -> dict:
        examples = [example for _, example in self.task.encode(pairs, report, problems or self.problems)]
        return self.task.collate(examples, self.settings.pad_to_multiple)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        report = LineReport(strict=self.settings.strict)
        reported: Counter = Counter()
        for index, batch in self._worker_batches(worker, workers, report):
            batch.update(batch_index=index, epoch=self.epoch, rank=self.rank, skipped=dict(report.counts - reported))
            reported = Counter(report.counts)
            yield batch


class OneStepBatches(BatchStream):
    """Padded batches of one-step examples from JSONL files (see the module docstring)."""

    def __init__(self, files: Sequence[Path], task: OneStepTask, settings: StreamSettings,
                 rank: int = 0, world_size: int = 1, problems: ProblemIndex | None = None):
        super().__init__(task, settings, rank, world_size, problems)
        self.files = list(files)
        self.total_lines = sum(count_lines(f) for f in self.files)

    def lines_of_rank(self, rank: int) -> int:
        return max(0, -(-(self.total_lines - rank) // self.world_size))

    def real_batches(self, rank: int) -> int:
        return -(-self.lines_of_rank(rank) // self.settings.batch_size)

    def __len__(self) -> int:
        """Batches per rank: the same on every rank (the longest rank's count)."""
        return self.real_batches(0)

    def _line_groups(self, file_report: LineReport) -> Iterator[list[tuple[str, bytes]]]:
        """The rank's lines cut into the epoch's fixed sequence of batches."""
        s = self.settings
        rng = random.Random(f"{s.seed}-{self.epoch}-{self.rank}")
        lines = islice(iter_raw_lines(self.files, file_report), self.rank, None, self.world_size)
        if s.shuffle:
            lines = shuffled(lines, s.shuffle_buffer, rng)
        chunk_size = s.batch_size * max(1, s.length_grouping)
        while chunk := list(islice(lines, chunk_size)):
            if s.length_grouping:
                chunk.sort(key=lambda item: len(item[1]))
            groups = [chunk[i : i + s.batch_size] for i in range(0, len(chunk), s.batch_size)]
            if s.length_grouping and s.shuffle:
                rng.shuffle(groups)
            yield from groups

    def _make_batch(self, lines: list[tuple[str, bytes]], report: LineReport) -> dict:
        return self._collate(list(parse_lines(lines, report)), report)

    def _worker_batches(self, worker: int, workers: int, report: LineReport) -> Iterator[tuple[int, dict]]:
        # Every reader sees an unreadable file; only the first one reports it.
        first_reader = worker == 0 and self.rank == 0
        file_report = report if first_reader else LineReport(strict=self.settings.strict)
        groups = enumerate(self._line_groups(file_report))
        for index in range(len(self)):  # a stream: every reader walks all groups, builds its own
            lines = next(groups, (index, []))[1]
            if index >= self.start and (index - self.start) % workers == worker:
                yield index, self._make_batch(lines, report)


class EpochLoader(DataLoader):
    """A DataLoader that tells its dataset the epoch and start batch before workers fork.

    Lightning only forwards ``set_epoch`` to samplers, which iterable datasets do not have.
    """

    def __init__(self, dataset: BatchStream, position, **kwargs):
        # Its own generator: starting workers must not draw from the global RNG (dropout's), or
        # a resumed run, which starts its loader at another moment, would draw other masks.
        generator = torch.Generator().manual_seed(dataset.settings.seed)
        super().__init__(dataset, batch_size=None, generator=generator, **kwargs)
        self._position = position

    def __iter__(self):
        self.dataset.begin_epoch(*self._position())
        return super().__iter__()
