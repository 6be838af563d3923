"""Neural-guided search: the model as BasicSR's proposal step, compared with plain BasicSR.

As the original did it (SPEC section 8): each generation keeps the elite in slot 0 and asks the
model for P - 1 sampled completions (temperature 0.8) of a prompt that shows the current
population; the first expression of each completion is parsed, and a completion that does not
give a usable expression falls back to an ordinary evolutionary child. The prompt comes from
the formatting functions the data generator uses (``context_text``, ``population_text``), so
the model reads at search time exactly the text it was trained on.

Both methods run on the same problems, with the same seeds and the same generation budget;
a run stops as soon as it is solved (MSE <= 1e-10), so wall time measures time to solve.

Held-out problems are random problems drawn from seeds >= 2**32. The data generator's problem
seeds are 32-bit (``SeedSequence.generate_state``), so these seeds never coincide with a
training problem's; small expressions can still recur by chance.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..data.batches import Encoded, fit_to_length
from ..data.format import Pair, context_text, population_text
from ..data.points import points_batch
from ..decoding import generate
from ..markdown import code_cell, table
from ..model import GPTNeo
from ..sr.expression import ExpressionError, mse, parse, parse_first, predict, r2
from ..sr.problems import Problem, ProblemConfig, named_problems, random_problem
from ..sr.search import SOLVED_MSE, SearchConfig, run_search, usable_proposal
from ..task import OneStepTask

HELD_OUT_SEED_BASE = 2**32  # above every 32-bit seed of the data generator's problems
HELD_OUT_ID_BASE = 10**9  # expression ids of held-out problems, far above any generated id
R2_THRESHOLD = 0.99
METHODS = ("basic", "neural")


@dataclass(frozen=True)
class ComparisonSettings:
    """The budget and sampling of the comparison."""

    generations: int = 50  # generation budget per run (the original's trace setting)
    population_size: int = 20  # P: the elite plus P - 1 proposals or children
    seeds: int = 1  # runs per problem and method (seeds 0 .. seeds-1, shared by both methods)
    held_out: int = 10  # generated held-out problems (besides the named benchmark problems)
    named: bool = True  # include the named benchmark problems
    temperature: float = 0.8  # sampling temperature of proposals (the original's)
    max_new_tokens: int = 64  # decoding budget per proposal
    proposals: int | None = None  # slots the model fills per generation; None: all P - 1 (the original's)
    distinct: bool = False  # a proposal already in the population or the batch falls back to an evolved child

    def __post_init__(self) -> None:
        if self.proposals is not None and not 0 <= self.proposals < self.population_size:
            raise ValueError(f"proposals must be in 0 .. population_size - 1 = {self.population_size - 1}, "
                             f"got {self.proposals}")

    @property
    def proposal_count(self) -> int:
        return self.population_size - 1 if self.proposals is None else self.proposals

    def search_config(self) -> SearchConfig:
        return SearchConfig(population_size=self.population_size, generations=self.generations,
                            early_stop_mse=SOLVED_MSE, early_stop_extra_generations=0)


# -- the proposer ---------------------------------------------------------------------------
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
    """BasicSR's `Proposer`: sampled completions of the current population's prompt, in one batch.

    By default it fills all P - 1 slots (the original's way); ``count`` fills fewer, and the search
    evolves the rest. With ``distinct``, repeats become None and fall back to evolved children too;
    ``repeats`` counts them.
    """

    def __init__(self, model: GPTNeo, task: OneStepTask, config: SearchConfig, n_vars: int,
                 temperature: float = 0.8, max_new_tokens: int = 64, seed: int = 0, count: int | None = None,
                 distinct: bool = False, problem: Problem | None = None):
        if task.reads_points and problem is None:
            raise ValueError("this model reads each problem's points: give NeuralProposer the problem")
        self.model, self.task, self.config, self.n_vars, self.problem = model, task, config, n_vars, problem
        self.prefix = self._prefix(problem)
        self.tokenizer = task.tokenizer
        self.temperature, self.max_new_tokens = temperature, max_new_tokens
        self.count = config.population_size - 1 if count is None else count
        self.distinct, self.repeats = distinct, 0
        self.generator = torch.Generator(device=model.wte.weight.device).manual_seed(seed)

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

    def __call__(self, generation: int, expressions: list[str], fitnesses: list[float]) -> list[str | None]:
        if self.count == 0:
            return []
        prompt = self.prompt_ids(generation, expressions, fitnesses)
        outputs = generate(self.model, [prompt] * self.count, eos_id=self.tokenizer.eos_id,
                           pad_id=self.tokenizer.pad_id, max_new_tokens=self.max_new_tokens,
                           temperature=self.temperature, generator=self.generator,
                           prefixes=None if self.prefix is None else self.prefix.expand(self.count, -1, -1))
        proposals = [first_expression(self.tokenizer.decode(out)) for out in outputs]
        if not self.distinct:
            return proposals
        kept = drop_repeats(proposals, expressions)
        self.repeats += sum(k is None and usable_proposal(p, self.config.max_size) is not None
                            for p, k in zip(proposals, kept))
        return kept


# -- problems -------------------------------------------------------------------------------
def held_out_problems(n: int, config: ProblemConfig = ProblemConfig()) -> list[Problem]:
    """``n`` random problems from seeds no training problem uses (see the module docstring)."""
    return [random_problem(HELD_OUT_ID_BASE + i, HELD_OUT_SEED_BASE + i, config) for i in range(n)]


def benchmark_problems(settings: ComparisonSettings) -> list[Problem]:
    named = list(named_problems().values()) if settings.named else []
    return named + held_out_problems(settings.held_out)


# -- runs -----------------------------------------------------------------------------------
@dataclass
class RunResult:
    """One search run on one problem."""

    problem: str
    expression_id: int
    n_vars: int
    method: str
    seed: int
    best_expression: str
    best_mse: float  # plain MSE on the problem's points
    r2: float
    solved: bool  # best_mse <= 1e-10
    generations: int  # generations evaluated (a solved run stops early)
    generations_to_solve: int | None
    proposals: int  # proposals returned by the model (neural only)
    well_formed: int  # proposals that parsed within max_size and were used (repeats are not used)
    seconds: float
    repeats: int = 0  # well-formed proposals dropped as repeats (``distinct`` only)


def run_one(problem: Problem, method: str, seed: int, settings: ComparisonSettings,
            model: GPTNeo | None = None, task: OneStepTask | None = None) -> RunResult:
    config = settings.search_config()
    proposer = None
    if method == "neural":
        proposer = NeuralProposer(model, task, config, problem.n_vars, settings.temperature,
                                  settings.max_new_tokens, seed=problem.expression_id * 1000 + seed,
                                  count=settings.proposal_count, distinct=settings.distinct, problem=problem)
    start = time.perf_counter()
    trace = run_search(problem.X, problem.y, config, seed=[problem.expression_id, seed], proposer=proposer)
    seconds = time.perf_counter() - start
    prediction = predict(parse(trace.best_expression), problem.X)
    error = mse(problem.y, prediction)
    return RunResult(problem.name, problem.expression_id, problem.n_vars, method, seed, trace.best_expression,
                     error, r2(problem.y, prediction), error <= SOLVED_MSE, len(trace.generations),
                     trace.generations_to_solve(SOLVED_MSE), trace.proposals_total, trace.proposals_well_formed,
                     seconds, proposer.repeats if proposer else 0)


def compare(problems: Sequence[Problem], settings: ComparisonSettings, model: GPTNeo,
            task: OneStepTask) -> list[RunResult]:
    """Both methods on every problem and seed."""
    tasks = [(p, m, s) for p in problems for s in range(settings.seeds) for m in METHODS]
    return [run_one(p, m, s, settings, model, task)
            for p, m, s in tqdm(tasks, unit="run", desc="searching", disable=None)]


# -- summaries ------------------------------------------------------------------------------
def summarize(results: Sequence[RunResult]) -> dict[str, dict[str, Any]]:
    """Per method: solve rate, median best MSE, R^2 >= 0.99 rate, generations to solve, proposals, time."""
    summary = {}
    for method in METHODS:
        runs = [r for r in results if r.method == method]
        if not runs:
            continue
        solved = [r.generations_to_solve for r in runs if r.solved and r.generations_to_solve is not None]
        proposals = sum(r.proposals for r in runs)
        seeds = sorted({r.seed for r in runs})
        summary[method] = {
            "runs": len(runs),
            "solve_rate": sum(r.solved for r in runs) / len(runs),
            "solved_by_seed": [sum(r.solved for r in runs if r.seed == seed) for seed in seeds],
            "median_best_mse": statistics.median(r.best_mse for r in runs),
            "r2_rate": sum(r.r2 >= R2_THRESHOLD for r in runs) / len(runs),
            "median_generations_to_solve": statistics.median(solved) if solved else None,
            "well_formed_rate": sum(r.well_formed + r.repeats for r in runs) / proposals if proposals else None,
            "repeat_rate": sum(r.repeats for r in runs) / proposals if proposals else None,
            "wall_seconds": sum(r.seconds for r in runs),
            "mean_seconds_per_run": statistics.fmean(r.seconds for r in runs),
        }
    return summary


def solved_pairs(results: Sequence[RunResult]) -> dict[str, int]:
    """Runs (problem, seed) solved by both methods or by one only: where the methods differ, not just how much."""
    solved = {(r.expression_id, r.seed, r.method): r.solved for r in results}
    pairs = {(problem, seed) for problem, seed, _ in solved}
    outcome = [(solved.get((*pair, "basic"), False), solved.get((*pair, "neural"), False)) for pair in pairs]
    return {"both": outcome.count((True, True)), "basic_only": outcome.count((True, False)),
            "neural_only": outcome.count((False, True)), "neither": outcome.count((False, False))}


SUMMARY_COLUMNS = ("runs", "solve_rate", "solved_by_seed", "median_best_mse", "r2_rate", "median_generations_to_solve",
                   "well_formed_rate", "repeat_rate", "wall_seconds")


def summary_table(summary: dict[str, dict[str, Any]]) -> list[str]:
    return table(("method", *SUMMARY_COLUMNS), [(m, *(s[c] for c in SUMMARY_COLUMNS)) for m, s in summary.items()],
                 spec=".3g")


def problem_table(results: Sequence[RunResult]) -> list[str]:
    """One row per problem and method: solved runs, median best MSE, best expression of the first seed."""
    rows = []
    keys = dict.fromkeys((r.problem, r.n_vars, r.method) for r in results)
    for problem, n_vars, method in keys:
        runs = [r for r in results if (r.problem, r.method) == (problem, method)]
        gens = [r.generations_to_solve for r in runs if r.generations_to_solve is not None]
        rows.append((problem, n_vars, method, f"{sum(r.solved for r in runs)}/{len(runs)}",
                     statistics.median(r.best_mse for r in runs), min(gens) if gens else None,
                     sum(r.seconds for r in runs), code_cell(runs[0].best_expression)))
    return table(("problem", "vars", "method", "solved", "median MSE", "first solve gen", "seconds",
                   "best expression (seed 0)"), rows, spec=".3g")


def render_markdown(summary: dict[str, dict[str, Any]], results: Sequence[RunResult],
                    settings: ComparisonSettings, checkpoint: str) -> str:
    lines = ["# Neural-guided search vs BasicSR", "",
             f"Checkpoint `{checkpoint}`; {settings.generations} generations of {settings.population_size}, "
             f"{settings.seeds} seed(s) per problem; the model fills {settings.proposal_count} of "
             f"{settings.population_size - 1} slots per generation"
             f"{' with distinct proposals' if settings.distinct else ''}, "
             f"sampled at temperature {settings.temperature}; "
             f"solved = MSE <= {SOLVED_MSE:g} on the problem's points.", "", "## Summary", ""]
    pairs = solved_pairs(results)
    lines += summary_table(summary) + ["", f"Runs solved by both methods: {pairs['both']}, by BasicSR only: "
                                       f"{pairs['basic_only']}, by neural-guided only: {pairs['neural_only']}, "
                                       f"by neither: {pairs['neither']}.", "", "## Per problem", ""]
    lines += problem_table(results)
    return "\n".join(lines) + "\n"


def write_results(summary: dict[str, dict[str, Any]], results: Sequence[RunResult], settings: ComparisonSettings,
                  checkpoint: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    document = {"checkpoint": checkpoint, "settings": asdict(settings), "summary": summary,
                "solved_pairs": solved_pairs(results), "runs": [asdict(r) for r in results]}
    (out / "search.json").write_text(json.dumps(document, indent=2) + "\n")
    (out / "search.md").write_text(render_markdown(summary, results, settings, checkpoint))
