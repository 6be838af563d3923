"""``python -m sr_lightning.data.generate``: BasicSR traces on random problems -> one-step JSONL.

Writes ``train.jsonl``, ``val.jsonl``, ``test.jsonl``, the ``problems.json`` sidecar (X, y per
expression id) and ``manifest.json`` into ``--out``. The split is by problem: all examples of
one expression id land in one file, so validation never sees a training problem (the
original split by example). Output is byte-identical for a seed whatever ``--workers`` is:
problems are processed in a pool but consumed in order.

One record per (generation g, target member of generation g+1): the model reads generation g
and writes that member. ``--targets ancestors`` keeps only members that are ancestors of the
run's final best (the original's ``*_ancs*`` files); ``--targets new-ancestors`` keeps those of
them that generation g does not already hold.

``--mode direct`` writes one record per problem instead, without a search: the context line of its
primitives and the problem's own expression as the target (`direct_record`); the points stay in
``problems.json`` (by ``expression_id``) or, with ``--inline-points``, go into each record as
``X_data`` / ``y_data`` (the original's direct layout).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from jsonargparse import ArgumentParser, Namespace
from tqdm import tqdm

from sr_lightning.commands import comma_list, command_parser, shard
from sr_lightning.data.format import context_text, direct_context, dump_record, make_record, population_text
from sr_lightning.data.points import SIDECAR
from sr_lightning.sr.problems import (
    GENERATED_ID_BASE,
    Problem,
    ProblemConfig,
    ProblemsWriter,
    generated_id,
    random_problem,
)
from sr_lightning.sr.search import Seed, SearchConfig, Trace, ancestors_of_best, run_search

SPLITS = ("train", "val", "test")
MODES = ("onestep", "direct")
TARGETS = ("all", "ancestors", "new-ancestors")
_SEARCH_STREAM = 1  # seeds the search of a problem apart from the draw of the problem itself
_SPLIT_STREAM = 2


def target_indices(trace: Trace, targets: str) -> list[list[int]]:
    """Per generation g+1 (g = 0 .. G-2), the member indices that become targets, ascending.

    ``new-ancestors`` drops the ancestors that generation g already holds (the elite and other
    copies): a model trained on them learns to repeat a member it reads, which in a search only
    crowds out new children.
    """
    if targets in ("ancestors", "new-ancestors"):
        chosen = [sorted(members) for members in ancestors_of_best(trace)[1:]]
        if targets == "ancestors":
            return chosen
        steps = zip(chosen, trace.generations, trace.generations[1:])
        return [[i for i in members if following.expressions[i] not in current.expressions]
                for members, current, following in steps]
    if targets == "all":
        return [list(range(len(g.expressions))) for g in trace.generations[1:]]
    raise ValueError(f"targets must be one of {TARGETS}, got {targets!r}")


def records_from_trace(trace: Trace, problem: Problem, targets: str = "all",
                       source_file: str = SIDECAR) -> Iterator[dict]:
    """The one-step records of a finished run, in generation then member order."""
    yield from records_of_members(trace, problem, target_indices(trace, targets), source_file)


def records_of_members(trace: Trace, problem: Problem, members: Sequence[Sequence[int]],
                       source_file: str = SIDECAR, first_generation: int = 0) -> Iterator[dict]:
    """Records for the chosen ``members[g]`` of generation g+1, each read from generation g.

    ``first_generation``: the generation number the trace's first population has in the context line (a
    run continued from another run's state counts on from there)."""
    config = trace.config
    for g, chosen in enumerate(members):
        current = trace.generations[g]
        number = first_generation + g
        context = context_text(number, problem.n_vars, config.binary_ops, config.unary_ops, config.constants)
        population = population_text(current.expressions, current.fitnesses)
        following = trace.generations[g + 1].expressions
        for k, member in enumerate(chosen):
            metadata = {"target_expression": problem.name, "generation": number, "target_index": k,
                        "source_expressions_file": source_file}
            yield make_record(context, population, following[member], problem.expression_id, metadata)


def direct_record(problem: Problem, config: SearchConfig = SearchConfig(), inline_points: bool = False,
                  source_file: str = SIDECAR) -> dict:
    """The direct example of ``problem``: its primitives' context line -> its expression as printed."""
    if problem.expression is None:
        raise ValueError(f"problem {problem.expression_id} records no expression to write as a target")
    context = direct_context(problem.n_vars, config.binary_ops, config.unary_ops, config.constants)
    metadata = {"target_expression": problem.name, "source_expressions_file": source_file}
    record = make_record(context, None, problem.expression, problem.expression_id, metadata)
    if inline_points:
        record.update(X_data=problem.X.tolist(), y_data=problem.y.tolist())
    return record


def problem_records(problem: Problem, config: SearchConfig, targets: str, mode: str = "onestep",
                    inline_points: bool = False) -> list[dict]:
    """A problem's records: its BasicSR run's one-step records, or its one direct record."""
    if mode == "direct":
        return [direct_record(problem, config, inline_points)]
    return list(generate_examples(problem, config, targets))


def generate_examples(problem: Problem, config: SearchConfig = SearchConfig(), targets: str = "all",
                      seed: Seed = None, source_file: str = SIDECAR) -> Iterator[dict]:
    """Run BasicSR on ``problem`` and yield its one-step records; the default seed derives from the problem's."""
    search_seed = [problem.seed, _SEARCH_STREAM] if seed is None else seed
    trace = run_search(problem.X, problem.y, config, search_seed)
    yield from records_from_trace(trace, problem, targets, source_file)


def dataset_problem_seed(seed: int, index: int) -> int:
    """Seed of the ``index``-th problem of a dataset generated with ``seed``."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def split_of_problems(n_problems: int, val_fraction: float, test_fraction: float, seed: int) -> list[str]:
    """Split name per problem index: a seeded shuffle, then val, test and train shares (rounded)."""
    n_val = round(n_problems * val_fraction)
    n_test = round(n_problems * test_fraction)
    if n_val + n_test > n_problems:
        raise ValueError("val and test fractions leave no room")
    order = np.random.default_rng([seed, _SPLIT_STREAM]).permutation(n_problems)
    splits = ["train"] * n_problems
    for position, index in enumerate(order[: n_val + n_test]):
        splits[index] = "val" if position < n_val else "test"
    return splits


@dataclass(frozen=True)
class Job:
    """Everything a worker needs to make one problem and its lines (picklable)."""

    seed: int
    problem: ProblemConfig
    search: SearchConfig
    targets: str
    mode: str = "onestep"
    inline_points: bool = False


def _problem_lines(task: tuple[Job, int]) -> tuple[Problem, list[str]]:
    """The ``index``-th problem and its JSONL lines (runs in a worker process)."""
    job, index = task
    problem = random_problem(generated_id(index), dataset_problem_seed(job.seed, index), job.problem)
    records = problem_records(problem, job.search, job.targets, job.mode, job.inline_points)
    return problem, [dump_record(r) for r in records]


def _results(job: Job, indices: Sequence[int], workers: int) -> Iterator[tuple[Problem, list[str]]]:
    tasks = ((job, index) for index in indices)
    if workers <= 1:
        yield from map(_problem_lines, tasks)
        return
    with Pool(workers) as pool:
        yield from pool.imap(_problem_lines, tasks)


def write_dataset(out: str | Path, n_problems: int, job: Job, workers: int = 1,
                  val_fraction: float = 0.1, test_fraction: float = 0.1, shard: tuple[int, int] = (0, 1)) -> dict:
    """Generate ``n_problems`` problems into ``out``; returns the manifest it also writes.

    With ``shard`` (I, N) only every N-th problem from the I-th: each problem gets the lines and the split
    it gets in the whole dataset, so N shards hold the whole dataset's lines between them."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    splits = split_of_problems(n_problems, val_fraction, test_fraction, job.seed)
    indices = range(shard[0], n_problems, shard[1])
    counts = {name: {"problems": 0, "examples": 0} for name in SPLITS}
    with ExitStack() as stack:
        files = {name: stack.enter_context(open(out / f"{name}.jsonl", "w", encoding="utf-8")) for name in SPLITS}
        sidecar = stack.enter_context(ProblemsWriter(out / SIDECAR))
        progress = stack.enter_context(tqdm(total=len(indices), unit="problem", file=sys.stderr, disable=None))
        for index, (problem, lines) in zip(indices, _results(job, indices, workers)):
            sidecar.add(problem)
            split = splits[index]
            files[split].writelines(line + "\n" for line in lines)
            counts[split]["problems"] += 1
            counts[split]["examples"] += len(lines)
            progress.update()
    manifest = {
        "seed": job.seed, "problems": n_problems, "mode": job.mode, "targets": job.targets,
        "val_fraction": val_fraction, "test_fraction": test_fraction,
        "expression_ids": f"{GENERATED_ID_BASE} + problem index",
        "search": asdict(job.search), "problem": asdict(job.problem), "splits": counts, "shard": list(shard),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def build_parser() -> ArgumentParser:
    p = command_parser(prog="python -m sr_lightning.data.generate", description=__doc__.split("\n")[0])
    p.add_argument("--problems", type=int, required=True, help="number of random problems")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--mode", choices=MODES, default="onestep", help="onestep: BasicSR traces; direct: one record "
                   "per problem, the problem's own expression as the target")
    p.add_argument("--inline-points", action="store_true", help="direct: X_data/y_data in each record instead "
                   "of problems.json alone")
    p.add_argument("--targets", choices=TARGETS, default="all")
    p.add_argument("--generations", type=int, default=SearchConfig.generations)
    p.add_argument("--population", type=int, default=SearchConfig.population_size)
    p.add_argument("--max-size", type=int, default=SearchConfig.max_size, help="BasicSR node limit")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--test-fraction", type=float, default=0.1)
    p.add_argument("--min-vars", type=int, default=ProblemConfig.min_vars)
    p.add_argument("--max-vars", type=int, default=ProblemConfig.max_vars)
    p.add_argument("--binary-ops", type=comma_list(), default=",".join(SearchConfig.binary_ops), help="comma list, e.g. '*,+,-'")
    p.add_argument("--unary-ops", type=comma_list(), default="", help="comma list, e.g. 'sin,cos' (default none)")
    p.add_argument("--shard", type=shard, default=(0, 1), help="I/N: only every N-th problem from the I-th, with "
                   "the lines and split it has in the whole dataset (one task of a job array; give each its --out)")
    return p


def job_from_args(args: Namespace) -> Job:
    search = SearchConfig(population_size=args.population, generations=args.generations, max_size=args.max_size,
                          binary_ops=args.binary_ops, unary_ops=args.unary_ops)
    problem = ProblemConfig(min_vars=args.min_vars, max_vars=args.max_vars, binary_ops=args.binary_ops,
                            unary_ops=args.unary_ops)
    return Job(args.seed, problem, search, args.targets, args.mode, args.inline_points)


def main(argv: Sequence[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    manifest = write_dataset(args.out, args.problems, job_from_args(args), args.workers,
                             args.val_fraction, args.test_fraction, args.shard)
    seconds = time.perf_counter() - start
    examples = sum(split["examples"] for split in manifest["splits"].values())
    problems = sum(split["problems"] for split in manifest["splits"].values())
    print(f"{examples} examples from {problems} problems in {seconds:.1f}s "
          f"({examples / max(seconds, 1e-9):.0f}/s) -> {args.out}", file=sys.stderr)
    return manifest


if __name__ == "__main__":
    main()
