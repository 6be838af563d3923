import json
import warnings

import numpy as np
import pytest

from sr_lightning.data.format import format_fitness, population_items
from sr_lightning.sr.expression import (
    INVALID_FITNESS,
    Binary,
    Constant,
    ExpressionError,
    Unary,
    Variable,
    fitness,
    masked_mse,
    mse,
    parse,
    parse_first,
    predict,
    r2,
)
from tests.helpers import SAMPLE_PROBLEMS, fixture_lines

X3 = np.array([[0.0, 1.0], [1.0, -2.0], [2.0, 0.5], [3.0, 4.0]])


@pytest.mark.parametrize("text", [
    "x0", "x12", "1.0", "-2.5", "1e-05", "-3.5e+20", "0.001",
    "(x0 + x1)", "((x0 * x0) + 1.0)", "(x0 - -2.5)", "(x1 / (x0 - 1.0))",
    "sin(x0)", "exp((x0 * -0.5))", "abs(sqrt(log((x1 * 1e-05))))",
    "(cos(x0) + tan(inv(x1)))", "pow2(neg(pow3(x2)))",
    "((x0 + (1.0 + x1)) + (1.0 * (x1 + 1.0)))",
])
def test_round_trip(text):
    assert str(parse(text)) == text


def test_printer_builds_the_original_format():
    tree = Binary("+", Binary("*", Variable(0), Variable(0)), Unary("sin", Constant(-2.5)))
    assert str(tree) == "((x0 * x0) + sin(-2.5))"
    assert str(Constant(1)) == "1.0"


def test_parser_tolerates_spacing_and_integers():
    assert str(parse("  ( x0+  -1 )  ")) == "(x0 + -1.0)"
    assert str(parse("sin( x1 )")) == "sin(x1)"


@pytest.mark.parametrize("text, reason", [
    ("", "unexpected end"),
    ("(x0 + x1", "expected ')'"),
    ("(x0 x1)", "binary operator"),
    ("x0 x1", "trailing"),
    ("x0 <FITNESS>-1.0", "trailing"),
    ("foo(x0)", "unknown name"),
    ("sin x0", "expected '('"),
    ("(x0)", "binary operator"),
    ("(x0 ^ x1)", "binary operator"),
    ("inf", "unknown name"),
    ("x01", "unknown name"),
    ("(" * 500 + "x0", "nested too deeply"),
    ("#", "unexpected character"),
])
def test_parse_errors(text, reason):
    with pytest.raises(ExpressionError, match="position") as info:
        parse(text)
    assert reason in str(info.value)
    assert isinstance(info.value, ValueError)


def test_parse_first_ignores_what_follows():
    assert str(parse_first("((x0 * x1) + 1.0) <FITNESS>-1.0 x1")) == "((x0 * x1) + 1.0)"
    assert str(parse_first("x1<|endoftext|>")) == "x1"
    assert str(parse_first(" -2.5 (x0")) == "-2.5"
    with pytest.raises(ExpressionError, match="expected"):
        parse_first("((x0 * x1) + <FITNESS>")


def test_size_depth_nodes_and_replace():
    tree = parse("((x0 * x1) + sin(1.0))")
    assert tree.size == 6 and tree.depth == 2
    assert [str(n) for n in tree.nodes()] == ["((x0 * x1) + sin(1.0))", "(x0 * x1)", "x0", "x1", "sin(1.0)", "1.0"]
    assert str(tree.replace(4, Variable(2))) == "((x0 * x1) + x2)"
    assert str(tree.replace(3, parse("(x1 - 1.0)"))) == "((x0 * (x1 - 1.0)) + sin(1.0))"
    assert str(tree.replace(0, Variable(5))) == "x5"
    assert str(tree) == "((x0 * x1) + sin(1.0))"  # immutable
    assert tree.replace(5, Variable(0)).size == 6
    with pytest.raises(IndexError):
        tree.replace(6, Variable(0))


def evaluate_quietly(text, X):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any numpy RuntimeWarning fails the test
        return predict(parse(text), X)


def test_evaluation_values():
    np.testing.assert_array_equal(evaluate_quietly("((x0 * x1) - 1.0)", X3), [-1.0, -3.0, 0.0, 11.0])
    np.testing.assert_array_equal(evaluate_quietly("2.5", X3), [2.5] * 4)


def test_division_clamps_denominator():
    np.testing.assert_array_equal(evaluate_quietly("(1.0 / (x0 - x0))", X3), [1e10] * 4)
    np.testing.assert_array_equal(evaluate_quietly("(x1 / 2.0)", X3), X3[:, 1] / 2)
    np.testing.assert_array_equal(evaluate_quietly("(1.0 / -1e-12)", X3), [1e10] * 4)  # sign dropped, as the original


def test_unary_protections():
    zero = np.zeros((2, 1))
    assert evaluate_quietly("log(x0)", zero)[0] == pytest.approx(np.log(1e-12))
    assert evaluate_quietly("sqrt(-4.0)", zero)[0] == 2.0
    assert evaluate_quietly("exp(1000.0)", zero)[0] == pytest.approx(np.exp(14.0))
    assert evaluate_quietly("inv(x0)", zero)[0] == pytest.approx(1e6)
    assert evaluate_quietly("inv(-1e-09)", zero)[0] == pytest.approx(-1e6)
    assert evaluate_quietly("inv(4.0)", zero)[0] == 0.25
    assert abs(evaluate_quietly("tan(1.5707963267948966)", zero)[0]) <= 1e6
    assert evaluate_quietly("tan(0.5)", zero)[0] == pytest.approx(np.tan(0.5))


def test_overflow_is_silent_and_invalid():
    big = np.full((4, 1), 1e200)
    values = evaluate_quietly("(x0 * x0)", big)
    assert np.all(np.isinf(values))
    assert fitness(parse("(x0 * x0)"), big, np.zeros(4)) == INVALID_FITNESS


def test_fitness_hand_computed():
    X = np.array([[0.0], [1.0], [2.0], [3.0]])
    y = np.array([1.0, 2.0, 3.0, 4.0])
    assert fitness(parse("(x0 + 1.0)"), X, y) == pytest.approx(-0.03)  # exact fit, 3 nodes
    assert fitness(parse("x0"), X, y) == pytest.approx(-1.01)  # MSE 1, 1 node
    assert fitness(parse("(x0 * x0)"), X, y) == pytest.approx(-(1 + 1 + 1 + 25) / 4 - 0.03)


def test_masked_mse_counts_only_valid_points():
    zeros6 = np.zeros(6)
    assert masked_mse(np.array([1.0, 2.0, 3.0, np.nan, np.inf, 2e6]), zeros6) == pytest.approx(14 / 3)
    assert masked_mse(np.array([1.0, 2.0, np.nan, np.nan, np.inf, 1e6]), zeros6) == np.inf  # 2 < 3 valid
    zeros8 = np.zeros(8)
    assert masked_mse(np.array([1.0] * 3 + [np.nan] * 5), zeros8) == np.inf  # 3 < int(8/2)
    assert masked_mse(np.array([1.0] * 4 + [np.nan] * 4), zeros8) == 1.0
    assert masked_mse(np.array([1.0] * 3 + [np.nan] * 4), np.zeros(7)) == 1.0  # int(3.5) = 3 suffices


def test_unknown_variable_is_invalid():
    assert fitness(parse("x2"), X3, np.zeros(4)) == INVALID_FITNESS
    assert format_fitness(INVALID_FITNESS) == "-10000000000.00000"


def test_mse_and_r2_helpers():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    assert mse(y, y + 1) == 1.0
    assert mse(y, [1.0, np.nan, 3.0, 4.0]) == np.inf
    assert r2(y, y) == 1.0
    assert r2(y, np.full(4, 2.5)) == 0.0
    assert r2(y, [2.0, 2.0, 3.0, 4.0]) == pytest.approx(1 - 1 / 5)
    assert r2(np.ones(3), np.ones(3)) == 1.0
    assert r2(np.ones(3), np.zeros(3)) == -np.inf


def test_every_fixture_fitness_is_reproduced_exactly():
    problems = json.loads(SAMPLE_PROBLEMS.read_text())
    checked = 0
    for line in fixture_lines():
        record = json.loads(line)
        problem = problems[str(record["expression_id"])]
        X, y = np.array(problem["X"]), np.array(problem["y"])
        for expression, printed in population_items(record["population"]):
            tree = parse(expression)
            assert str(tree) == expression
            assert format_fitness(fitness(tree, X, y)) == printed, expression
            checked += 1
        assert str(parse(record["target"])) == record["target"]
    assert checked == 18 * 20
