"""The one text layout shared by data generation, training and inference.

The original system built training prompts and inference prompts in two places and they
drifted apart (operator order, generation number). Everything that turns a record into text,
or search state into a record, lives here so the two can never disagree.

Two kinds of example share the layout: one-step (``context`` + ``population`` -> one member of
the next generation) and direct (``context`` alone, with the problem's points, -> the problem's
whole expression): ``<|endoftext|><CONTEXT>{context}<TARGET>{target}<|endoftext|>``, whose
context names the primitives without a generation (`direct_context`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace

EOS = "<|endoftext|>"
CONTEXT = "<CONTEXT>"
POPULATION = "<POPULATION>"
FITNESS = "<FITNESS>"
TARGET = "<TARGET>"
SPECIAL_TOKENS = (EOS, CONTEXT, POPULATION, FITNESS, TARGET)


class BadRecord(ValueError):
    """A JSONL record that cannot become a training pair (the message says why)."""


def format_constant(value: float) -> str:
    """Constants print as Python floats (``1.0``), as in the original."""
    return repr(float(value))


def direct_context(n_vars: int, binary_ops: Sequence[str], unary_ops: Sequence[str],
                   constants: Sequence[float]) -> str:
    """``3 variables | ops: *,+,- | constants: 1.0``: sorted binary ops, then sorted unary ops."""
    ops = ",".join([*sorted(binary_ops), *sorted(unary_ops)])
    consts = ",".join(format_constant(c) for c in constants)
    return f"{n_vars} variables | ops: {ops} | constants: {consts}"


def context_text(
    generation: int,
    n_vars: int,
    binary_ops: Sequence[str],
    unary_ops: Sequence[str],
    constants: Sequence[float],
) -> str:
    """``generation: 0 | 3 variables | ops: *,+,- | constants: 1.0``: the one-step context line."""
    return f"generation: {generation} | {direct_context(n_vars, binary_ops, unary_ops, constants)}"


def format_fitness(fitness: float) -> str:
    return f"{fitness:.5f}"


def population_text(expressions: Sequence[str], fitnesses: Sequence[float]) -> str:
    """``{expr} <FITNESS>{fitness:.5f}`` items joined by single spaces."""
    if len(expressions) != len(fitnesses):
        raise ValueError(f"{len(expressions)} expressions but {len(fitnesses)} fitnesses")
    return " ".join(f"{e} {FITNESS}{format_fitness(f)}" for e, f in zip(expressions, fitnesses))


def population_items(population: str) -> list[tuple[str, str]]:
    """Split a population text back into ``(expression, fitness text)`` items."""
    parts = population.split(f" {FITNESS}")
    if len(parts) < 2:
        return []
    items = []
    expression = parts[0]
    for part in parts[1:]:
        fitness, _, following = part.partition(" ")
        items.append((expression, fitness))
        expression = following
    return items


def make_record(
    context: str,
    population: str | None,
    target: str,
    expression_id: int | None = None,
    metadata: dict | None = None,
) -> dict:
    """A record with the original's key order; a direct one (``population`` None) has no population."""
    record: dict = {"context": context} if population is None else {"context": context, "population": population}
    record["target"] = target
    if expression_id is not None:
        record["expression_id"] = expression_id
    if metadata is not None:
        record["metadata"] = metadata
    return record


def dump_record(record: dict) -> str:
    """One JSONL line (without newline), byte-identical to the original's ``json.dumps``."""
    return json.dumps(record)


@dataclass(frozen=True)
class Pair:
    """One training example: what the model reads and the expression it must write.

    Records of the original schema keep ``context`` and ``population`` apart so that an
    over-long prompt can lose population items; the generic form carries a ready ``prompt``.
    """

    target: str
    context: str | None = None
    population: str | None = None
    prompt: str | None = None
    expression_id: int | None = None
    metadata: dict | None = None
    source: str = ""
    inline_points: tuple[list, list] | None = None
    """``(X_data, y_data)`` when the record carries its points itself (the original's direct format)."""

    @property
    def direct(self) -> bool:
        """A direct example: the context (and the points) alone, no population."""
        return self.prompt is None and self.population is None

    @property
    def input_text(self) -> str:
        """The input part the original tokenized on its own."""
        if self.prompt is not None:
            return EOS + self.prompt
        if self.population is None:
            return f"{EOS}{CONTEXT}{self.context}"
        return f"{EOS}{CONTEXT}{self.context}{POPULATION}{self.population}"

    @property
    def target_text(self) -> str:
        """The target part: ``<TARGET>``, the expression and the closing ``<|endoftext|>``."""
        return f"{TARGET}{self.target}{EOS}"

    @property
    def prompt_text(self) -> str:
        """What inference feeds the model: everything up to and including ``<TARGET>``."""
        return self.input_text + TARGET

    @property
    def text(self) -> str:
        return self.input_text + self.target_text

    def with_population(self, population: str) -> Pair:
        """The same pair with a shorter population (used to fit the context length)."""
        return replace(self, population=population)


def _require_string(obj: dict, key: str) -> str:
    if key not in obj:
        raise BadRecord(f"missing field {key!r}")
    value = obj[key]
    if not isinstance(value, str):
        raise BadRecord(f"field {key!r} is {type(value).__name__}, not a string")
    return value


def pair_from_record(obj: object, source: str = "") -> Pair:
    """Validate one decoded JSON value and turn it into a `Pair` (original or generic form)."""
    if not isinstance(obj, dict):
        raise BadRecord(f"expected a JSON object, got {type(obj).__name__}")
    target = _require_string(obj, "target")
    if not target.strip():
        raise BadRecord("empty target")
    expression_id = obj.get("expression_id")
    if expression_id is not None and (isinstance(expression_id, bool) or not isinstance(expression_id, int)):
        raise BadRecord(f"field 'expression_id' is {type(expression_id).__name__}, not an integer")
    metadata = obj.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise BadRecord(f"field 'metadata' is {type(metadata).__name__}, not an object")
    points = _inline_points(obj)
    if "prompt" in obj and "context" not in obj and "population" not in obj:
        return Pair(target, prompt=_require_string(obj, "prompt"), expression_id=expression_id,
                    metadata=metadata, source=source, inline_points=points)
    population = _require_string(obj, "population") if "population" in obj else None  # None: direct
    return Pair(target, _require_string(obj, "context"), population,
                expression_id=expression_id, metadata=metadata, source=source, inline_points=points)


def _inline_points(obj: dict) -> tuple[list, list] | None:
    """``(X_data, y_data)`` of a record that carries both as lists; one without the other is bad input."""
    if "X_data" not in obj and "y_data" not in obj:
        return None
    X, y = obj.get("X_data"), obj.get("y_data")
    if not isinstance(X, list) or not isinstance(y, list):
        raise BadRecord("fields 'X_data' and 'y_data' must both be lists")
    return X, y
