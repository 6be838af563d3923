"""The teacher-forced pass that training's validation and the evaluation report share.

Both run the model over a collated batch and score it with `OneStepMetrics`; with one function
for the pass, the report's ``val_loss`` on a file is training's ``val/loss`` on it by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .data.batches import IGNORE
from .model import GPTNeo


@dataclass(frozen=True)
class TeacherForced:
    """What one pass over a batch gives the metrics (rows past ``n_examples`` are padding and left out)."""

    nll_sum: Tensor
    """Summed negative log-likelihood of the labelled (target) tokens."""
    logits: Tensor
    """``[M, V]`` at the labelled positions."""
    targets: Tensor
    """``[M]`` the labelled tokens."""
    first_logits: Tensor
    """``[N, V]`` at each example's ``<TARGET>`` position: they predict the first target token."""
    first_targets: Tensor
    """``[N]`` each example's first target token."""
    prefix: Tensor | None = None
    """``[B, P, H]`` the point prefix the model read (None for a model that reads no points)."""

    @property
    def n_examples(self) -> int:
        return self.first_targets.shape[0]


def teacher_forced(model: GPTNeo, batch: dict) -> TeacherForced:
    """Run ``model`` on a batch of `collate`; the head only sees labelled and ``<TARGET>`` positions."""
    ids = batch["input_ids"]
    labels = batch["labels"].to(ids.device)
    prefix = model.point_prefix(batch)
    hidden = model(ids, prefix=prefix)
    mask = labels != IGNORE
    logits = model.lm_head(hidden[mask])
    targets = labels[mask]
    n = batch["n_examples"]
    rows = torch.arange(n, device=ids.device)
    positions = batch["target_positions"][:n].to(ids.device)
    return TeacherForced(
        nll_sum=F.cross_entropy(logits.float(), targets, reduction="sum"),
        logits=logits, targets=targets,
        first_logits=model.lm_head(hidden[rows, positions]), first_targets=ids[rows, positions + 1], prefix=prefix,
    )
