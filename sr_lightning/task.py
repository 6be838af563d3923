"""The task contract: what training, evaluation and search must agree on for a number to mean the same.

An example is text in one layout (`data.format`), turned into ids by one tokenizer, fitted into one
context length, with labels on the same tokens. The LightningModule builds the contract once from
its configuration (its tokenizer, its model's positions, ``max_length``, ``include_target_token``)
and stores what rebuilds it in its checkpoint; LightningCLI hands it to the DataModule when both
are instantiated (``link_arguments``); evaluation and search take it from the checkpoint. Nothing
else loads a tokenizer or picks a length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from .data.batches import Encoded, collate, fitted_pairs
from .data.describe import CONTEXT_KINDS, stats_suffix
from .data.format import BadRecord, Pair
from .data.points import ProblemIndex, points_batch
from .data.stream import LineReport
from .data.tokenizer import SRTokenizer
from .model import GPTNeo
from .sr.problems import Problem

MODES = ("onestep", "direct")


@dataclass(frozen=True)
class OneStepTask:
    """How a one-step example becomes the model's input and labels."""

    tokenizer: SRTokenizer
    """Text to ids and back; its special tokens mark the layout's parts."""
    max_length: int
    """Tokens an example may fill (prompt + target); longer prompts lose population items."""
    include_target_token: bool = False
    """Label the prediction of ``<TARGET>`` too, as the original did (else the target and its eos only)."""
    max_points: int = 0
    """Points of its problem each example brings to the model (the first ones); 0: the model reads none."""
    context: str = "basic"
    """``basic``: the context line as written; ``rich``: statistics of the problem's y appended (`describe`)."""
    mode: str = "onestep"
    """``onestep``: read a population, write one member of the next; ``direct``: read the problem (its points
    and context line), write its whole expression. Set by the data (``--data.mode``)."""

    def __post_init__(self) -> None:
        if self.max_length < 2:
            raise ValueError(f"max_length must be at least 2 tokens, got {self.max_length}")
        if self.context not in CONTEXT_KINDS:
            raise ValueError(f"context must be one of {', '.join(CONTEXT_KINDS)}, got {self.context!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.mode == "direct" and not self.reads_points:
            raise ValueError("a direct model writes the expression from the problem's points: give it an "
                             "input embedder (--model.input_embedder e2e or set) or --model.context rich")

    @property
    def reads_points(self) -> bool:
        """Whether an example needs its problem's points: for the embedder or for the rich context."""
        return bool(self.max_points) or self.context == "rich"

    @classmethod
    def for_model(cls, tokenizer: SRTokenizer, model: GPTNeo, max_length: int | None = None,
                  include_target_token: bool = False, context: str = "basic") -> OneStepTask:
        """The task of ``model``: its point prefix takes its positions from the tokens'."""
        positions = model.config.n_positions - model.prefix_len
        if max_length is not None and max_length > positions:
            raise ValueError(f"max_length {max_length} exceeds the model's {positions} positions for tokens")
        points = model.config.embedder_max_points if model.input_embedder is not None else 0
        return cls(tokenizer, max_length or positions, include_target_token, points, context)

    def of_this_mode(self, pairs: Sequence[Pair], report: LineReport) -> list[Pair]:
        """The pairs of this task's kind; the other kind is reported and left out (a generic prompt is either)."""
        kept = []
        for pair in pairs:
            if pair.prompt is None and pair.direct != (self.mode == "direct"):
                kind, why = ("direct", "no 'population'") if pair.direct else ("one-step", "a 'population'")
                run = "one-step" if self.mode == "onestep" else self.mode
                report.skip(pair.source, f"{kind} example in a {run} run (it has {why}; see --data.mode)")
            else:
                kept.append(pair)
        return kept

    def encode(self, pairs: Sequence[Pair], report: LineReport,
               problems: ProblemIndex | None = None) -> list[tuple[Pair, Encoded]]:
        """Each pair beside its fitted encoding (with its points when the model reads them); a pair that
        cannot fit, is of the other mode, or whose points cannot be found, is reported and left out."""
        pairs = self.of_this_mode(pairs, report)
        if not self.reads_points:
            return fitted_pairs(pairs, self.tokenizer, self.max_length, report)
        if problems is None:
            raise ValueError("this model reads each problem's points: give encode() a ProblemIndex")
        found, usable = {}, []
        for pair in pairs:
            try:
                problem = problems.find(pair)
                usable.append(self.described(pair, problem))
            except BadRecord as error:
                report.skip(pair.source, str(error))
                continue
            found[id(usable[-1])] = problem
        return [(pair, replace(example, points=found[id(pair)]))
                for pair, example in fitted_pairs(usable, self.tokenizer, self.max_length, report)]

    def described(self, pair: Pair, problem: Problem) -> Pair:
        """``pair`` as this task's model reads it: the rich context appends the statistics of the problem's y."""
        if self.context == "basic":
            return pair
        if pair.context is None:
            raise BadRecord("the rich context needs the record's 'context' field (this one has a 'prompt')")
        return replace(pair, context=pair.context + stats_suffix(problem.X, problem.y))

    def collate(self, examples: Sequence[Encoded], pad_to_multiple: int = 1) -> dict:
        """A batch padded to its longest example, labelled as training labels it, with its points if any."""
        batch = collate(examples, self.tokenizer.pad_id, include_target_token=self.include_target_token,
                        pad_to_multiple=pad_to_multiple)
        if self.max_points:
            batch.update(points_batch([example.points for example in examples], self.max_points))
        return batch

    def prompt_ids(self, example: Encoded) -> list[int]:
        """What inference feeds the model: the training sequence up to and including ``<TARGET>``."""
        return example.input_ids + [self.tokenizer.target_id]
