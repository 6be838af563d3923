"""A direct model judged as end-to-end SR: does it write the problem's expression from the points?

For each problem the model writes a greedy guess and ``samples`` sampled ones. A guess is valid when
it parses; its constants are then refitted to the points (`sr.refit`), and the best of all guesses
by R^2 is the problem's answer. Reported: exact recovery (the greedy guess, or any guess, is the
same function as the target: `sr.simplify`), the share of problems whose best R^2 >= 0.99, the
median best R^2, and the valid share of all guesses; one row per problem.

`direct_guesses` is also what warm-starts BasicSR (`guided_search`): a problem's sampled guesses.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..data.batches import Encoded
from ..data.format import Pair, direct_context
from ..data.points import points_batch
from ..constrained import ExpressionGrammar, grammar_for
from ..decoding import sample_shared
from ..markdown import code_cell, table
from ..model import GPTNeo
from ..sr.expression import BINARY_OPS, ExpressionError, Expr, parse_first, predict, r2
from ..sr.primitives import Primitives
from ..sr.problems import Problem
from ..sr.refit import refit_constants
from ..sr.search import SearchConfig
from ..sr.simplify import same_function
from ..task import OneStepTask

R2_THRESHOLD = 0.99


@dataclass(frozen=True)
class DirectSettings:
    """How many guesses a direct model gets per problem, and how they are drawn."""

    samples: int = 16  # sampled guesses per problem (best-of-k), besides the greedy one
    temperature: float = 1.0
    max_new_tokens: int = 64
    seed: int = 0
    batch_size: int = 16  # problems per model call
    constrained: bool = False  # sample only well-formed expressions over the problem's primitives


def direct_pair(problem: Problem, config: SearchConfig = SearchConfig()) -> Pair:
    """The direct example of a problem as the generator writes it (target left empty)."""
    return Pair("", direct_context(problem.n_vars, config.binary_ops, config.unary_ops, config.constants))


def _prompt(task: OneStepTask, pair: Pair, problem: Problem) -> list[int]:
    (input_ids, _), = task.tokenizer.encode_pairs([task.described(pair, problem)])
    return task.prompt_ids(Encoded(input_ids, [], "direct"))


def _prefixes(model: GPTNeo, task: OneStepTask, problems: Sequence[Problem]) -> torch.Tensor | None:
    if model.input_embedder is None:
        return None
    with torch.inference_mode():
        return model.point_prefix(points_batch(problems, task.max_points))


def _parsed_first(text: str) -> Expr | None:
    try:
        return parse_first(text)
    except ExpressionError:
        return None


def direct_guesses(model: GPTNeo, task: OneStepTask, pairs: Sequence[Pair], problems: Sequence[Problem],
                   settings: DirectSettings, greedy: bool = True) -> list[list[Expr | None]]:
    """Per problem: its greedy guess (if ``greedy``) then ``samples`` sampled ones, parsed (None: no expression).

    Each problem samples from its own generator (``seed``, expression id), so its guesses do not depend
    on the other problems of the call."""
    if task.mode != "direct":
        raise ValueError("this checkpoint is a one-step model; direct guesses need a model trained with "
                         "--data.mode direct")
    size = settings.batch_size
    chunks = tqdm(range(0, len(pairs), size), unit="batch", desc="direct guesses", disable=None)
    return [row for start in chunks for row in _guesses(model, task, pairs[start:start + size],
                                                        problems[start:start + size], settings, greedy)]


def grammar_of(task: OneStepTask, pair: Pair, config: SearchConfig = SearchConfig()) -> ExpressionGrammar:
    """The well-formed expressions over the primitives the pair's context line names, within the search's
    size and depth limits."""
    primitives = Primitives.from_context(pair.context)
    if primitives is None:
        raise ValueError(f"{pair.source or 'a direct example'}: no context line naming its primitives to constrain to")
    binary = tuple(sorted(op for op in primitives.ops if op in BINARY_OPS))
    unary = tuple(sorted(op for op in primitives.ops if op not in BINARY_OPS))
    return grammar_for(task.tokenizer, primitives.n_vars, binary, unary, tuple(sorted(primitives.constants)),
                       config.max_size, config.max_depth)


def _guesses(model: GPTNeo, task: OneStepTask, pairs: Sequence[Pair], problems: Sequence[Problem],
             settings: DirectSettings, greedy: bool) -> list[list[Expr | None]]:
    device = model.wte.weight.device
    prompts = [_prompt(task, pair, problem) for pair, problem in zip(pairs, problems)]
    tokenizer = task.tokenizer
    common = {"eos_id": tokenizer.eos_id, "pad_id": tokenizer.pad_id, "max_new_tokens": settings.max_new_tokens,
              "prefixes": _prefixes(model, task, problems),
              "grammars": [grammar_of(task, pair) for pair in pairs] if settings.constrained else None}
    guesses: list[list[list[int]]] = [[] for _ in prompts]
    if greedy:
        guesses = sample_shared(model, prompts, 1, temperature=0.0, **common)
    if settings.samples:
        generators = [torch.Generator(device=device).manual_seed(settings.seed * 1_000_003 + p.expression_id)
                      for p in problems]
        sampled = sample_shared(model, prompts, settings.samples, temperature=settings.temperature,
                                generators=generators, **common)
        guesses = [mine + theirs for mine, theirs in zip(guesses, sampled)]
    return [[_parsed_first(tokenizer.decode(out)) for out in row] for row in guesses]


@dataclass
class Recovery:
    """What a direct model made of one problem."""

    problem: str
    expression_id: int
    target: str
    greedy: str | None  # the greedy guess as written
    best: str | None  # the best guess by R^2, constants refitted
    best_r2: float
    greedy_exact: bool  # the greedy guess is the target's function
    any_exact: bool  # some guess is
    valid: int  # guesses that parse
    guesses: int


def judge(problem: Problem, target: str, guesses: Sequence[Expr | None]) -> Recovery:
    """One problem's row: exact recovery, the best refitted guess and its R^2, valid guesses."""
    truth = parse_first(target)
    valid = [g for g in guesses if g is not None]
    exact = [same_function(g, truth, problem.X) for g in guesses if g is not None]
    best, best_r2 = None, float("-inf")
    for guess in dict.fromkeys(valid):  # each distinct guess once
        fitted = refit_constants(guess, problem.X, problem.y)
        score = r2(problem.y, predict(fitted, problem.X))
        if score > best_r2:
            best, best_r2 = fitted, score
    greedy = guesses[0] if guesses else None
    return Recovery(problem.name, problem.expression_id, target, None if greedy is None else str(greedy),
                    None if best is None else str(best), best_r2,
                    greedy is not None and same_function(greedy, truth, problem.X), any(exact), len(valid),
                    len(guesses))


def recover(model: GPTNeo, task: OneStepTask, examples: Sequence[tuple[Pair, Problem]],
            settings: DirectSettings = DirectSettings()) -> list[Recovery]:
    """Every example's `Recovery` (one per problem: repeated expression ids are judged once)."""
    unique = list({problem.expression_id: (pair, problem) for pair, problem in examples}.values())
    guesses = direct_guesses(model, task, [p for p, _ in unique], [q for _, q in unique], settings)
    return [judge(problem, pair.target, row) for (pair, problem), row in zip(unique, guesses)]


def summarize(rows: Sequence[Recovery], settings: DirectSettings) -> dict[str, Any]:
    if not rows:
        return {"problems": 0}
    median = statistics.median(r.best_r2 for r in rows)
    return {"problems": len(rows), "guesses_per_problem": 1 + settings.samples,
            "greedy_exact_rate": sum(r.greedy_exact for r in rows) / len(rows),
            "exact_rate": sum(r.any_exact for r in rows) / len(rows),
            "r2_rate": sum(r.best_r2 >= R2_THRESHOLD for r in rows) / len(rows),
            "median_best_r2": median if np.isfinite(median) else None,
            "valid_rate": sum(r.valid for r in rows) / sum(r.guesses for r in rows)}


def recovery_table(rows: Sequence[Recovery]) -> list[str]:
    body = [(r.problem, code_cell(r.target), code_cell(r.greedy or ""), code_cell(r.best or ""), r.best_r2,
             "yes" if r.greedy_exact else "no", "yes" if r.any_exact else "no", f"{r.valid}/{r.guesses}")
            for r in rows]
    return table(("problem", "target", "greedy", "best (refitted)", "best R^2", "greedy exact", "any exact",
                  "valid"), body, spec=".4g")


def recovery_rows(rows: Sequence[Recovery]) -> list[dict[str, Any]]:
    return [{**asdict(r), "best_r2": r.best_r2 if np.isfinite(r.best_r2) else None} for r in rows]
