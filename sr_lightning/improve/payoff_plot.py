"""A PNG of the payoff per iteration: solved runs per seed of guided search, each loop, against BasicSR's spread."""

from __future__ import annotations

import json
from pathlib import Path

from ..evaluation.curves import pyplot, save_figure


def read_summary(out: str | Path) -> list[dict]:
    """The ``summary.jsonl`` lines of a loop's output folder, in iteration order."""
    path = Path(out) / "summary.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no summary here (is {out} a loop's --out, run to its end?)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _per_seed(summary: dict) -> tuple[float, int, int]:
    """(mean, min, max) of the solved runs per seed."""
    by_seed = summary["solved_by_seed"]
    return sum(by_seed) / len(by_seed), min(by_seed), max(by_seed)


def plot_payoff(outs: list[str | Path], path: str | Path) -> Path:
    summaries = [read_summary(out) for out in outs]
    fig, ax = pyplot().subplots(figsize=(7, 4.5))
    for lines in summaries:
        iterations = [line["iteration"] for line in lines]
        stats = [_per_seed(line["payoff"]["neural"]) for line in lines]
        means = [m for m, _, _ in stats]
        errors = [[m - lo for m, lo, _ in stats], [hi - m for m, _, hi in stats]]
        ax.errorbar(iterations, means, yerr=errors, marker="o", capsize=4, label=f"guided: {lines[0]['loop']}")
    basic = summaries[0][0]["payoff"]["basic"]  # the same runs in every iteration and loop
    mean, lo, hi = _per_seed(basic)
    ax.axhline(mean, color="black", linestyle="--", label="BasicSR (mean over seeds)")
    ax.axhspan(lo, hi, color="gray", alpha=0.25, label="BasicSR, lowest to highest seed")
    last = max(line["iteration"] for lines in summaries for line in lines)
    runs = basic["runs"] // len(basic["solved_by_seed"])
    ax.set_xlabel("iteration (0: the start model)")
    ax.set_ylabel(f"solved runs per seed (of {runs})")
    ax.set_xticks(range(last + 1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("guided search vs BasicSR, per improvement iteration")
    return save_figure(fig, path)
