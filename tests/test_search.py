import json
from dataclasses import replace

import numpy as np
import pytest

from sr_lightning.data.format import population_items
from sr_lightning.sr.expression import fitness, masked_mse, parse, predict
from sr_lightning.sr.search import (
    BasicSR,
    Generation,
    SearchConfig,
    Trace,
    ancestors_of_best,
    run_search,
    seed_population,
)
from tests.helpers import fixture_lines

RNG = np.random.default_rng(123)
X = RNG.standard_normal((40, 2))
Y = X[:, 0] * X[:, 1] + X[:, 1] * X[:, 1]  # (x1 * x1), index 8, leads the initial population
SMALL = SearchConfig(population_size=10, generations=12)


def hand_generation(expressions, fitnesses, parents, best_mse=1.0):
    best = int(np.argmax(fitnesses))
    return Generation(expressions, fitnesses, parents, expressions[best], fitnesses[best], best_mse)


def test_ancestors_of_best_hand_built_trace():
    trace = Trace(SearchConfig(population_size=3, generations=3), [
        hand_generation(["x0", "x1", "1.0"], [-3.0, -2.0, -1.0], [(), (), ()]),
        hand_generation(["1.0", "(x0 + 1.0)", "(1.0 * 1.0)"], [-1.0, -5.0, -4.0], [(2,), (0, 2), (2,)]),
        hand_generation(["1.0", "(x0 + 1.0)", "((x0 + 1.0) + 1.0)"], [-1.0, -5.0, -0.5], [(0,), (1,), (2, 1)]),
    ])
    assert trace.best_index == 2
    # gen 2: {2}; its parents (2, 1) in gen 1; their parents (2,) and (0, 2) in gen 0.
    assert ancestors_of_best(trace) == [{0, 2}, {1, 2}, {2}]


def test_ancestors_stop_at_proposals_and_default_to_elite():
    trace = Trace(SearchConfig(population_size=2, generations=3), [
        hand_generation(["x0", "x1"], [-1.0, -2.0], [(), ()]),
        hand_generation(["x0", "(x0 * x0)"], [-1.0, -3.0], [(0,), ()]),
        hand_generation(["x0", "(x0 * x0)"], [-1.0, -3.0], [(0,), (1,)]),
    ])
    assert trace.best_index == 0
    assert ancestors_of_best(trace) == [{0}, {0}, {0}]
    trace.generations[2].parents[0] = (1,)
    assert ancestors_of_best(trace) == [set(), {1}, {0}]


def test_generations_to_solve():
    trace = Trace(SearchConfig(), [hand_generation(["x0"], [-1.0], [()], best_mse=m) for m in (1.0, 1e-3, 1e-12, 0.0)])
    assert trace.generations_to_solve() == 2
    assert trace.generations_to_solve(1e-2) == 1
    assert trace.generations_to_solve(-1.0) is None


def test_initial_population_order():
    config = SearchConfig(population_size=18, constants=(1.0, 2.0), unary_ops=("sin",))
    expected = ["x0", "x1", "1.0", "2.0",
                "(x0 + 1.0)", "(x0 * 1.0)", "(x0 + 2.0)", "(x0 * 2.0)",
                "(x1 + 1.0)", "(x1 * 1.0)", "(x1 + 2.0)", "(x1 * 2.0)",
                "(x0 * x0)", "(x1 * x1)", "sin(x0)", "sin(x1)"]
    assert [str(e) for e in seed_population(config, 2)] == expected
    population = BasicSR(X, Y, config, seed=0).initial_population()
    assert [str(e) for e in population[:16]] == expected
    assert len(population) == 18 and all(e.size <= config.max_size for e in population[16:])
    truncated = BasicSR(X, Y, SearchConfig(population_size=3), seed=0).initial_population()
    assert [str(e) for e in truncated] == ["x0", "x1", "1.0"]


def test_initial_population_matches_the_original_fixture():
    first = json.loads(fixture_lines()[0])
    original = [e for e, _ in population_items(first["population"])]
    assert [str(e) for e in seed_population(SearchConfig(), 2)] == original[:9]


def test_elitism_and_recorded_fitness():
    trace = run_search(X, Y, SMALL, seed=1)
    assert len(trace.generations) == SMALL.generations
    assert trace.generations[1].parents[0] == (8,)  # the elite's parent is the previous best, not slot 0
    for previous, current in zip(trace.generations, trace.generations[1:]):
        assert current.expressions[0] == previous.best_expression
        assert current.parents[0] == (int(np.argmax(previous.fitnesses)),)
        assert current.best_fitness >= previous.best_fitness
        assert current.fitnesses[0] == previous.best_fitness
    last = trace.final
    assert trace.best_expression == last.expressions[trace.best_index]
    best = parse(trace.best_expression)
    assert last.best_fitness == fitness(best, X, Y)
    assert last.best_mse == masked_mse(predict(best, X), Y)


def test_children_record_their_parents():
    trace = run_search(X, Y, SMALL, seed=2)
    for generation in trace.generations[1:]:
        assert len(generation.parents) == SMALL.population_size
        for parents in generation.parents[1:]:
            assert len(parents) in (1, 2) and all(0 <= p < SMALL.population_size for p in parents)


def test_oversized_children_are_replaced_by_parent_one():
    config = SearchConfig(population_size=5, crossover_rate=0.0, max_size=7)
    search = BasicSR(X, Y, config, seed=0)
    tree = parse("((x0 + x1) * (x1 - x0))")  # 7 nodes: growing any leaf breaks the limit
    population = [tree] * 5
    children = [search.evolve_child(population, [0.0] * 5)[0] for _ in range(200)]
    assert max(c.size for c in children) <= 7
    assert any(c is tree for c in children)  # some mutations grew and fell back to parent 1
    assert any(c.size < 7 for c in children)  # others shrank and were kept
    trace = run_search(X, Y, SearchConfig(population_size=10, generations=15, max_size=5), seed=3)
    assert all(parse(e).size <= 5 for g in trace.generations for e in g.expressions)


def test_deterministic_for_a_seed():
    first = run_search(X, Y, SMALL, seed=7)
    again = run_search(X, Y, SMALL, seed=7)
    other = run_search(X, Y, SMALL, seed=8)
    assert [g.expressions for g in first.generations] == [g.expressions for g in again.generations]
    assert [g.parents for g in first.generations] == [g.parents for g in again.generations]
    assert [g.expressions for g in first.generations] != [g.expressions for g in other.generations]


def test_early_stop_after_extra_generations():
    y = X[:, 0] * X[:, 0]  # (x0 * x0) is in the initial population: solved at generation 0
    config = SearchConfig(population_size=8, generations=50, early_stop_extra_generations=3)
    trace = run_search(X, y, config, seed=0)
    assert len(trace.generations) == 3
    assert trace.generations_to_solve() == 0
    assert trace.best_expression == "(x0 * x0)"


def test_proposals_are_used_when_valid():
    calls = []

    def proposer(g, population, fitnesses):
        calls.append((g, population, fitnesses))
        return ["(x0 * x1)"] * (SMALL.population_size - 1)

    trace = run_search(X, Y, SMALL, seed=4, proposer=proposer)
    assert [c[0] for c in calls] == list(range(SMALL.generations - 1))
    for g, population, fitnesses in calls:
        assert population == trace.generations[g].expressions and fitnesses == trace.generations[g].fitnesses
    for generation in trace.generations[1:]:
        assert generation.expressions[1:] == ["(x0 * x1)"] * (SMALL.population_size - 1)
        assert generation.parents[1:] == [()] * (SMALL.population_size - 1)
        assert generation.proposals_total == generation.proposals_well_formed == SMALL.population_size - 1
    assert trace.generations[0].proposals_total == 0


def test_bad_proposals_fall_back_to_evolution():
    oversized = "(" * 13 + "x0" + " + x1)" * 13  # 27 nodes > max_size 25

    def proposer(g, population, fitnesses):
        return ["(x0 * x1)", None, "(x0 +", "x0 x1", oversized]  # only 5 of P - 1 = 9

    trace = run_search(X, Y, SMALL, seed=5, proposer=proposer)
    for generation in trace.generations[1:]:
        assert generation.expressions[1] == "(x0 * x1)" and generation.parents[1] == ()
        assert all(len(p) in (1, 2) for p in generation.parents[2:])
        assert generation.proposals_total == 5 and generation.proposals_well_formed == 1
    assert trace.proposals_total == 5 * (SMALL.generations - 1)
    assert trace.proposals_well_formed == SMALL.generations - 1


@pytest.mark.parametrize("unary_ops", [(), ("sin", "exp")])
def test_random_trees_respect_depth(unary_ops):
    search = BasicSR(X, Y, SearchConfig(unary_ops=unary_ops), seed=0)
    trees = [search.sampler.tree(3) for _ in range(300)]
    assert max(t.depth for t in trees) == 3
    assert all(t.size > 1 for t in trees)  # the root is never a terminal
    ops = {n.op for t in trees for n in t.nodes() if hasattr(n, "op")}
    assert ops == {"*", "+", "-", *unary_ops}


def test_a_run_can_start_from_a_given_population():
    start = [parse(e) for e in ["x0", "x1", "(x0 * x1)", "(x1 * x1)", "1.0", "(x0 + x1)", "(x0 - 1.0)", "x1",
                                "(x1 + 1.0)", "(x0 * x0)"]]
    trace = BasicSR(X, Y, SMALL, seed=4).run(start=start)
    assert trace.generations[0].expressions == [str(e) for e in start]
    assert trace.generations[0].parents == [()] * 10
    with pytest.raises(ValueError, match="needs 10 members, got 2"):
        BasicSR(X, Y, SMALL, seed=4).run(start=start[:2])


def test_evaluation_budget_ends_a_run_and_evaluations_count_distinct_expressions():
    full = BasicSR(X, Y, SMALL, seed=5)
    trace = full.run()
    assert trace.evaluations == full.evaluations == len({e for g in trace.generations for e in g.expressions})
    budget = trace.evaluations // 2
    cut = run_search(X, Y, replace(SMALL, budget_evaluations=budget), seed=5)
    assert cut.evaluations >= budget and len(cut.generations) < len(trace.generations)
    seen_before_last = {e for g in cut.generations[:-1] for e in g.expressions}
    assert len(seen_before_last) < budget  # it stopped at the first generation that reached the budget
