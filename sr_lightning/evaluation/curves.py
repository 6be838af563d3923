"""A PNG of a run's validation curves, read from its TensorBoard events, with the best step marked.

One picture answers the diagnosis report's first question (did validation loss turn up while
training went on?) without starting TensorBoard.
"""

from __future__ import annotations

from pathlib import Path

LOSS_TAGS = ("val/loss", "train/loss")
ACCURACY_TAGS = ("val/first_token_acc", "val/first_token_majority", "val/token_acc")


def read_scalars(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of the run's event files: tag -> [(step, value)] in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    series = {}
    for tag in accumulator.Tags().get("scalars", []):
        points = {event.step: event.value for event in accumulator.Scalars(tag)}  # a resumed run repeats steps
        series[tag] = sorted(points.items())
    return series


def last_logged_step(run_dir: str | Path) -> int | None:
    """Optimizer steps the run took, as far as its events tell (None without events).

    Every scalar is logged at the number of optimizer updates it belongs to (`OneStepLM` sets it).
    """
    steps = [points[-1][0] for points in read_scalars(run_dir).values() if points]
    return max(steps) if steps else None


def pyplot():
    """matplotlib's pyplot drawing off-screen (imported on first use: most commands never plot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out: str | Path) -> Path:
    """Lay out ``fig``, write it to ``out`` (folders made as needed) and close it."""
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    pyplot().close(fig)
    return out


def plot_validation_curves(run_dir: str | Path, out: str | Path, best_step: int | None = None) -> Path | None:
    """Write the plot to ``out``; None when the run logged no validation loss."""
    series = read_scalars(run_dir)
    if "val/loss" not in series:
        return None
    fig, (loss_ax, acc_ax) = pyplot().subplots(2, 1, figsize=(8, 7), sharex=True)
    for ax, tags, label in ((loss_ax, LOSS_TAGS, "loss per target token"), (acc_ax, ACCURACY_TAGS, "accuracy")):
        for tag in tags:
            if tag in series:
                steps, values = zip(*series[tag])
                style = {"alpha": 0.4} if tag.startswith("train/") else {"marker": "o", "markersize": 3}
                ax.plot(steps, values, label=tag, **style)
        if best_step is not None:
            ax.axvline(best_step, color="tab:red", linestyle="--", label=f"best checkpoint (step {best_step})")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    best = dict(series["val/loss"]).get(best_step)
    if best is not None:
        loss_ax.plot([best_step], [best], marker="*", markersize=14, color="tab:red", linestyle="none")
    acc_ax.set_xlabel("optimizer step")
    loss_ax.set_title(f"validation curves: {Path(run_dir).name}")
    return save_figure(fig, out)
