"""Neural-guided search (the model as BasicSR's proposal step, `proposals`) compared with plain BasicSR.

Both methods run on the same problems, with the same seeds and the same budget: generations,
seconds per run (``budget_seconds``; BasicSR then runs more generations) or fitness evaluations per
run (``budget_evaluations``: distinct expressions scored, a guided run's screened samples included);
a run stops as soon as it is solved (MSE <= 1e-10), so its seconds measure time to solve. The
problems are the named benchmark set and held-out generated ones, or a user's file (``problem_file``:
our ``problems.json`` layout or the original's expressions file). The guided runs advance in
lockstep (`lockstep`), many per model call. ``shard`` splits the (problem, seed) runs over
processes or nodes; `merge` puts the shards' results back together.

Held-out problems are random problems drawn from seeds >= 2**32. The data generator's problem
seeds are 32-bit (``SeedSequence.generate_state``), so these seeds never coincide with a
training problem's; small expressions can still recur by chance.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..markdown import code_cell, table
from ..model import GPTNeo
from ..sr.expression import Expr, mse, parse, predict, r2
from ..data.format import BadRecord
from ..data.points import PointsFileError, checked, read_points_file
from ..sr.problems import Problem, ProblemConfig, named_problems, random_problem
from ..sr.search import SOLVED_MSE, BasicSR, RunClock, SearchConfig, Trace
from ..task import OneStepTask
from .checkpoints import EvaluationInputError
from .direct import DirectSettings, direct_guesses, direct_pair
from .lockstep import GuidedRun, run_lockstep
from .proposals import NeuralProposer

HELD_OUT_SEED_BASE = 2**32  # above every 32-bit seed of the data generator's problems
HELD_OUT_ID_BASE = 10**9  # expression ids of held-out problems, far above any generated id
R2_THRESHOLD = 0.99
METHODS = ("basic", "neural", "warm", "warm_neural")  # warm: the first population holds direct guesses
INITS = ("random", "direct")
UNLIMITED_GENERATIONS = 10**9  # with a time budget and no generation limit
TIMING_KEYS = ("wall_seconds", "mean_seconds_per_run", "seconds_per_generation", "solved_per_minute")


@dataclass(frozen=True)
class ComparisonSettings:
    """The budget and sampling of the comparison."""

    generations: int | None = None  # generations per run; None: 50 (the original's), unlimited with another budget
    budget_seconds: float | None = None  # seconds per run (each method the same); None: generations alone
    budget_evaluations: int | None = None  # fitness evaluations per run (each method the same)
    population_size: int = 20  # P: the elite plus P - 1 proposals or children
    seeds: int = 1  # runs per problem and method (seeds 0 .. seeds-1, shared by both methods)
    held_out: int = 10  # generated held-out problems (besides the named benchmark problems)
    named: bool = True  # include the named benchmark problems
    temperature: float = 0.8  # sampling temperature of proposals (the original's)
    max_new_tokens: int = 64  # decoding budget per proposal
    proposals: int | None = None  # slots the model fills per generation; None: all P - 1 (the original's)
    distinct: bool = False  # a proposal already in the population or the batch falls back to an evolved child
    constrained: bool = False  # sample only well-formed expressions over the problem's primitives
    oversample: int = 1  # draw this many times the slots and keep the fittest distinct proposals (best-of-k)
    problem_file: str | None = None  # run on these problems instead of the named and held-out ones
    init: str = "random"  # direct: also runs whose first population holds a direct model's best guesses
    warm: int = 5  # with init direct: that many of the fittest distinct guesses replace random members
    init_samples: int = 16  # with init direct: guesses sampled per problem and seed

    def __post_init__(self) -> None:
        if self.budget_seconds is not None and self.budget_seconds <= 0:
            raise ValueError(f"budget_seconds must be positive, got {self.budget_seconds}")
        if self.budget_evaluations is not None and self.budget_evaluations < 1:
            raise ValueError(f"budget_evaluations must be at least 1, got {self.budget_evaluations}")
        if self.oversample < 1:
            raise ValueError(f"oversample must be at least 1, got {self.oversample}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        if not 0 <= self.warm <= self.population_size:
            raise ValueError(f"warm must be in 0 .. population_size = {self.population_size}, got {self.warm}")
        if self.proposals is not None and not 0 <= self.proposals < self.population_size:
            raise ValueError(f"proposals must be in 0 .. population_size - 1 = {self.population_size - 1}, "
                             f"got {self.proposals}")

    @property
    def proposal_count(self) -> int:
        return self.population_size - 1 if self.proposals is None else self.proposals

    @property
    def generation_limit(self) -> int:
        if self.generations is not None:
            return self.generations
        unlimited = self.budget_seconds is None and self.budget_evaluations is None
        return 50 if unlimited else UNLIMITED_GENERATIONS

    def search_config(self) -> SearchConfig:
        return SearchConfig(population_size=self.population_size, generations=self.generation_limit,
                            early_stop_mse=SOLVED_MSE, early_stop_extra_generations=0,
                            budget_seconds=self.budget_seconds, budget_evaluations=self.budget_evaluations)

    def budget_text(self) -> str:
        limit = None if self.generation_limit == UNLIMITED_GENERATIONS else f"{self.generation_limit} generations"
        seconds = None if self.budget_seconds is None else f"{self.budget_seconds:g} s"
        evaluations = None if self.budget_evaluations is None else f"{self.budget_evaluations} fitness evaluations"
        return " or ".join(x for x in (limit, seconds, evaluations) if x) + " per run"


# -- problems -------------------------------------------------------------------------------
def held_out_problems(n: int, config: ProblemConfig = ProblemConfig()) -> list[Problem]:
    """``n`` random problems from seeds no training problem uses (see the module docstring)."""
    return [random_problem(HELD_OUT_ID_BASE + i, HELD_OUT_SEED_BASE + i, config) for i in range(n)]


def problems_from_file(path: str | Path) -> list[Problem]:
    """A user's problems: our ``problems.json`` layout (id -> name, X, y) or the original's expressions file,
    each checked (n x d finite X, n finite y); a bad one is an error naming the file and the problem."""
    try:
        problems = read_points_file(path)
    except PointsFileError as error:
        raise EvaluationInputError(str(error)) from None
    if not problems:
        raise EvaluationInputError(f"{path}: no problems in this file")
    try:
        return [checked(problem) for _, problem in sorted(problems.items())]
    except BadRecord as error:
        raise EvaluationInputError(f"{path}: {error}") from None


def benchmark_problems(settings: ComparisonSettings) -> list[Problem]:
    """The problems of the comparison: the user's file, else the named set and the held-out ones."""
    if settings.problem_file is not None:
        return problems_from_file(settings.problem_file)
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
    proposals: int  # completions the model sampled (guided runs only; K x the slots with ``oversample`` K)
    well_formed: int  # of them, those that parsed within max_size and were not repeats
    seconds: float
    repeats: int = 0  # well-formed proposals dropped as repeats (``distinct`` only)
    evaluations: int = 0  # fitness evaluations: distinct expressions scored, screened proposals included


def proposer_for(problem: Problem, seed: int, settings: ComparisonSettings, model: GPTNeo,
                 task: OneStepTask, search: BasicSR) -> NeuralProposer:
    """The proposer of a guided run; ``search`` is that run's, whose fitness screens oversampled proposals."""
    return NeuralProposer(model, task, settings.search_config(), problem.n_vars, settings.temperature,
                          settings.max_new_tokens, seed=problem.expression_id * 1000 + seed,
                          count=settings.proposal_count, distinct=settings.distinct, problem=problem,
                          constrained=settings.constrained, oversample=settings.oversample, screen=search.score)


def guided_run(problem: Problem, seed: int, settings: ComparisonSettings, model: GPTNeo, task: OneStepTask,
               guesses: Sequence[Expr | None] | None = None) -> GuidedRun:
    """A guided run, warm-started from ``guesses`` when given."""
    search, clock = search_for(problem, seed, settings), RunClock()
    with clock:
        start = None if guesses is None else warm_population(search, guesses, settings.warm)
    return GuidedRun(search, proposer_for(problem, seed, settings, model, task, search), clock, start)


def warm_population(search: BasicSR, guesses: Sequence[Expr | None], k: int) -> list[Expr]:
    """The first population of a warm start: the ``k`` fittest distinct usable guesses (scored by the run
    itself, so they count as its evaluations), then BasicSR's own initial population, cut to size.
    With k = 0 it is exactly the cold start's (the same random draws)."""
    usable = list(dict.fromkeys(g for g in guesses if g is not None and g.size <= search.config.max_size))
    best = sorted(usable, key=lambda g: search.score(g)[0], reverse=True)[:k] if k else []
    base = search.initial_population()
    return best + base[: search.config.population_size - len(best)]


def search_for(problem: Problem, seed: int, settings: ComparisonSettings) -> BasicSR:
    return BasicSR(problem.X, problem.y, settings.search_config(), seed=[problem.expression_id, seed])


def result_of(problem: Problem, method: str, seed: int, trace: Trace, seconds: float,
              proposer: NeuralProposer | None = None) -> RunResult:
    prediction = predict(parse(trace.best_expression), problem.X)
    error = mse(problem.y, prediction)
    return RunResult(problem.name, problem.expression_id, problem.n_vars, method, seed, trace.best_expression,
                     error, r2(problem.y, prediction), error <= SOLVED_MSE, len(trace.generations),
                     trace.generations_to_solve(SOLVED_MSE), proposer.drawn if proposer else 0,
                     proposer.well_formed - proposer.repeats if proposer else 0, seconds,
                     proposer.repeats if proposer else 0, trace.evaluations)


def run_one(problem: Problem, method: str, seed: int, settings: ComparisonSettings,
            model: GPTNeo | None = None, task: OneStepTask | None = None,
            guesses: Sequence[Expr | None] | None = None) -> RunResult:
    """One run alone (a guided one asks the model on its own; a warm one starts from ``guesses``)."""
    search = search_for(problem, seed, settings)
    guided = method in ("neural", "warm_neural")
    proposer = proposer_for(problem, seed, settings, model, task, search) if guided else None
    clock = RunClock()
    with clock:
        start = warm_population(search, guesses, settings.warm) if method.startswith("warm") else None
    trace = search.run(proposer, clock, start)
    return result_of(problem, method, seed, trace, clock.seconds, proposer)


def shard_runs(problems: Sequence[Problem], seeds: int, shard: tuple[int, int] = (0, 1)) -> list[tuple[Problem, int]]:
    """The (problem, seed) runs of shard ``I`` of ``N``: every N-th, starting at the I-th (both methods run each)."""
    index, count = shard
    if not 0 <= index < count:
        raise ValueError(f"shard must be I/N with 0 <= I < N, got {index}/{count}")
    return [(p, s) for p in problems for s in range(seeds)][index::count]


def warm_guesses(runs: Sequence[tuple[Problem, int]], settings: ComparisonSettings, model: GPTNeo,
                 task: OneStepTask) -> list[list[Expr | None]]:
    """Each run's direct guesses: ``init_samples`` sampled for its problem from a generator of its seed."""
    found: dict[tuple[int, int], list[Expr | None]] = {}
    for seed in sorted({s for _, s in runs}):
        problems = [p for p, s in runs if s == seed]
        pairs = [direct_pair(p, settings.search_config()) for p in problems]
        config = DirectSettings(samples=settings.init_samples, seed=seed, constrained=settings.constrained)
        for problem, guesses in zip(problems, direct_guesses(model, task, pairs, problems, config, greedy=False)):
            found[problem.expression_id, seed] = guesses
    return [found[p.expression_id, s] for p, s in runs]


def compare(problems: Sequence[Problem], settings: ComparisonSettings, model: GPTNeo | None,
            task: OneStepTask | None, batch_runs: int = 64, shard: tuple[int, int] = (0, 1),
            direct: tuple[GPTNeo, OneStepTask] | None = None) -> list[RunResult]:
    """Every method on every problem and seed of the shard: BasicSR cold, and warm from ``direct``'s guesses
    when given; guided search (cold and warm) when a one-step ``model`` is given, its runs in lockstep.
    Per run the results come in `METHODS` order."""
    runs = shard_runs(problems, settings.seeds, shard)
    guesses = warm_guesses(runs, settings, *direct) if direct is not None else None
    methods: dict[str, list[RunResult]] = {
        "basic": [run_one(p, "basic", s, settings) for p, s in tqdm(runs, unit="run", desc="BasicSR", disable=None)]}
    if guesses is not None:
        methods["warm"] = [run_one(p, "warm", s, settings, guesses=g) for (p, s), g in
                           zip(tqdm(runs, unit="run", desc="warm BasicSR", disable=None), guesses)]
    if model is not None:
        for method, starts in (("neural", [None] * len(runs)), ("warm_neural", guesses)):
            if starts is None:
                continue
            done = run_lockstep([guided_run(p, s, settings, model, task, g) for (p, s), g in zip(runs, starts)],
                                batch_runs)
            methods[method] = [result_of(p, method, s, run.trace, run.clock.seconds, run.proposer)
                               for (p, s), run in zip(runs, done)]
    ordered = [methods[m] for m in METHODS if m in methods]
    return [result for per_run in zip(*ordered) for result in per_run]


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
        seconds, generations = sum(r.seconds for r in runs), sum(r.generations for r in runs)
        summary[method] = {
            "runs": len(runs),
            "solved": sum(r.solved for r in runs),
            "solve_rate": sum(r.solved for r in runs) / len(runs),
            "solved_by_seed": [sum(r.solved for r in runs if r.seed == seed) for seed in seeds],
            "median_best_mse": statistics.median(r.best_mse for r in runs),
            "r2_rate": sum(r.r2 >= R2_THRESHOLD for r in runs) / len(runs),
            "median_generations_to_solve": statistics.median(solved) if solved else None,
            "well_formed_rate": sum(r.well_formed + r.repeats for r in runs) / proposals if proposals else None,
            "repeat_rate": sum(r.repeats for r in runs) / proposals if proposals else None,
            "mean_generations": generations / len(runs),
            "mean_evaluations": sum(r.evaluations for r in runs) / len(runs),
            "wall_seconds": seconds,  # the search's seconds: the runs' own plus their shares of model calls
            "mean_seconds_per_run": seconds / len(runs),
            "seconds_per_generation": seconds / generations,
            "solved_per_minute": sum(r.solved for r in runs) / (seconds / 60) if seconds else None,
        }
    return summary


def challenger(results: Sequence[RunResult]) -> str:
    """The method set against BasicSR in the headline: the warm start when there is one, else guided search."""
    return "warm" if any(r.method == "warm" for r in results) else "neural"


def solved_pairs(results: Sequence[RunResult]) -> dict[str, int]:
    """Runs (problem, seed) solved by both BasicSR and the `challenger`, or by one only: where they differ."""
    other = challenger(results)
    solved = {(r.expression_id, r.seed, r.method): r.solved for r in results}
    pairs = {(problem, seed) for problem, seed, _ in solved}
    outcome = [(solved.get((*pair, "basic"), False), solved.get((*pair, other), False)) for pair in pairs]
    return {"both": outcome.count((True, True)), "basic_only": outcome.count((True, False)),
            f"{other}_only": outcome.count((False, True)), "neither": outcome.count((False, False))}


SUMMARY_COLUMNS = ("runs", "solved", "solved_by_seed", "median_best_mse", "r2_rate", "median_generations_to_solve",
                   "well_formed_rate", "repeat_rate", "mean_generations", "mean_evaluations", "wall_seconds", "seconds_per_generation",
                   "solved_per_minute")


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
             f"Checkpoint `{checkpoint}`; {settings.budget_text()}, populations of {settings.population_size}, "
             f"{settings.seeds} seed(s) per problem; the model fills {settings.proposal_count} of "
             f"{settings.population_size - 1} slots per generation"
             f"{' with distinct proposals' if settings.distinct else ''}"
             f"{', constrained to well-formed expressions' if settings.constrained else ''}"
             f"{f', the fittest of {settings.oversample}x as many samples' if settings.oversample > 1 else ''}, "
             f"sampled at temperature {settings.temperature}; "
             f"solved = MSE <= {SOLVED_MSE:g} on the problem's points.", "", "## Summary", ""]
    pairs, other = solved_pairs(results), challenger(results)
    name = {"neural": "neural-guided", "warm": "warm-started BasicSR"}[other]
    lines += summary_table(summary) + ["", f"Runs solved by both BasicSR and {name}: {pairs['both']}, by BasicSR "
                                       f"only: {pairs['basic_only']}, by {name} only: {pairs[f'{other}_only']}, "
                                       f"by neither: {pairs['neither']}.", "", "## Per problem", ""]
    lines += problem_table(results)
    return "\n".join(lines) + "\n"


def write_results(summary: dict[str, dict[str, Any]], results: Sequence[RunResult], settings: ComparisonSettings,
                  checkpoint: str, out: Path, shard: tuple[int, int] = (0, 1)) -> None:
    out.mkdir(parents=True, exist_ok=True)
    document = {"checkpoint": checkpoint, "settings": asdict(settings), "shard": list(shard), "summary": summary,
                "solved_pairs": solved_pairs(results), "runs": [asdict(r) for r in results]}
    (out / "search.json").write_text(json.dumps(document, indent=2) + "\n")
    (out / "search.md").write_text(render_markdown(summary, results, settings, checkpoint))


# -- shards -----------------------------------------------------------------------------------
def _read_shard(folder: Path) -> dict[str, Any]:
    path = folder / "search.json" if folder.is_dir() else folder
    try:
        return {**json.loads(path.read_text()), "path": str(path)}
    except (OSError, ValueError) as error:
        raise EvaluationInputError(f"{path}: not a readable search.json ({error})") from None


def merge(folders: Sequence[Path]) -> tuple[list[RunResult], ComparisonSettings, str]:
    """The runs of shards 0..N-1 (``search.json`` of each, any order) in the order the unsharded search
    writes them, with their common settings and checkpoint; shards that do not belong together are refused."""
    shards = [_read_shard(Path(folder)) for folder in folders]
    first = shards[0]
    for shard in shards[1:]:
        for key in ("checkpoint", "settings"):
            if shard[key] != first[key]:
                raise EvaluationInputError(f"{shard['path']}: its {key} differs from {first['path']}'s")
    positions = [tuple(shard.get("shard", [0, 1])) for shard in shards]  # (I, N); unsharded: (0, 1)
    count = positions[0][1]
    by_index = dict(zip(positions, shards))
    if set(by_index) != {(i, count) for i in range(count)} or len(shards) != count:
        given = sorted(f"{i}/{n}" for i, n in positions)
        raise EvaluationInputError(f"shards {', '.join(given)} given; a merge needs each of 0/{count} .. "
                                   f"{count - 1}/{count} exactly once")
    runs = {i: [RunResult(**r) for r in by_index[(i, count)]["runs"]] for i in range(count)}
    methods = len({r.method for shard in runs.values() for r in shard})  # results per (problem, seed)
    pairs = sum(len(r) for r in runs.values()) // methods
    ordered = [result for j in range(pairs)
               for result in runs[j % count][(j // count) * methods:(j // count + 1) * methods]]
    return ordered, ComparisonSettings(**first["settings"]), first["checkpoint"]
