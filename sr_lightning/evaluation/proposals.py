"""The model as BasicSR's proposal step: sampled completions of the prompt that shows a run's population.

As the original did it (SPEC section 8): each generation keeps the elite in slot 0 and asks the
model for sampled completions (temperature 0.8) of a prompt that shows the current population;
the first expression of each completion is parsed, and a completion that does not give a usable
expression falls back to an ordinary evolutionary child. The prompt comes from the formatting
functions the data generator uses (``context_text``, ``population_text``), so the model reads at
search time exactly the text it was trained on.

`propose_together` serves many runs with one model call (`lockstep` drives them): each prompt runs
through the model once and its samples continue from its KV cache.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..data.batches import Encoded, fit_to_length
from ..data.format import Pair, context_text, population_text
from ..constrained import grammar_for
from ..data.points import points_batch
from ..decoding import sample_shared
from ..model import GPTNeo
from ..sr.expression import ExpressionError, Expr, parse_first
from ..sr.problems import Problem
from ..sr.search import ProposalRequest, SearchConfig, usable_proposal
from ..task import OneStepTask

CPU_PROMPTS_PER_PASS = 4


def search_pair(generation: int, n_vars: int, config: SearchConfig, expressions: Sequence[str],
                fitnesses: Sequence[float]) -> Pair:
    """The one-step example the search is at, built exactly as the data generator builds it."""
    context = context_text(generation, n_vars, config.binary_ops, config.unary_ops, config.constants)
    return Pair(target="", context=context, population=population_text(expressions, fitnesses))


def first_expression(completion: str) -> str | None:
    """The first expression of a completion, printed canonically; None when there is none."""
    try:
        return str(parse_first(completion))
    except ExpressionError:
        return None


def drop_repeats(proposals: Sequence[str | None], population: Sequence[str]) -> list[str | None]:
    """``proposals`` with None for each one already in ``population`` or earlier in the list.

    A small model collapses onto a few expressions; without this, most of a generation can be
    copies of one member, which the elite already keeps, and the search loses its diversity.
    """
    seen, kept = set(population), []
    for proposal in proposals:
        kept.append(None if proposal in seen else proposal)
        seen.add(proposal)
    return kept


class NeuralProposer:
    """One run's proposer: sampled completions of the prompt that shows its current population.

    By default it fills all P - 1 slots (the original's way); ``count`` fills fewer, and the search
    evolves the rest. With ``distinct``, repeats become None and fall back to evolved children too;
    ``repeats`` counts them. With ``constrained``, every completion is an expression over the problem's
    own primitives (`constrained`). With ``oversample`` K > 1 it samples K x ``count`` completions and keeps
    the ``count`` fittest distinct usable ones, scored by ``screen`` (the run's own fitness function, so a
    screened expression is evaluated once). Called on its own it is BasicSR's `Proposer`; `propose_together`
    serves many runs' proposers with one model call.
    """

    def __init__(self, model: GPTNeo, task: OneStepTask, config: SearchConfig, n_vars: int,
                 temperature: float = 0.8, max_new_tokens: int = 64, seed: int = 0, count: int | None = None,
                 distinct: bool = False, problem: Problem | None = None, constrained: bool = False,
                 oversample: int = 1, screen: Callable[[Expr], tuple[float, float]] | None = None):
        if task.reads_points and problem is None:
            raise ValueError("this model reads each problem's points: give NeuralProposer the problem")
        if oversample < 1 or (oversample > 1 and screen is None):
            raise ValueError(f"oversample must be at least 1 and needs a screen above 1, got {oversample}")
        self.model, self.task, self.config, self.n_vars, self.problem = model, task, config, n_vars, problem
        self.prefix = self._prefix(problem)
        self.tokenizer = task.tokenizer
        self.temperature, self.max_new_tokens = temperature, max_new_tokens
        self.count = config.population_size - 1 if count is None else count
        self.distinct = distinct
        self.drawn = self.well_formed = self.repeats = 0  # completions sampled; of them parsed within max_size;
        # of those, dropped as repeats (``distinct``)
        self.oversample, self.screen = oversample, screen
        self.generator = torch.Generator(device=model.wte.weight.device).manual_seed(seed)
        self.grammar = grammar_for(task.tokenizer, n_vars, config.binary_ops, config.unary_ops, config.constants,
                                   config.max_size, config.max_depth) if constrained else None

    @torch.inference_mode()
    def _prefix(self, problem: Problem | None) -> torch.Tensor | None:
        """The problem's point prefix, computed once per run, for a model that reads points."""
        if self.model.input_embedder is None:
            return None
        return self.model.point_prefix(points_batch([problem], self.task.max_points))

    def prompt_ids(self, generation: int, expressions: Sequence[str], fitnesses: Sequence[float]) -> list[int]:
        """Token ids of the prompt; population members drop from the end if it leaves no room to answer."""
        pair = search_pair(generation, self.n_vars, self.config, expressions, fitnesses)
        if self.problem is not None:
            pair = self.task.described(pair, self.problem)
        (input_ids, _), = self.tokenizer.encode_pairs([pair])
        room = Encoded(input_ids, [self.tokenizer.target_id] * (1 + self.max_new_tokens), "search")
        fitted = fit_to_length(pair, room, self.tokenizer, self.task.max_length)
        if fitted is None:
            raise ValueError(f"the context alone leaves no room for {self.max_new_tokens} new tokens")
        return self.task.prompt_ids(fitted)

    @property
    def samples(self) -> int:
        """Completions drawn per generation."""
        return self.count * self.oversample

    def proposals(self, completions: Sequence[Sequence[int]], expressions: Sequence[str]) -> list[str | None]:
        """The expressions of this run's completions (None where unusable, or a repeat with ``distinct``);
        with ``oversample``, the ``count`` fittest of them."""
        proposals = [first_expression(self.tokenizer.decode(out)) for out in completions]
        usable = [usable_proposal(p, self.config.max_size) is not None for p in proposals]
        self.drawn += len(proposals)
        self.well_formed += sum(usable)
        if self.distinct:
            kept = drop_repeats(proposals, expressions)
            self.repeats += sum(k is None and ok for k, ok in zip(kept, usable))
            proposals = kept
        return self._fittest(proposals) if self.oversample > 1 else proposals

    def _fittest(self, proposals: Sequence[str | None]) -> list[str | None]:
        """Best-of-k: the ``count`` fittest distinct usable proposals, None after them."""
        fitness: dict[str, float] = {}
        for proposal in proposals:
            expr = usable_proposal(proposal, self.config.max_size)
            if expr is not None and proposal not in fitness:
                fitness[proposal] = self.screen(expr)[0]
        best = sorted(fitness, key=fitness.__getitem__, reverse=True)[: self.count]
        return best + [None] * (self.count - len(best))

    def __call__(self, generation: int, expressions: list[str], fitnesses: list[float]) -> list[str | None]:
        return propose_together([(self, ProposalRequest(generation, expressions, fitnesses))])[0]


def prompts_per_pass(device: torch.device) -> int | None:
    """Prompts decoded together. On a CPU, passes of 4 prompts of similar length beat one pass of all
    (each row attends over its pass's longest prompt; measured in BENCHMARKS.md); a GPU takes all at once."""
    return CPU_PROMPTS_PER_PASS if device.type == "cpu" else None


def propose_together(asks: Sequence[tuple[NeuralProposer, ProposalRequest]]) -> list[list[str | None]]:
    """Every run's proposals for the population it is at, from one batched model call: each prompt
    (and point prefix) runs once, its samples continue from its cache, each run draws from its own
    generator. The proposers must share model, task and sampling settings."""
    if not asks or asks[0][0].count == 0:
        return [[] for _ in asks]
    first = asks[0][0]
    if any(p.samples != first.samples or p.model is not first.model or (p.grammar is None) != (first.grammar is None)
           for p, _ in asks):
        raise ValueError("proposers asked together must share the model, the number of samples and constraints")
    prompts = [proposer.prompt_ids(*request) for proposer, request in asks]
    prefixes = None if first.prefix is None else torch.cat([proposer.prefix for proposer, _ in asks])
    outputs = sample_shared(first.model, prompts, first.samples, eos_id=first.tokenizer.eos_id,
                            pad_id=first.tokenizer.pad_id, max_new_tokens=first.max_new_tokens,
                            temperature=first.temperature, generators=[p.generator for p, _ in asks],
                            prefixes=prefixes, prompts_per_pass=prompts_per_pass(first.model.wte.weight.device),
                            grammars=None if first.grammar is None else [p.grammar for p, _ in asks])
    return [proposer.proposals(completions, request.expressions)
            for (proposer, request), completions in zip(asks, outputs)]
