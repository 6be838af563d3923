"""The data of one fine-tune: improvement lines mixed with imitation lines, shuffled, with their points.

The training stream reads its files in order through a shuffle buffer, so two files given side by
side would reach the model one after the other. Here the lines are mixed into one file instead:
every improvement line so far and ``ratio`` times as many lines drawn at random from the model's
own training data (so it keeps writing the format), shuffled, beside a ``problems.json`` with the
points of every problem they name (a model that reads points finds them there).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

from ..data.format import BadRecord, Pair
from ..data.points import SIDECAR, ProblemIndex
from ..data.stream import LineReport, count_lines, iter_raw_lines, parse_line
from ..sr.problems import Problem, save_problems

TRAIN_FILE = "train.jsonl"


def sample_lines(files: Sequence[Path], count: int, rng: random.Random) -> list[tuple[str, bytes]]:
    """``count`` lines drawn without replacement from ``files`` (all of them if fewer), in file order."""
    total = sum(count_lines(f) for f in files)
    chosen = set(rng.sample(range(total), min(count, total)))
    return [line for index, line in enumerate(iter_raw_lines(files, LineReport())) if index in chosen]


def readable(lines: Sequence[tuple[str, bytes]]) -> list[tuple[Pair, str]]:
    """Each good line's pair and text; blank and bad lines are left out (the caller counts them)."""
    good = []
    for source, raw in lines:
        try:
            good.append((parse_line(raw, source), raw.decode("utf-8").rstrip("\r\n")))
        except BadRecord:
            continue
    return good


def imitation_problems(pairs: Sequence[Pair], points_file: str | None) -> dict[int, Problem]:
    """The problems the imitation lines name, found as training found them."""
    index, problems = ProblemIndex(points_file), {}
    for pair in pairs:
        if pair.expression_id is not None and pair.inline_points is None:
            problem = index.lookup(pair)
            if problem is not None:
                problems[pair.expression_id] = problem
    return problems


def write_mix(out: Path, improvement: Sequence[str], problems: dict[int, Problem], imitation_files: Sequence[Path],
              ratio: float, seed: int, points_file: str | None = None) -> dict[str, int]:
    """Write ``out/train.jsonl`` and ``out/problems.json``; returns the line counts."""
    rng = random.Random(seed)
    sampled = sample_lines(imitation_files, round(ratio * len(improvement)), rng) if ratio > 0 else []
    imitation = readable(sampled)
    found = imitation_problems([pair for pair, _ in imitation], points_file)
    clash = sorted(i for i in found.keys() & problems.keys() if found[i].X.shape != problems[i].X.shape
                   or (found[i].X != problems[i].X).any())
    if clash:
        raise ValueError(f"expression_id {clash[0]} names different problems in the imitation data and the loop's")
    lines = [*improvement, *(text for _, text in imitation)]
    rng.shuffle(lines)
    out.mkdir(parents=True, exist_ok=True)
    (out / TRAIN_FILE).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    save_problems(out / SIDECAR, {**found, **problems}.values())
    counts = {"improvement_lines": len(improvement), "imitation_lines": len(imitation),
              "imitation_lines_unreadable": len(sampled) - len(imitation), "lines": len(lines)}
    (out / "mix.json").write_text(json.dumps(counts, indent=2) + "\n")
    return counts
