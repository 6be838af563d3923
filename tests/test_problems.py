
import numpy as np
import pytest

from sr_lightning.sr.expression import parse, predict
from sr_lightning.sr.problems import (
    GENERATED_ID_BASE,
    ProblemConfig,
    generated_id,
    load_problems,
    named_problems,
    random_problem,
    save_problems,
)
from tests.helpers import SAMPLE_PROBLEMS


def test_random_problem_is_deterministic_for_a_seed():
    a, b, c = random_problem(1000, 5), random_problem(1000, 5), random_problem(1000, 6)
    assert a.expression == b.expression and np.array_equal(a.X, b.X) and np.array_equal(a.y, b.y)
    assert a.seed == 5 and a.expression_id == 1000
    assert not (a.X.shape == c.X.shape and np.array_equal(a.X, c.X))


@pytest.mark.parametrize("seed", range(12))
def test_random_problem_shape_and_data(seed):
    problem = random_problem(generated_id(seed), seed)
    n, d = problem.X.shape
    assert 1 <= d <= 10 and 5 * d <= n <= 200
    np.testing.assert_allclose(problem.X.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(problem.X.std(axis=0), 1.0, rtol=1e-12)
    tree = parse(problem.expression)
    assert tree.size <= 15 and tree.depth <= 4
    assert set(problem.expression) <= set("x0123456789 ()+-*.")
    np.testing.assert_array_equal(problem.y, predict(tree, problem.X))
    assert np.all(np.isfinite(problem.y)) and np.ptp(problem.y) > 0


def test_problem_config_limits():
    config = ProblemConfig(min_vars=3, max_vars=3, max_depth=2, max_size=5, max_points=40)
    for seed in range(10):
        problem = random_problem(0, seed, config)
        assert problem.n_vars == 3 and 15 <= problem.X.shape[0] <= 40
        assert parse(problem.expression).size <= 5


def test_constant_targets_are_rejected():
    # Depth 0 trees are single terminals: a variable, or the constant 1.0 (constant y, degenerate).
    config = ProblemConfig(max_depth=0)
    expressions = {random_problem(0, seed, config).expression for seed in range(40)}
    assert expressions and all(e.startswith("x") for e in expressions)


def test_named_problems():
    problems = named_problems()
    assert {"bivariate_sum", "polynomial_product", "trivariate_sum", "discriminant", "scaled_square",
            "quadratic", "x0_x1_squared", "triple_product"} <= set(problems)
    ids = [p.expression_id for p in problems.values()]
    assert len(set(ids)) == len(ids) and all(900 <= i < GENERATED_ID_BASE for i in ids)
    assert problems["bivariate_sum"].expression_id == 900 and problems["polynomial_product"].expression_id == 901
    formulas = {
        "bivariate_sum": lambda x: x[:, 0] ** 2 + x[:, 1] ** 2,
        "polynomial_product": lambda x: (x[:, 0] + 1) * (x[:, 1] + 2),
        "trivariate_sum": lambda x: x[:, 0] ** 2 + x[:, 1] ** 2 + x[:, 2] ** 2,
        "discriminant": lambda x: x[:, 1] ** 2 - 4 * x[:, 0] * x[:, 2],
        "scaled_square": lambda x: 8 * x[:, 0] ** 2,
        "quadratic": lambda x: x[:, 0] ** 2 + x[:, 0] + 1,
        "x0_x1_squared": lambda x: x[:, 0] * x[:, 1] ** 2,
        "triple_product": lambda x: x[:, 0] * x[:, 1] * x[:, 2],
    }
    for name, formula in formulas.items():
        np.testing.assert_allclose(problems[name].y, formula(problems[name].X), rtol=1e-12, atol=1e-12)


def test_named_problems_reproduce_the_original_data():
    original = load_problems(SAMPLE_PROBLEMS)
    problems = {p.expression_id: p for p in named_problems().values()}
    for expression_id in (900, 901):
        assert problems[expression_id].name == original[expression_id].name
        assert problems[expression_id].seed == original[expression_id].seed
        np.testing.assert_array_equal(problems[expression_id].X, original[expression_id].X)
        np.testing.assert_array_equal(problems[expression_id].y, original[expression_id].y)


def test_generated_ids_never_collide_with_named_ones():
    named = {p.expression_id for p in named_problems().values()}
    assert generated_id(0) == GENERATED_ID_BASE
    assert not named & {generated_id(i) for i in range(5000)}


def test_sidecar_round_trip(tmp_path):
    problems = [random_problem(generated_id(i), i) for i in range(3)] + list(named_problems().values())[:1]
    path = tmp_path / "problems.json"
    save_problems(path, problems)
    loaded = load_problems(path)
    assert sorted(loaded) == sorted(p.expression_id for p in problems)
    for problem in problems:
        back = loaded[problem.expression_id]
        assert (back.name, back.seed, back.expression) == (problem.name, problem.seed, problem.expression)
        np.testing.assert_array_equal(back.X, problem.X)  # floats survive JSON exactly
        np.testing.assert_array_equal(back.y, problem.y)


def test_original_sidecar_loads_without_expression():
    original = load_problems(SAMPLE_PROBLEMS)
    assert sorted(original) == [900, 901]
    assert original[900].name == "bivariate_sum" and original[900].expression is None
    assert original[900].X.shape == (50, 2) and original[900].y.shape == (50,)
