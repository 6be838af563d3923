"""Validation metrics that stay exact under DDP.

Every state is a sum declared with ``dist_reduce_fx="sum"``, so torchmetrics adds the
states of all processes before ``compute()``: the value logged is the one of the whole
validation set, not a mean of per-rank or per-batch means. Updates with no rows (a batch
without labels) are allowed and change nothing.

Why these metrics: the original model reached 61.8% first-token accuracy while always
guessing ``(`` would have scored 77.8% (SPEC section 9). Logging ``FirstTokenAccuracy``
next to ``FirstTokenMajorityBaseline`` makes such an inversion visible during training.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.nn import Module
from torchmetrics import Metric, MetricCollection

if TYPE_CHECKING:
    from .teacher_forcing import TeacherForced


class _SumRatio(Metric):
    """sum(numerator) / sum(denominator) over everything seen; NaN when nothing was seen.

    NaN (not 0) on an empty denominator, so "no data" can never pass for a real score.
    Float64 states keep integer counts exact far beyond any validation set.
    """

    full_state_update = False
    is_differentiable = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("numerator", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("denominator", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def _accumulate(self, numerator: Tensor | float, denominator: Tensor | int) -> None:
        self.numerator += torch.as_tensor(numerator).detach().to(self.numerator)
        self.denominator += torch.as_tensor(denominator).detach().to(self.denominator)

    def compute(self) -> Tensor:
        return (self.numerator / self.denominator).float()


def predicted_tokens(logits_or_predictions: Tensor) -> Tensor:
    """Token ids from logits ``[N, V]`` (argmax; ties go to the lowest id) or ids ``[N]`` as is."""
    if logits_or_predictions.ndim == 2:
        return logits_or_predictions.argmax(dim=-1)
    if logits_or_predictions.ndim == 1 and not logits_or_predictions.is_floating_point():
        return logits_or_predictions
    raise ValueError(
        f"expected logits [N, V] or integer predictions [N], got {tuple(logits_or_predictions.shape)} "
        f"{logits_or_predictions.dtype}"
    )


class TokenAccuracy(_SumRatio):
    """Share of labelled target tokens predicted exactly (greedy argmax).

    ``update(logits [M, V] or predictions [M], targets [M])``: pass only labelled positions.
    """

    higher_is_better = True

    def update(self, logits_or_predictions: Tensor, targets: Tensor) -> None:
        predictions = predicted_tokens(logits_or_predictions)
        if targets.ndim != 1 or predictions.shape != targets.shape:
            raise ValueError(f"predictions {tuple(predictions.shape)} and targets {tuple(targets.shape)} must be [M]")
        self._accumulate((predictions == targets).sum(), targets.numel())


class FirstTokenAccuracy(TokenAccuracy):
    """Share of examples whose first target token (the one after ``<TARGET>``) is predicted.

    ``update(logits [N, V], targets [N])`` with one row per example: the logits at the
    ``<TARGET>`` position. A separate class from ``TokenAccuracy`` because each example counts
    once here, whatever the length of its target.
    """


class TargetTokenNLL(_SumRatio):
    """Mean negative log-likelihood per target token: the validation loss to monitor.

    ``update(nll_sum, n_tokens)``: the summed per-token NLL of a batch and its labelled
    token count. Summing before dividing weighs every token equally across batches and ranks.
    """

    higher_is_better = False

    def update(self, nll_sum: Tensor | float, n_tokens: Tensor | int) -> None:
        self._accumulate(nll_sum, n_tokens)


class TargetNLL(_SumRatio):
    """Mean negative log-likelihood of a whole target (summed over its tokens), per example.

    ``update(nll_sum, n_targets)``: the summed per-token NLL of a batch and its example count.
    Unlike the per-token loss it does not favour models that are good only on long targets.
    """

    higher_is_better = False

    def update(self, nll_sum: Tensor | float, n_targets: Tensor | int) -> None:
        self._accumulate(nll_sum, n_targets)


def majority_share(counts: Tensor) -> Tensor:
    """max(counts) / sum(counts): the accuracy of always guessing the most common token; NaN if empty."""
    counts = counts.to(torch.float64)
    return (counts.max() / counts.sum()).float()


class _TokenCounter(Metric):
    """A count per token id (``vocab_size`` of them), summed across updates and processes."""

    full_state_update = False
    is_differentiable = False

    def __init__(self, vocab_size: int, **kwargs) -> None:
        super().__init__(**kwargs)
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be positive, got {vocab_size}")
        self.vocab_size = vocab_size
        self.add_state("counts", torch.zeros(vocab_size, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, tokens: Tensor) -> None:
        """Count token ids ``[N]``, e.g. the first target tokens or the first predicted tokens."""
        if tokens.ndim != 1 or tokens.is_floating_point():
            raise ValueError(f"expected integer token ids [N], got {tuple(tokens.shape)} {tokens.dtype}")
        counts = torch.bincount(tokens.detach(), minlength=self.vocab_size)
        if counts.numel() > self.vocab_size:
            raise ValueError(f"token id {counts.numel() - 1} is outside the vocabulary of {self.vocab_size}")
        self.counts += counts.to(self.counts)


class TokenHistogram(_TokenCounter):
    """``compute()`` -> the count of every token id ``[vocab_size]`` (long).

    Used twice by the first-token callback: once on true and once on predicted first tokens.
    ``majority_share(counts)`` turns a histogram into its majority-class accuracy.
    """

    def compute(self) -> Tensor:
        return self.counts.clone()


class FirstTokenMajorityBaseline(_TokenCounter):
    """``update(first_targets [N])``; ``compute()`` -> accuracy of always guessing the most common
    first target token of the data seen (NaN when empty). Log it beside ``FirstTokenAccuracy``:
    a model below it has not learned the first token (the original: 61.8% vs 77.8%).
    """

    def compute(self) -> Tensor:
        return majority_share(self.counts)


class OneStepMetrics(MetricCollection):
    """The five validation numbers, under the names training logs them (``val/loss`` ...).

    One collection, updated from one `TeacherForced` pass, serves training's validation and test
    (with their prefixes) and the evaluation report.
    """

    def __init__(self, vocab_size: int, prefix: str | None = None) -> None:
        super().__init__({
            "loss": TargetTokenNLL(), "nll_per_target": TargetNLL(),
            "first_token_acc": FirstTokenAccuracy(), "token_acc": TokenAccuracy(),
            "first_token_majority": FirstTokenMajorityBaseline(vocab_size),
        }, prefix=prefix, compute_groups=False)

    def update(self, out: TeacherForced) -> None:  # each metric takes its own part of the pass
        metric = dict(self.items(keep_base=True, copy_state=False))
        metric["loss"].update(out.nll_sum, out.targets.numel())
        metric["nll_per_target"].update(out.nll_sum, out.n_examples)
        metric["token_acc"].update(out.logits, out.targets)
        metric["first_token_acc"].update(out.first_logits, out.first_targets)
        metric["first_token_majority"].update(out.first_targets)


class FirstTokenCounts(Module):
    """Histograms of the predicted and the true first target tokens (the distribution tables)."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.predicted, self.true = TokenHistogram(vocab_size), TokenHistogram(vocab_size)

    def update(self, out: TeacherForced) -> None:
        self.predicted.update(out.first_logits.argmax(-1))
        self.true.update(out.first_targets)

    def reset(self) -> None:
        self.predicted.reset()
        self.true.reset()
