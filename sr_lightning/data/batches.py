"""From pairs to padded tensors: encoding, fitting the context length, target-only labels.

A batch is padded to its own longest sequence (optionally rounded up to a multiple, which keeps
the number of distinct shapes small on GPUs), never to the context length. Labels are already
shifted: ``labels[b, t]`` is the token the model must predict from position ``t``, and -100
everywhere except the target, so the LM head can run on ``hidden[labels != -100]`` alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from ..sr.problems import Problem
from .format import FITNESS, Pair, population_items
from .stream import LineReport
from .tokenizer import SRTokenizer

IGNORE = -100


@dataclass
class Encoded:
    """One example as token ids: the input part and the target part (``<TARGET>`` ... eos)."""

    input_ids: list[int]
    target_ids: list[int]
    source: str
    truncated: bool = False
    points: Problem | None = None
    """The problem whose points the model reads with this example (None when it reads none)."""


def _drop_population_items(pair: Pair, keep: int) -> Pair:
    items = population_items(pair.population or "")[:keep]
    return pair.with_population(" ".join(f"{e} {FITNESS}{f}" for e, f in items))


def fit_to_length(pair: Pair, encoded: Encoded, tokenizer: SRTokenizer, max_length: int) -> Encoded | None:
    """Drop population items from the end until the example fits; None when it never can.

    Target tokens are never cut: an example whose target part alone (plus the context) does not
    fit is skipped by the caller and counted.
    """
    if len(encoded.input_ids) + len(encoded.target_ids) <= max_length:
        return encoded
    if pair.population is None:
        return None
    keep = len(population_items(pair.population))
    while keep > 0:
        overflow = len(encoded.input_ids) + len(encoded.target_ids) - max_length
        if overflow <= 0:
            return replace(encoded, truncated=True)
        per_item = max(1, len(encoded.input_ids) // (keep + 1))
        keep = max(0, keep - max(1, overflow // per_item))
        encoded = replace(encoded, input_ids=tokenizer.encode(_drop_population_items(pair, keep).input_text))
    fits = len(encoded.input_ids) + len(encoded.target_ids) <= max_length
    return replace(encoded, truncated=True) if fits else None


def fitted_pairs(pairs: Sequence[Pair], tokenizer: SRTokenizer, max_length: int,
                 report: LineReport) -> list[tuple[Pair, Encoded]]:
    """Encode and fit every pair, kept beside its encoding; those that cannot fit are reported and left out."""
    kept = []
    for pair, (input_ids, target_ids) in zip(pairs, tokenizer.encode_pairs(pairs)):
        fitted = fit_to_length(pair, Encoded(input_ids, target_ids, pair.source), tokenizer, max_length)
        if fitted is None:
            report.skip(pair.source, f"too long (more than {max_length} tokens without its population)")
        else:
            kept.append((pair, fitted))
    return kept


def encode_pairs(pairs: Sequence[Pair], tokenizer: SRTokenizer, max_length: int,
                 report: LineReport) -> list[Encoded]:
    """The encodings of `fitted_pairs` alone (what a batch needs)."""
    return [example for _, example in fitted_pairs(pairs, tokenizer, max_length, report)]


def collate(examples: Sequence[Encoded], pad_id: int, *, include_target_token: bool = False,
            pad_to_multiple: int = 1) -> dict:
    """Right-pad to the longest example (rounded up to ``pad_to_multiple``) and build labels.

    ``target_positions[b]`` is the position of ``<TARGET>``: its logits predict the first
    target token. With ``include_target_token`` the prediction of ``<TARGET>`` itself is
    labelled too, as the original did.
    """
    lengths = [len(e.input_ids) + len(e.target_ids) for e in examples]
    width = max(lengths, default=1)
    width = -(-width // pad_to_multiple) * pad_to_multiple
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    target_positions = torch.zeros(len(examples), dtype=torch.long)
    for row, example in enumerate(examples):
        ids = example.input_ids + example.target_ids
        input_ids[row, : len(ids)] = torch.tensor(ids)
        start = len(example.input_ids)  # position of <TARGET>
        first_label = start - 1 if include_target_token else start
        labels[row, first_label : len(ids) - 1] = input_ids[row, first_label + 1 : len(ids)]
        target_positions[row] = start
    return {
        "input_ids": input_ids,
        "labels": labels,
        "target_positions": target_positions,
        "n_examples": len(examples),
        "n_tokens": sum(lengths),
        "n_truncated": sum(e.truncated for e in examples),
        "sources": [e.source for e in examples],
    }
