"""The LightningModule: a GPT-Neo LM trained on the target of one-step examples only.

Only target positions carry labels, so the hidden states at those positions are gathered
first and the LM head runs on them alone: the prompt (95%+ of the tokens) never reaches the
head. Validation logs what the original's users had to dig out by hand: per-token loss, NLL per
target, first-token accuracy beside the majority baseline, and token accuracy.
"""

from __future__ import annotations

import logging
import math
import random
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .data.batches import IGNORE
from .data.tokenizer import SRTokenizer
from .metrics import FirstTokenCounts, OneStepMetrics
from .model import GPTNeo, ModelConfig
from .task import OneStepTask
from .teacher_forcing import teacher_forced

log = logging.getLogger(__name__)
PROGRESS_KEYS = ("examples_seen", "tokens_seen", "target_tokens_seen", "truncated_examples", "skipped_lines")


def rng_states() -> dict:
    """Global random states in a form ``torch.load(weights_only=True)`` accepts (no numpy arrays)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
            "python": random.getstate()}


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    kind, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    random.setstate(states["python"])


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the batch's examples."""


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Learning-rate factor: linear warmup from 0, then cosine decay to ``min_ratio``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class OneStepLM(L.LightningModule):
    """Trains and validates the one-step model.

    Args:
        preset: Model size: ``micro``, ``tiny`` (the original's) or ``small``.
        model_overrides: ModelConfig fields to change, e.g. ``{n_positions: 1024, embed_dropout: 0.0}``.
            ``vocab_size`` always follows the tokenizer.
        tokenizer_file: A tokenizers JSON file; None: the domain tokenizer shipped with the package.
        tokenizer_json: The tokenizer itself; filled in automatically so checkpoints are self-contained.
        max_length: Tokens an example may fill; None: the model's ``n_positions`` less its point prefix.
        input_embedder: What the model reads of each problem's points before the tokens: ``none``, ``e2e``
            (the original's, 64 prefix positions) or ``set`` (16); see `embedders`.
        context: ``basic``: the context line as the data has it; ``rich``: statistics of the problem's y
            appended to it (the original's text alternative to an embedder; see `data.describe`).
        include_target_token: Also train on predicting ``<TARGET>``, as the original did.
        init_from: Start from an HF GPT-Neo directory (``config.json`` + weights) of the original system.
        learning_rate: Peak AdamW learning rate.
        weight_decay: Decay applied to matrices only (not to biases or LayerNorm weights).
        betas: AdamW betas.
        warmup_steps: Linear warmup, in optimizer steps.
        min_lr_ratio: The cosine schedule ends at ``learning_rate * min_lr_ratio``.
        compile: Wrap the model in ``torch.compile`` (GPU runs; off on CPU tests).
        on_nonfinite: ``stop`` (save the last good state and raise) or ``skip`` the batch.
    """

    def __init__(
        self,
        preset: str = "tiny",
        model_overrides: dict[str, Any] | None = None,
        tokenizer_file: str | None = None,
        tokenizer_json: str | None = None,
        max_length: int | None = None,
        include_target_token: bool = False,
        input_embedder: Literal["none", "e2e", "set"] = "none",
        context: Literal["basic", "rich"] = "basic",
        init_from: str | None = None,
        learning_rate: float = 1e-4,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 4000,
        min_lr_ratio: float = 0.1,
        compile: bool = False,
        on_nonfinite: Literal["stop", "skip"] = "stop",
    ):
        super().__init__()
        if tokenizer_json is not None:
            self.tokenizer = SRTokenizer.from_str(tokenizer_json)
        else:
            self.tokenizer = SRTokenizer.load(tokenizer_file)
        self.save_hyperparameters(logger=False)
        self.hparams.tokenizer_json = self.tokenizer.to_str()
        self.model = self._build_model(preset, {**(model_overrides or {}), "input_embedder": input_embedder},
                                       init_from)
        self.hparams.init_from = None  # the weights now live in the checkpoint
        self.task = OneStepTask.for_model(self.tokenizer, self.model, max_length, include_target_token, context)
        if compile:
            self.model.compile()  # in place: checkpoint keys stay those of the plain model
        vocab = self.model.config.vocab_size
        self.val_metrics = OneStepMetrics(vocab, prefix="val/")
        self.test_metrics = self.val_metrics.clone(prefix="test/")
        self.first_tokens = FirstTokenCounts(vocab)
        self.progress = dict.fromkeys(PROGRESS_KEYS, 0)

    def _build_model(self, preset: str, overrides: dict[str, Any], init_from: str | None) -> GPTNeo:
        """A new model of ``preset``, or the weights of the HF GPT-Neo directory ``init_from``.

        An imported model brings its shape, and its ``tokenizer.json`` unless a tokenizer was
        given; both go into the hyperparameters so the checkpoint rebuilds them without the directory.
        """
        if init_from is not None:
            from .interop import load_for_fine_tuning

            wanted = overrides.pop("input_embedder")
            given = self.hparams.tokenizer_file is not None or self.hparams_initial.tokenizer_json is not None
            model, self.tokenizer = load_for_fine_tuning(init_from, self.tokenizer if given else None, overrides)
            if wanted not in ("none", model.config.input_embedder):
                raise ValueError(f"{init_from} reads {model.config.input_embedder!r} points, not {wanted!r}")
            self.hparams.tokenizer_json = self.tokenizer.to_str()
            self.hparams.input_embedder = model.config.input_embedder
            self.hparams.model_overrides = {k: v for k, v in vars(model.config).items()
                                            if k not in ("vocab_size", "input_embedder")}
            return model
        config = ModelConfig.preset(preset, **{**overrides, "vocab_size": self.tokenizer.vocab_size})
        return GPTNeo(config)


    # -- loss -----------------------------------------------------------------------------
    def forward(self, input_ids: Tensor, output_mask: Tensor | None = None, prefix: Tensor | None = None) -> Tensor:
        return self.model(input_ids, output_mask=output_mask, prefix=prefix)

    def _train_nll(self, batch: dict) -> tuple[Tensor, Tensor, Tensor]:
        """(summed NLL, logits, labelled tokens): the last block and the head run on labelled positions only."""
        labels = batch["labels"]
        mask = labels != IGNORE
        targets = labels[mask]
        hidden = self(batch["input_ids"], output_mask=mask, prefix=self.model.point_prefix(batch))
        logits = self.model.lm_head(hidden)
        nll_sum = F.cross_entropy(logits.float(), targets, reduction="sum")
        if not targets.numel():  # a label-free padding batch: keep every parameter in the graph
            nll_sum = nll_sum.nan_to_num(0.0) + 0.0 * hidden.sum()
        return nll_sum, logits, targets

    def training_step(self, batch: dict, batch_idx: int) -> Tensor | None:
        nll_sum, _, targets = self._train_nll(batch)
        loss = nll_sum / max(1, targets.numel())
        if not self._count_progress(batch, targets, finite=bool(torch.isfinite(loss))):
            return self._nonfinite(batch, loss)
        self.log("train/loss", loss, prog_bar=True, batch_size=max(1, batch["n_examples"]))
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=1)
        self.log("step", float(self.global_step + 1), batch_size=1)  # this batch makes update N: log it at N
        epoch_fraction = self.current_epoch + (batch_idx + 1) / max(1, self.trainer.num_training_batches)
        self.log_dict({f"progress/{k}": float(v) for k, v in self.progress.items()}, batch_size=1)
        self.log("progress/epoch", epoch_fraction, batch_size=1)
        return loss

    def _count_progress(self, batch: dict, targets: Tensor, finite: bool) -> bool:
        """Add this step's counts, summed over all processes; False when any loss is non-finite."""
        skipped = sum(batch.get("skipped", {}).values())  # bad lines the stream dropped from this batch
        counts = torch.tensor([batch["n_examples"], batch["n_tokens"], targets.numel(), batch["n_truncated"],
                               skipped, 0 if finite else 1], dtype=torch.float64, device=self.device)
        counts = self.trainer.strategy.reduce(counts, reduce_op="sum")
        for key, value in zip(PROGRESS_KEYS, counts.tolist()):
            self.progress[key] += int(value)
        return counts[-1].item() == 0

    def _nonfinite(self, batch: dict, loss: Tensor) -> None:
        step, sources = self.global_step, batch["sources"]
        shown = ", ".join(sources[:8]) + (f" and {len(sources) - 8} more" if len(sources) > 8 else "")
        if self.hparams.on_nonfinite == "skip":
            log.warning("non-finite loss (%s) at step %d: batch skipped (examples %s)", loss.item(), step, shown)
            return None
        path = Path(self.trainer.log_dir or ".") / "checkpoints" / f"nonfinite-step{step}-last-good.ckpt"
        self.trainer.save_checkpoint(path)
        raise NonFiniteLossError(f"non-finite loss at step {step} (examples {shown}); "
                                 f"the last good state is saved in {path}")

    # -- validation -----------------------------------------------------------------------
    def _step(self, batch: dict, metrics: OneStepMetrics) -> None:
        """The teacher-forced pass the evaluation report runs too, into ``metrics``.

        Logged at the number of optimizer updates the model has had (as checkpoint names):
        Lightning would log them one step earlier (its counter advances after validation).
        """
        out = teacher_forced(self.model, batch)
        metrics.update(out)
        self.first_tokens.update(out)
        self.log("step", float(self.global_step), on_step=False, on_epoch=True, batch_size=1, sync_dist=True)
        for name, metric in metrics.items():
            self.log(name, metric, on_step=False, on_epoch=True, prog_bar=name.endswith("/loss"))

    def on_validation_epoch_start(self) -> None:
        self.first_tokens.reset()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, self.val_metrics)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, self.test_metrics)

    # -- optimisation ---------------------------------------------------------------------
    def configure_optimizers(self) -> dict:
        h = self.hparams
        params = [p for p in self.model.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": h.weight_decay, "name": "matrices"},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0, "name": "vectors"},
        ]
        fused = self.device.type == "cuda"
        optimizer = torch.optim.AdamW(groups, lr=h.learning_rate, betas=tuple(h.betas), fused=fused)
        total = self.trainer.estimated_stepping_batches
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, h.warmup_steps, int(total), h.min_lr_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # -- checkpoints ----------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Counters and random states too: a resumed run draws the same dropout masks."""
        checkpoint["progress"] = dict(self.progress)
        checkpoint["rng_states"] = rng_states()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.progress.update(checkpoint.get("progress", {}))
        if "rng_states" in checkpoint:
            set_rng_states(checkpoint["rng_states"])

    def on_fit_start(self) -> None:
        """Put the tokenizer beside the checkpoints so a run directory is self-contained, and say what trains."""
        log_dir = self.trainer.log_dir  # a broadcast: every rank must ask
        if self.trainer.is_global_zero and log_dir is not None:
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            self.tokenizer.save(Path(log_dir) / "tokenizer.json")
        if self.trainer.is_global_zero:
            log.info("model: %s", self.describe())

    def describe(self) -> str:
        """One line with the model's real figures (Lightning's summary table counts 0 FLOPs for it)."""
        c = self.model.config
        return (f"GPT-Neo, {self.model.num_parameters() / 1e6:.2f} M parameters ({c.n_layers} layers, hidden {c.hidden_size}, "
                f"{c.n_heads} heads, {c.n_positions:,} positions, vocabulary {c.vocab_size:,})")
