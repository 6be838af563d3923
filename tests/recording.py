"""Test-only callbacks that write what a (possibly multi-process) run did to JSON lines files."""

import json
from pathlib import Path

import lightning as L


class RecordTraining(L.Callback):
    """Appends one line per training step and rank: step, loss and the examples of the batch."""

    def __init__(self, out: str):
        self.out = Path(out)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"].item() if outputs is not None else None
        line = {"rank": trainer.global_rank, "step": trainer.global_step, "loss": loss,
                "sources": batch["sources"], "batch_index": batch["batch_index"], "epoch": batch["epoch"]}
        with open(self.out / f"train-rank{trainer.global_rank}.jsonl", "a") as handle:
            handle.write(json.dumps(line) + "\n")


class RecordValidation(L.Callback):
    """Writes the validation metrics (as every rank computed them) after each validation."""

    def __init__(self, out: str):
        self.out = Path(out)

    def on_validation_end(self, trainer, pl_module) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        with open(self.out / f"val-rank{trainer.global_rank}.jsonl", "a") as handle:
            handle.write(json.dumps(metrics) + "\n")
