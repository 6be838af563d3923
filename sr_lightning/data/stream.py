"""Reading one-step JSONL with constant memory: files, bad lines, line counts, shuffling.

Nothing here loads a whole file: lines are read one at a time (plain or gzip), bad lines are
skipped and counted (or raise in strict mode) with their ``file:line``, and a file's line count
is computed once and cached beside it (or in the user cache) keyed by size and mtime, so epoch
lengths are exact without re-reading millions of lines every run.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import logging
import os
import random
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from .format import BadRecord, Pair, pair_from_record

log = logging.getLogger(__name__)
T = TypeVar("T")
FileSpec = str | Path | Sequence[str | Path]
CHUNK = 1 << 20


class BadInputError(ValueError):
    """Raised in strict mode for the first bad line, naming its file and line."""


def resolve_files(spec: FileSpec | None) -> list[Path]:
    """Expand a path, a glob or a list of them; fail before training on anything missing."""
    if spec is None:
        return []
    specs = [spec] if isinstance(spec, (str, Path)) else list(spec)
    files: list[Path] = []
    for item in specs:
        text = str(item)
        if glob.has_magic(text):
            matches = sorted(glob.glob(text))
            if not matches:
                raise FileNotFoundError(f"no file matches the pattern {text!r}")
            files.extend(Path(m) for m in matches)
        elif Path(text).is_file():
            files.append(Path(text))
        else:
            raise FileNotFoundError(f"data file not found: {text}")
    return files


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


@dataclass
class LineReport:
    """Skipped lines by reason, with the first few places kept for the message."""

    strict: bool = False
    max_logged: int = 5
    counts: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def skip(self, source: str, reason: str) -> None:
        message = f"{source}: {reason}"
        if self.strict:
            raise BadInputError(message)
        self.counts[reason.split(" (")[0]] += 1
        if len(self.examples) < self.max_logged:
            self.examples.append(message)
            log.warning("skipped bad input line %s", message)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def iter_raw_lines(files: Sequence[Path], report: LineReport) -> Iterator[tuple[str, bytes]]:
    """``(file:line, raw bytes)`` for every line of every file, in order.

    A truncated or corrupt gzip stream ends its file with one bad-line entry instead of a crash.
    """
    for path in files:
        number = 0
        try:
            with _open_binary(path) as handle:
                for number, raw in enumerate(handle, start=1):
                    yield f"{path}:{number}", raw
        except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as error:
            report.skip(f"{path}:{number + 1}", f"unreadable file data ({error})")
        if number == 0:
            log.warning("data file %s is empty", path)


def parse_line(raw: bytes, source: str) -> Pair:
    """Decode one raw line into a `Pair`; every failure becomes `BadRecord` with a reason."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BadRecord(f"invalid UTF-8 ({error.reason} at byte {error.start})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as error:
        raise BadRecord(f"malformed JSON ({error.msg} at column {error.colno})") from None
    return pair_from_record(obj, source)


def is_blank(raw: bytes) -> bool:
    return not raw.strip()


def parse_lines(lines: Iterable[tuple[str, bytes]], report: LineReport) -> Iterator[Pair]:
    """The `Pair` of every good line; blank lines and bad ones (by reason) are counted in ``report``."""
    for source, raw in lines:
        if is_blank(raw):
            report.counts["blank"] += 1
            continue
        try:
            yield parse_line(raw, source)
        except BadRecord as error:
            report.skip(source, str(error))


def _count_newlines(path: Path) -> int:
    """Lines readable in ``path``; a truncated gzip stream counts up to where it breaks."""
    count, last = 0, b"\n"
    try:
        with _open_binary(path) as handle:
            while chunk := handle.read1(CHUNK):  # read1: keeps what precedes a broken gzip tail
                count += chunk.count(b"\n")
                last = chunk[-1:]
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        log.warning("%s: unreadable file data after %d lines (%s)", path, count, error)
    return count + (last != b"\n")


def cache_dir() -> Path:
    return Path(os.environ.get("SR_LIGHTNING_CACHE", Path.home() / ".cache" / "sr_lightning"))


def count_lines(path: Path) -> int:
    """Number of lines in ``path`` (a last line without newline counts), cached by size and mtime."""
    stat = path.stat()
    key = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:16]
    candidates = [path.with_name(f".{path.name}.lines.json"), cache_dir() / "line_counts" / f"{digest}.json"]
    for cache in candidates:
        try:
            cached = json.loads(cache.read_text())
            if cached["key"] == key:
                return int(cached["lines"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    lines = _count_newlines(path)
    for cache in candidates:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps({"key": key, "lines": lines}))
            break
        except OSError:
            continue
    return lines


def shuffled(items: Iterable[T], buffer_size: int, rng: random.Random) -> Iterator[T]:
    """Buffer shuffle: constant memory, a uniform pick among the next ``buffer_size`` items."""
    buffer: list[T] = []
    for item in items:
        if len(buffer) < buffer_size:
            buffer.append(item)
            continue
        index = rng.randrange(buffer_size)
        yield buffer[index]
        buffer[index] = item
    rng.shuffle(buffer)
    yield from buffer
