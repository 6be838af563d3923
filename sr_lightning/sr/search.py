"""BasicSR: the evolutionary search whose single steps the model learns to imitate.

One run evaluates ``generations`` populations of ``population_size`` expressions. Between two
generations, slot 0 is the best individual so far (elitism) and every other slot is a child
made by crossover or mutation of tournament winners, or, in neural-guided search, an
expression proposed by the model (see `Proposer`). Every child records the indices of its
parents in the previous generation, so the ancestry of the final best can be traced back;
the ``*_ancs*`` data files keep only those ancestors as targets.

The rules and probabilities are the original's (SPEC section 7); the random stream is a
numpy ``Generator``, so runs are reproducible from a seed but not draw-for-draw identical to
the original's ``random``-module stream.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field

import numpy as np

from sr_lightning.sr.expression import (
    Binary,
    Constant,
    Expr,
    ExpressionError,
    Unary,
    Variable,
    fitness_from_mse,
    masked_mse,
    parse,
    predict,
)

SOLVED_MSE = 1e-10  # "solved" in generations-to-solve

Seed = int | Sequence[int] | np.random.Generator | None  # anything np.random.default_rng accepts

# A proposer gets (generation index, population expressions, fitnesses) and returns up to
# P - 1 candidate expressions for the next generation (None where it has nothing).
Proposer = Callable[[int, list[str], list[float]], Sequence["str | None"]]


def usable_proposal(candidate: str | None, max_size: int) -> Expr | None:
    """A proposed expression if it parses and has at most ``max_size`` nodes, else None."""
    if candidate is None:
        return None
    try:
        expr = parse(candidate)
    except ExpressionError:
        return None
    return expr if expr.size <= max_size else None


@dataclass(frozen=True)
class SearchConfig:
    """BasicSR settings; the defaults are the original's trace settings."""

    population_size: int = 20  # P, individuals per generation
    generations: int = 50  # populations evaluated per run (the trace holds this many)
    max_depth: int = 10  # depth limit of random trees of the initial population
    max_size: int = 25  # a child with more nodes is replaced by its first parent
    binary_ops: tuple[str, ...] = ("*", "+", "-")
    unary_ops: tuple[str, ...] = ()
    constants: tuple[float, ...] = (1.0,)
    crossover_rate: float = 0.7  # else mutation
    tournament_size: int = 3
    terminal_prob: float = 0.3  # a random-tree node below the root is a terminal with this probability
    unary_prob: float = 0.35  # a non-terminal node is unary with this probability (if unary ops exist)
    variable_prob: float = 0.7  # a terminal is a variable with this probability, else a constant
    mutation_terminal_prob: float = 0.5  # mutation inserts a terminal, else a random tree of mutation_depth
    mutation_depth: int = 2
    early_stop_mse: float = 3e-16  # once the best reaches this MSE ...
    early_stop_extra_generations: int = 500  # ... the run goes on at most this many more generations
    budget_seconds: float | None = None  # a run also ends once its clock reaches this (checked each generation)
    budget_evaluations: int | None = None  # ... or once it has evaluated this many distinct expressions


@dataclass(frozen=True)
class ProposalRequest:
    """What a run asks its proposer before making generation ``index + 1``: the population it is at."""

    index: int
    expressions: list[str]
    fitnesses: list[float]

    def __iter__(self):  # a Proposer takes the three as arguments
        return iter((self.index, self.expressions, self.fitnesses))


class RunClock:
    """Seconds one run has used: its own time (``with clock:``, read live) plus shares of batched model
    calls (`charge`)."""

    def __init__(self) -> None:
        self._seconds = 0.0
        self._start: float | None = None

    @property
    def seconds(self) -> float:
        running = 0.0 if self._start is None else time.perf_counter() - self._start
        return self._seconds + running

    def charge(self, seconds: float) -> None:
        self._seconds += seconds

    def __enter__(self) -> RunClock:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self._seconds += time.perf_counter() - self._start
        self._start = None


@dataclass
class Generation:
    """One evaluated population and how it was made from the previous one."""

    expressions: list[str]
    fitnesses: list[float]
    parents: list[tuple[int, ...]]  # per member: indices into the previous generation (() if none)
    best_expression: str  # best so far after evaluating this generation
    best_fitness: float
    best_mse: float
    proposals_total: int = 0  # candidates the proposer returned for this generation
    proposals_well_formed: int = 0  # of those, parsed and within max_size (used as children)


@dataclass
class Trace:
    """A whole run: every generation in order, plus the settings that made it."""

    config: SearchConfig
    generations: list[Generation] = field(default_factory=list)
    evaluations: int = 0  # distinct expressions the run scored (proposals screened by fitness included)

    @property
    def final(self) -> Generation:
        return self.generations[-1]

    @property
    def best_expression(self) -> str:
        return self.final.best_expression

    @property
    def best_mse(self) -> float:
        return self.final.best_mse

    @property
    def best_index(self) -> int:
        """Index of the final best in the last generation (slot 0 unless the last generation improved)."""
        return int(np.argmax(self.final.fitnesses))

    def generations_to_solve(self, tolerance: float = SOLVED_MSE) -> int | None:
        """First generation whose best-so-far MSE is <= ``tolerance``; None if never."""
        for index, generation in enumerate(self.generations):
            if generation.best_mse <= tolerance:
                return index
        return None

    @property
    def proposals_total(self) -> int:
        return sum(g.proposals_total for g in self.generations)

    @property
    def proposals_well_formed(self) -> int:
        return sum(g.proposals_well_formed for g in self.generations)


def ancestors_of_best(trace: Trace) -> list[set[int]]:
    """Per generation, the indices of members that are ancestors of the final best (itself included last)."""
    ancestors = [set() for _ in trace.generations]
    ancestors[-1] = {trace.best_index}
    for g in range(len(trace.generations) - 1, 0, -1):
        parents = trace.generations[g].parents
        ancestors[g - 1] = {p for member in ancestors[g] for p in parents[member] if p >= 0}
    return ancestors


class TreeSampler:
    """Random terminals and trees with the original's probabilities (also used for random problems)."""

    def __init__(self, config: SearchConfig, n_vars: int, rng: np.random.Generator) -> None:
        self.config = config
        self.n_vars = n_vars
        self.rng = rng

    def choice(self, options: Sequence):
        return options[int(self.rng.integers(len(options)))]

    def terminal(self) -> Expr:
        if not self.config.constants or self.rng.random() < self.config.variable_prob:
            return Variable(int(self.rng.integers(self.n_vars)))
        return Constant(self.choice(self.config.constants))

    def tree(self, max_depth: int, depth: int = 0) -> Expr:
        """A random tree: terminal at max depth or with terminal_prob below the root, else an operator."""
        c = self.config
        if depth >= max_depth or (depth > 0 and self.rng.random() < c.terminal_prob):
            return self.terminal()
        if self.rng.random() < c.unary_prob and c.unary_ops:
            return Unary(self.choice(c.unary_ops), self.tree(max_depth, depth + 1))
        op = self.choice(c.binary_ops)
        left = self.tree(max_depth, depth + 1)
        return Binary(op, left, self.tree(max_depth, depth + 1))


def seed_population(config: SearchConfig, n_vars: int) -> list[Expr]:
    """The fixed opening members, in order: variables, constants, x+c and x*c, x*x, u(x)."""
    variables = [Variable(i) for i in range(n_vars)]
    constants = [Constant(c) for c in config.constants]
    members: list[Expr] = [*variables, *constants]
    for x in variables:
        for c in constants:
            members += [Binary("+", x, c), Binary("*", x, c)]
    members += [Binary("*", x, x) for x in variables]
    members += [Unary(u, x) for x in variables for u in config.unary_ops]
    return members


class BasicSR:
    """One run of the search on (X, y); fitness is cached by expression text within the run."""

    def __init__(self, X: np.ndarray, y: np.ndarray, config: SearchConfig = SearchConfig(),
                 seed: Seed = None) -> None:
        self.config = config
        self.X = np.asfortranarray(X, dtype=np.float64)  # contiguous columns: faster evaluation
        self.y = np.asarray(y, dtype=np.float64)
        self.n_vars = self.X.shape[1]
        self.rng = np.random.default_rng(seed)
        self.sampler = TreeSampler(config, self.n_vars, self.rng)
        self._cache: dict[str, tuple[float, float]] = {}

    @property
    def evaluations(self) -> int:
        """Fitness evaluations so far: distinct expressions scored (a repeat is looked up, not evaluated)."""
        return len(self._cache)

    # -- evaluation

    def score(self, expr: Expr) -> tuple[float, float]:
        """(fitness, MSE) of ``expr``, computed once per distinct expression."""
        key = str(expr)
        hit = self._cache.get(key)
        if hit is None:
            error = masked_mse(predict(expr, self.X), self.y)
            hit = self._cache[key] = (fitness_from_mse(error, expr.size), error)
        return hit

    # -- variation

    def initial_population(self) -> list[Expr]:
        members = seed_population(self.config, self.n_vars)
        while len(members) < self.config.population_size:
            tree = self.sampler.tree(self.config.max_depth)
            if tree.size <= self.config.max_size:
                members.append(tree)
        return members[: self.config.population_size]

    def tournament(self, fitnesses: Sequence[float]) -> int:
        """Index of the fittest of ``tournament_size`` distinct random members (first wins ties)."""
        entrants = self.rng.choice(len(fitnesses), size=self.config.tournament_size, replace=False)
        return int(max(entrants, key=lambda i: fitnesses[i]))

    def random_node(self, expr: Expr) -> int:
        return int(self.rng.integers(expr.size))

    def crossover(self, parent1: Expr, parent2: Expr) -> Expr:
        """Parent 1 with a random node replaced by a random subtree of parent 2."""
        donor = parent2.nodes()[self.random_node(parent2)]
        return parent1.replace(self.random_node(parent1), donor)

    def mutate(self, parent: Expr) -> Expr:
        """Parent with a random node replaced by a terminal or a small random tree (50/50)."""
        if self.rng.random() < self.config.mutation_terminal_prob:
            new = self.sampler.terminal()
        else:
            new = self.sampler.tree(self.config.mutation_depth)
        return parent.replace(self.random_node(parent), new)

    def evolve_child(self, population: Sequence[Expr], fitnesses: Sequence[float]) -> tuple[Expr, tuple[int, ...]]:
        """One child by crossover or mutation; an oversized child is replaced by parent 1."""
        if self.rng.random() < self.config.crossover_rate:
            parents = (self.tournament(fitnesses), self.tournament(fitnesses))
            child = self.crossover(population[parents[0]], population[parents[1]])
        else:
            parents = (self.tournament(fitnesses),)
            child = self.mutate(population[parents[0]])
        if child.size > self.config.max_size:
            child = population[parents[0]]
        return child, parents

    def next_generation(self, population: list[Expr], fitnesses: list[float], best: Expr,
                        proposals: Sequence[str | None] = ()) -> tuple[list[Expr], list[tuple[int, ...]], int, int]:
        """The next population: the elite, then ``proposals`` (where usable) or evolved children.

        Returns (children, parent indices, proposals returned, proposals used). A used proposal has parents ().
        """
        size = self.config.population_size
        children: list[Expr] = [best]
        parents: list[tuple[int, ...]] = [(int(np.argmax(fitnesses)),)]
        proposals = list(proposals)[: size - 1]
        used = 0
        for slot in range(1, size):
            proposed = usable_proposal(proposals[slot - 1], self.config.max_size) if slot - 1 < len(proposals) else None
            if proposed is not None:
                children.append(proposed)
                parents.append(())
                used += 1
            else:
                child, child_parents = self.evolve_child(population, fitnesses)
                children.append(child)
                parents.append(child_parents)
        return children, parents, len(proposals), used

    # -- the run

    def _out_of_budget(self, clock: RunClock) -> bool:
        c = self.config
        return ((c.budget_seconds is not None and clock.seconds >= c.budget_seconds)
                or (c.budget_evaluations is not None and self.evaluations >= c.budget_evaluations))

    def _start(self, start: Sequence[Expr] | None) -> list[Expr]:
        if start is None:
            return self.initial_population()
        if len(start) != self.config.population_size:
            raise ValueError(f"a start population needs {self.config.population_size} members, got {len(start)}")
        return list(start)

    def steps(self, asks: bool, clock: RunClock | None = None,
              start: Sequence[Expr] | None = None) -> Generator[ProposalRequest, Sequence, Trace]:
        """The run as a generator: with ``asks``, it yields a `ProposalRequest` before each new generation and
        is sent the proposals back; it returns the trace. Whoever drives it keeps ``clock`` (see `RunClock`).
        ``start``: the first population (default: `initial_population`), e.g. a state to continue from."""
        c = self.config
        clock = clock or RunClock()
        trace = Trace(c)
        population = self._start(start)
        parents: list[tuple[int, ...]] = [() for _ in population]
        proposed = used = 0
        best: Expr | None = None
        best_fitness, best_mse = -np.inf, np.inf
        limit = c.generations
        g = 0
        while g < limit:
            scores = [self.score(e) for e in population]
            fitnesses = [f for f, _ in scores]
            top = int(np.argmax(fitnesses))
            if fitnesses[top] > best_fitness:
                best, (best_fitness, best_mse) = population[top], scores[top]
                if best_mse <= c.early_stop_mse:
                    limit = min(c.generations, g + c.early_stop_extra_generations)
            trace.generations.append(Generation(
                [str(e) for e in population], fitnesses, parents, str(best), best_fitness, best_mse,
                proposed, used))
            g += 1
            if self._out_of_budget(clock):
                break
            if g < limit:
                proposals = (yield ProposalRequest(g - 1, [str(e) for e in population], list(fitnesses))) if asks else ()
                population, parents, proposed, used = self.next_generation(population, fitnesses, best, proposals)
        trace.evaluations = self.evaluations
        return trace

    def run(self, proposer: Proposer | None = None, clock: RunClock | None = None,
            start: Sequence[Expr] | None = None) -> Trace:
        """Evaluate ``generations`` populations (fewer after an early stop or a budget); the trace.

        ``clock`` (a new one if None) counts the run's seconds, the proposer's included; ``start`` as in `steps`."""
        clock = clock or RunClock()
        steps = self.steps(asks=proposer is not None, clock=clock, start=start)
        try:
            with clock:
                request = next(steps)
            while True:
                with clock:
                    proposals = proposer(*request)
                    request = steps.send(proposals)
        except StopIteration as done:
            return done.value


def run_search(X: np.ndarray, y: np.ndarray, config: SearchConfig = SearchConfig(),
               seed: Seed = None, proposer: Proposer | None = None, clock: RunClock | None = None) -> Trace:
    """Run BasicSR on (X, y); with ``proposer``, neural-guided search (proposals replace evolved children)."""
    return BasicSR(X, y, config, seed).run(proposer, clock)
