"""Side work during training: sample tables and first-token distributions in TensorBoard,
and the count of skipped data lines in the run directory.

The original's model wrote ``x0 x0 x0`` for weeks before anyone looked; these callbacks put
what the model writes next to what it should write at every validation.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from .decoding import generate
from .markdown import code_cell
from .metrics import majority_share


def _tensorboard(trainer: L.Trainer):
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


class SampleTable(L.Callback):
    """Greedy predictions for ``n_samples`` fixed validation examples, as a Markdown table.

    Args:
        n_samples: Validation examples shown: the first of evenly spaced batches (the set is fixed
            and ordered, so they are the same at every validation).
        max_new_tokens: Decoding budget per sample.
        prompt_tail_chars: How much of the end of each prompt to show.
    """

    def __init__(self, n_samples: int = 8, max_new_tokens: int = 96, prompt_tail_chars: int = 80):
        self.n_samples, self.max_new_tokens, self.prompt_tail_chars = n_samples, max_new_tokens, prompt_tail_chars
        self.prompts: list[list[int]] = []
        self.targets: list[list[int]] = []
        self.prefixes: list[torch.Tensor] = []  # each sample's point prefix, for a model that reads points

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        """Keep the first example of every ``stride``-th batch: samples spread over the whole set."""
        stride = max(1, int(trainer.num_val_batches[0]) // self.n_samples)
        if len(self.prompts) >= self.n_samples or trainer.sanity_checking or batch_idx % stride:
            return
        ids, positions, labels = batch["input_ids"].cpu(), batch["target_positions"].cpu(), batch["labels"].cpu()
        eos = pl_module.tokenizer.eos_id
        prefix = pl_module.model.point_prefix(batch)
        for row in range(min(batch["n_examples"], 1)):
            if prefix is not None:
                self.prefixes.append(prefix[row])
            start = int(positions[row])
            end = int((labels[row] != -100).nonzero().max()) + 1  # the closing eos position
            self.prompts.append(ids[row, : start + 1].tolist())
            self.targets.append([t for t in ids[row, start + 1 : end].tolist() if t != eos])

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        writer = _tensorboard(trainer)
        if trainer.sanity_checking or not self.prompts or writer is None or not trainer.is_global_zero:
            return
        tokenizer = pl_module.tokenizer
        prefixes = torch.stack(self.prefixes) if self.prefixes else None
        predictions = generate(pl_module.model, self.prompts, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
                               max_new_tokens=self.max_new_tokens, prefixes=prefixes)
        writer.add_text("samples", self.markdown(tokenizer, predictions), trainer.global_step)

    def markdown(self, tokenizer, predictions: list[list[int]]) -> str:
        texts = [tokenizer.decode(p) for p in predictions]
        lines = [
            f"{len(set(texts))} distinct predictions of {len(texts)}; "
            f"{sum(t == tokenizer.decode(g) for t, g in zip(texts, self.targets))} exact",
            "",
            "| # | prompt (end) | target | prediction | match |",
            "|---|---|---|---|---|",
        ]
        for i, (prompt, target, text) in enumerate(zip(self.prompts, self.targets, texts)):
            tail = tokenizer.decode(prompt[:-1])[-self.prompt_tail_chars :]
            truth = tokenizer.decode(target)
            lines.append(f"| {i} | {code_cell('…' + tail)} | {code_cell(truth)} | {code_cell(text)} | "
                         f"{'yes' if text == truth else 'no'} |")
        return "\n".join(lines)


class FirstTokenDistribution(L.Callback):
    """The predicted vs true distribution of the first target token, as a Markdown table.

    An inverted distribution (the model prefers ``x`` while the data prefers ``(``) is the
    diagnosis report's clearest symptom; this shows it at every validation.
    """

    def __init__(self, top: int = 10):
        self.top = top

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        predicted = pl_module.first_tokens.predicted.compute()  # a collective: every rank computes
        true = pl_module.first_tokens.true.compute()
        writer = _tensorboard(trainer)
        if writer is not None and trainer.is_global_zero and true.sum() > 0:
            writer.add_text("first_token_distribution", self.markdown(pl_module.tokenizer, predicted, true),
                            trainer.global_step)

    def markdown(self, tokenizer, predicted: torch.Tensor, true: torch.Tensor) -> str:
        order = torch.argsort(predicted + true, descending=True)[: self.top]
        total_p, total_t = max(1, int(predicted.sum())), max(1, int(true.sum()))
        lines = [f"majority baseline {float(majority_share(true)):.3f}", "",
                 "| token | predicted | target |", "|---|---|---|"]
        for token in order.tolist():
            if predicted[token] + true[token] == 0:
                break
            lines.append(f"| {code_cell(tokenizer.first_token_label(token))} | {int(predicted[token]) / total_p:.3f} | "
                         f"{int(true[token]) / total_t:.3f} |")
        return "\n".join(lines)


class DataIssuesReport(L.Callback):
    """Writes ``data_issues.json`` (skipped training lines by reason, truncated examples) in the run directory."""

    def _write(self, trainer: L.Trainer, pl_module) -> None:
        log_dir = trainer.log_dir  # a broadcast: every rank must ask
        if not trainer.is_global_zero or log_dir is None:
            return
        skipped = dict(getattr(trainer.datamodule, "skipped", {}))
        report = {"skipped_lines": skipped, "skipped_total": sum(skipped.values()),
                  "truncated_examples": pl_module.progress["truncated_examples"],
                  "examples_seen": pl_module.progress["examples_seen"], "step": trainer.global_step}
        path = Path(log_dir) / "data_issues.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._write(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self._write(trainer, pl_module)
