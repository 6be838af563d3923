"""What a speed benchmark measures: per-implementation figures, the batches they ran, peak memory."""

from __future__ import annotations

import os
import resource
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .data.batches import IGNORE


@dataclass
class Figures:
    """What one implementation did in its timed steps, and how fast."""

    name: str
    steps: int = 0
    examples: int = 0
    tokens: int = 0
    """Real tokens, padding excluded."""
    target_tokens: int = 0
    """Labelled (target) positions: the tokens the loss is computed on."""
    computed_tokens: int = 0
    """Positions the model ran on, padding included."""
    seconds: float = 0.0
    peak_memory_mb: float = 0.0
    """Peak GPU memory on CUDA; on CPU the peak resident memory of the process and its loader workers."""
    step_seconds: list[float] = field(default_factory=list)

    def add_batch(self, examples: int, tokens: int, target_tokens: int, computed_tokens: int) -> None:
        self.steps += 1
        self.examples += examples
        self.tokens += tokens
        self.target_tokens += target_tokens
        self.computed_tokens += computed_tokens

    @property
    def examples_per_s(self) -> float:
        return self.examples / self.seconds if self.seconds else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    @property
    def target_tokens_per_s(self) -> float:
        return self.target_tokens / self.seconds if self.seconds else 0.0

    @property
    def padding_share(self) -> float:
        return 1 - self.tokens / self.computed_tokens if self.computed_tokens else 0.0

    def line(self) -> str:
        return (f"{self.name:<12} examples/s={self.examples_per_s:.4g} tokens/s={self.tokens_per_s:.4g} "
                f"target_tokens/s={self.target_tokens_per_s:.4g} padding={100 * self.padding_share:.1f}% "
                f"peak_memory={self.peak_memory_mb:.0f}MB steps={self.steps} seconds={self.seconds:.2f}")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "examples_per_s": self.examples_per_s, "tokens_per_s": self.tokens_per_s,
                "target_tokens_per_s": self.target_tokens_per_s, "padding_share": self.padding_share}


@dataclass
class Batch:
    """The part of a training batch the references need, kept on the CPU."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    """Shifted as in our batches: ``labels[b, t]`` is the token predicted from position ``t``."""

    @property
    def lengths(self) -> torch.Tensor:
        """Real length of each row: the last label predicts the final token (eos) from one before it."""
        positions = torch.arange(self.labels.shape[1]).expand_as(self.labels)
        return torch.where(self.labels != IGNORE, positions, -2).amax(dim=1) + 2

    def figures(self) -> tuple[int, int, int, int]:
        """(examples, real tokens, target tokens, computed tokens) of this batch as our path runs it."""
        lengths = self.lengths
        return (len(lengths), int(lengths.sum()), int((self.labels != IGNORE).sum()), self.input_ids.numel())


# -- memory ----------------------------------------------------------------------------------
def _children(pid: int) -> list[int]:
    try:
        tasks = Path(f"/proc/{pid}/task").iterdir()
        return [int(c) for task in tasks for c in (task / "children").read_text().split()]
    except OSError:  # the process ended while we looked
        return []


def _rss_mb(pid: int | None = None) -> float:
    """Resident memory of a process and all its descendants (the DataLoader workers), in MB.

    Pages a forked worker still shares with its parent count twice: an upper bound.
    """
    pid = pid or os.getpid()
    try:
        with open(f"/proc/{pid}/statm") as statm:
            own = int(statm.read().split()[1]) * resource.getpagesize() / 2**20
    except OSError:
        return 0.0
    return own + sum(_rss_mb(child) for child in _children(pid))


@contextmanager
def peak_memory(device: torch.device) -> Iterator[Callable[[], float]]:
    """Peak memory inside the block, in MB: CUDA's allocator peak, or sampled resident memory on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield lambda: torch.cuda.max_memory_allocated(device) / 2**20
        return
    peak, done = [_rss_mb()], threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], _rss_mb())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield lambda: peak[0]
    finally:
        done.set()
        sampler.join()
        peak[0] = max(peak[0], _rss_mb())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
