"""What the improvement loops learn from: training problems, the expert's labels, the search's successes.

- `expert_records` (DAgger): BasicSR's own next generation from a population a guided run reached,
  as one-step records read from that population. The expert is a BasicSR run started from the
  population (``BasicSR.run(start=...)``), so its step is exactly ``BasicSR.next_generation`` with
  the same seed; ``ancestors`` labels keep the members of that step that lead to the best the
  expert reaches within its horizon.
- `success_records` (expert iteration): the members of a guided run that were the model's own
  proposals and beat the best fitness of the population they were proposed from, plus the
  ancestors of the run's final best.
- `training_problems`: random problems from their own id range and 32-bit seeds;
  `check_training_only` refuses data that holds a named or held-out problem.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

import numpy as np
from tqdm import tqdm

from ..data.generate import records_of_members, target_indices
from ..evaluation.guided_search import HELD_OUT_ID_BASE, HELD_OUT_SEED_BASE
from ..sr.expression import parse
from ..sr.problems import GENERATED_ID_BASE, NAMED_ID_BASE, Problem, ProblemConfig, random_problem
from ..sr.search import BasicSR, Generation, Seed, SearchConfig, Trace, ancestors_of_best

TRAINING_ID_BASE = 10**8  # the loops' problems: above the data generator's ids, below the held-out ones
IDS_PER_ITERATION = 10**5
_TRAINING_STREAM = 3  # seeds the loops' problems apart from the data generator's
_EXPERT_STREAM = 4


class LeakError(RuntimeError):
    """Improvement data that holds a problem the comparison holds out."""


def training_problems(count: int, iteration: int, seed: int = 0,
                      config: ProblemConfig = ProblemConfig()) -> list[Problem]:
    """The ``count`` training problems of ``iteration``: new ones each iteration, deterministic for ``seed``."""
    if count >= IDS_PER_ITERATION:
        raise ValueError(f"at most {IDS_PER_ITERATION - 1} problems per iteration, got {count}")
    problems = []
    for j in range(count):
        problem_seed = int(np.random.SeedSequence([seed, iteration, j, _TRAINING_STREAM]).generate_state(1)[0])
        problems.append(random_problem(TRAINING_ID_BASE + iteration * IDS_PER_ITERATION + j, problem_seed, config))
    return problems


def check_training_only(problems: Iterable[Problem], records: Iterable[dict]) -> None:
    """Refuse (`LeakError`) a named or held-out problem among ``problems``, or a record of any other problem."""
    allowed = set()
    for problem in problems:
        named = NAMED_ID_BASE <= problem.expression_id < GENERATED_ID_BASE
        if named or problem.expression_id >= HELD_OUT_ID_BASE or problem.seed >= HELD_OUT_SEED_BASE:
            raise LeakError(f"problem {problem.expression_id} ({problem.name}) is a named or held-out problem")
        allowed.add(problem.expression_id)
    for record in records:
        if record.get("expression_id") not in allowed:
            raise LeakError(f"a record of expression_id {record.get('expression_id')} is not a training problem "
                            "of this loop")


def expert_records(problem: Problem, state: Generation, generation: int, config: SearchConfig, labels: str,
                   horizon: int, seed: Seed) -> list[dict]:
    """BasicSR's next generation from ``state`` (generation number ``generation`` of a guided run) as records.

    ``labels``: ``all`` members of the expert's step, or its ``ancestors`` / ``new-ancestors`` of the best the
    expert reaches in ``horizon`` generations (as the data generator's ``--targets``). None when ``state``
    is already solved (the expert stops at once)."""
    steps = 1 if labels == "all" else horizon
    expert = BasicSR(problem.X, problem.y,
                     replace(config, generations=1 + steps, budget_seconds=None, budget_evaluations=None), seed)
    trace = expert.run(start=[parse(e) for e in state.expressions])
    if len(trace.generations) < 2:
        return []
    return list(records_of_members(trace, problem, target_indices(trace, labels)[:1], first_generation=generation))


def expert_seed(problem: Problem, run_seed: int, generation: int) -> list[int]:
    return [problem.expression_id, run_seed, generation, _EXPERT_STREAM]


def improving_members(trace: Trace) -> list[list[int]]:
    """Per generation g+1: the model's proposals (members without parents) fitter than generation g's best."""
    steps = zip(trace.generations, trace.generations[1:])
    return [[i for i, (parents, fitness) in enumerate(zip(following.parents, following.fitnesses))
             if parents == () and fitness > max(current.fitnesses)]
            for current, following in steps]


def success_records(trace: Trace, problem: Problem) -> list[dict]:
    """Expert iteration's examples of one guided run: improving proposals and the ancestors of the final best."""
    ancestors = ancestors_of_best(trace)[1:]
    members = [sorted(set(better) | ancestors[g]) for g, better in enumerate(improving_members(trace))]
    return list(records_of_members(trace, problem, members))


def dagger_records(trace: Trace, problem: Problem, run_seed: int, labels: str, horizon: int) -> list[dict]:
    """DAgger's examples of one guided run: the expert's labels for every population it reached."""
    return [record for g, state in enumerate(trace.generations)
            for record in expert_records(problem, state, g, trace.config, labels, horizon,
                                         expert_seed(problem, run_seed, g))]


def records_of_runs(kind: str, runs: Sequence[tuple[Problem, int, Trace]], labels: str = "ancestors",
                    horizon: int = 10) -> list[dict]:
    """The improvement examples of finished guided runs, ``(problem, seed, trace)``, for loop ``kind``."""
    bar = tqdm(runs, unit="run", desc="expert labels" if kind == "dagger" else "successes", disable=None)
    if kind == "dagger":
        return [r for problem, seed, trace in bar for r in dagger_records(trace, problem, seed, labels, horizon)]
    return [r for problem, _, trace in bar for r in success_records(trace, problem)]
