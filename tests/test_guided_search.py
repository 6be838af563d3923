"""Neural-guided search: prompts identical to training's, proposals, fallback, summaries, CLI."""

from __future__ import annotations

import gzip
import json
import pickle
from dataclasses import replace

import numpy as np
import pytest

import evaluate
from sr_lightning.data.format import pair_from_record, population_items
from sr_lightning.data.generate import dataset_problem_seed, records_from_trace
from sr_lightning.evaluation.checkpoints import EvaluationInputError, load_for_evaluation
from sr_lightning.evaluation.guided_search import (
    HELD_OUT_SEED_BASE,
    ComparisonSettings,
    RunResult,
    benchmark_problems,
    held_out_problems,
    problems_from_file,
    run_one,
    solved_pairs,
    summarize,
)
from sr_lightning.evaluation.proposals import NeuralProposer, drop_repeats, first_expression, search_pair
from sr_lightning.sr.expression import parse
from sr_lightning.sr.problems import Problem, named_problems, save_problems
from sr_lightning.sr.search import BasicSR, SearchConfig, run_search
from tests.conftest import SAMPLE

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = ComparisonSettings(generations=4, population_size=6, held_out=1, named=False)


@pytest.fixture(scope="module")
def trained(tiny_run):
    model, task, _ = load_for_evaluation(tiny_run.run_dir)
    return model, task


def test_search_prompts_are_byte_identical_to_the_generators_records(trained):
    model, task = trained
    problem = named_problems()["quadratic"]
    config = SearchConfig(population_size=8, generations=5)
    trace = run_search(problem.X, problem.y, config, seed=3)
    proposer = NeuralProposer(model, task, config, problem.n_vars)
    records = list(records_from_trace(trace, problem, "all"))
    assert len(records) == 4 * 8
    for record in records:
        g = record["metadata"]["generation"]
        current = trace.generations[g]
        pair = search_pair(g, problem.n_vars, config, current.expressions, current.fitnesses)
        training = pair_from_record(record)
        assert pair.prompt_text.encode() == training.prompt_text.encode()
        assert proposer.prompt_ids(g, current.expressions, current.fitnesses) == task.tokenizer.encode_prompts([training])[0]


def test_search_prompts_match_the_original_systems_lines():
    """Rebuilt from each fixture line's own population, the prompt is the original's, byte for byte."""
    for line in SAMPLE.read_text().splitlines():
        original = pair_from_record(json.loads(line))
        items = population_items(original.population)
        generation = json.loads(line)["metadata"]["generation"]
        pair = search_pair(generation, 2, SearchConfig(), [e for e, _ in items], [float(f) for _, f in items])
        assert pair.input_text.encode() == original.input_text.encode()


def test_first_expression_of_a_completion():
    assert first_expression("(x0 * x1)") == "(x0 * x1)"
    assert first_expression("(x0 * x1) <FITNESS>-1.00000 x0") == "(x0 * x1)"
    assert first_expression("x3<POPULATION>") == "x3"
    assert first_expression("((x0 * x1)") is None
    assert first_expression("") is None
    assert first_expression("<FITNESS>") is None


def test_proposer_samples_p_minus_1_expressions_reproducibly(trained):
    model, task = trained
    problem = named_problems()["bivariate_sum"]
    config = SearchConfig(population_size=6)
    trace = run_search(problem.X, problem.y, SearchConfig(population_size=6, generations=1), seed=0)
    state = (0, trace.generations[0].expressions, trace.generations[0].fitnesses)
    first = NeuralProposer(model, task, config, problem.n_vars, seed=11)(*state)
    again = NeuralProposer(model, task, config, problem.n_vars, seed=11)(*state)
    assert len(first) == 5 and first == again
    assert all(p is None or str(parse(p)) == p for p in first)
    written = [p for seed in range(8) for p in NeuralProposer(model, task, config, problem.n_vars, seed=seed)(*state)]
    assert any(p is not None for p in written)  # the tiny model writes expressions


def test_unusable_proposals_fall_back_to_the_evolutionary_child(trained, scripted_model):
    _, task = trained
    problem = named_problems()["bivariate_sum"]
    garbage = scripted_model(task.tokenizer, ")")  # never an expression: every slot falls back
    neural = run_one(problem, "neural", 0, SMALL, garbage, task)
    basic = run_one(problem, "basic", 0, SMALL)
    assert neural.proposals == (neural.generations - 1) * 5 and neural.well_formed == 0
    assert (neural.best_expression, neural.best_mse, neural.generations) == \
        (basic.best_expression, basic.best_mse, basic.generations)


def test_neural_run_uses_the_models_proposals(trained, scripted_model):
    _, task = trained
    X = named_problems()["x0_x1_squared"].X
    problem = Problem(5, "product", "(x0 * x1)", X, X[:, 0] * X[:, 1], 0)
    assert not run_one(problem, "basic", 0, SMALL).solved  # BasicSR alone misses it in this budget
    oracle = scripted_model(task.tokenizer, "(x0 * x1)")  # always proposes the solution
    result = run_one(problem, "neural", 0, SMALL, oracle, task)
    assert result.solved and result.best_mse == 0.0 and result.r2 == 1.0
    assert result.generations_to_solve == 1 and result.generations == 2  # a solved run stops
    assert result.proposals == result.well_formed == 5


def test_drop_repeats_keeps_first_new_occurrences():
    population = ["x0", "(x0 + x1)"]
    proposals = ["x0", "(x0 * x1)", None, "(x0 * x1)", "x1", "(x0 + x1)"]
    assert drop_repeats(proposals, population) == [None, "(x0 * x1)", None, None, "x1", None]


def test_model_fills_only_the_slots_it_is_given(trained, scripted_model):
    _, task = trained
    problem = named_problems()["bivariate_sum"]
    settings = ComparisonSettings(generations=4, population_size=6, proposals=2)
    result = run_one(problem, "neural", 0, settings, scripted_model(task.tokenizer, "(x0 * x1)"), task)
    assert result.proposals == result.well_formed == (result.generations - 1) * 2 and result.repeats == 0
    none = run_one(problem, "neural", 0, ComparisonSettings(generations=4, population_size=6, proposals=0),
                   scripted_model(task.tokenizer, "(x0 * x1)"), task)
    basic = run_one(problem, "basic", 0, settings)
    assert none.proposals == 0 and (none.best_expression, none.generations) == (basic.best_expression,
                                                                              basic.generations)
    with pytest.raises(ValueError, match="proposals must be in 0 .. population_size - 1 = 5"):
        ComparisonSettings(population_size=6, proposals=6)


def test_distinct_proposals_leave_repeats_to_evolution(trained, scripted_model):
    _, task = trained
    X = named_problems()["x0_x1_squared"].X
    problem = Problem(5, "quadratic sum", "((x0 * x0) + x1)", X, X[:, 0] ** 2 + X[:, 1], 0)
    stuck = scripted_model(task.tokenizer, "(x0 * x1)")  # always the same wrong expression
    settings = ComparisonSettings(generations=4, population_size=6, distinct=True)
    result = run_one(problem, "neural", 0, settings, stuck, task)
    # generation 1 takes one copy (4 repeats); later ones already hold it (via the elite or a child)
    assert result.proposals == 15 and result.well_formed + result.repeats == 15
    assert 1 <= result.well_formed <= 3 and result.repeats >= 12
    summary = summarize([result])["neural"]
    assert summary["well_formed_rate"] == 1.0 and summary["repeat_rate"] == result.repeats / 15


def test_summary_by_hand():
    def run(method, mse, r2, gens, proposals=0, well_formed=0, seconds=1.0, seed=0, problem=1):
        return RunResult("p", problem, 1, method, seed, "x0", mse, r2, mse <= 1e-10, 10, gens, proposals,
                         well_formed, seconds, evaluations=100 + 10 * seed)

    results = [run("basic", 0.0, 1.0, 4), run("basic", 2.0, 0.5, None, seed=1),
               run("basic", 1e-12, 1.0, 8, seed=2),
               run("neural", 0.5, 0.995, None, 19, 10, 2.0), run("neural", 0.0, 1.0, 2, 19, 19, 3.0, seed=1)]
    summary = summarize(results)
    assert summary["basic"] == {"runs": 3, "solved": 2, "solve_rate": 2 / 3, "solved_by_seed": [1, 0, 1],
                                "median_best_mse": 1e-12, "r2_rate": 2 / 3,
                                "median_generations_to_solve": 6.0, "well_formed_rate": None,
                                "repeat_rate": None, "mean_generations": 10.0, "mean_evaluations": 110.0,
                                "wall_seconds": 3.0,
                                "mean_seconds_per_run": 1.0, "seconds_per_generation": 0.1,
                                "solved_per_minute": 40.0}
    assert summary["neural"]["solve_rate"] == 0.5 and summary["neural"]["r2_rate"] == 1.0
    assert summary["neural"]["median_best_mse"] == 0.25 and summary["neural"]["median_generations_to_solve"] == 2
    assert summary["neural"]["well_formed_rate"] == 29 / 38 and summary["neural"]["wall_seconds"] == 5.0
    assert summary["neural"]["solved_by_seed"] == [0, 1]
    assert solved_pairs(results) == {"both": 0, "basic_only": 2, "neural_only": 1, "neither": 0}


def test_held_out_problems_use_seeds_no_training_problem_can_have():
    problems = held_out_problems(3)
    assert [p.seed for p in problems] == [HELD_OUT_SEED_BASE + i for i in range(3)]
    assert max(dataset_problem_seed(s, i) for s in range(3) for i in range(200)) < HELD_OUT_SEED_BASE  # 32-bit
    again = held_out_problems(3)
    assert all(np.array_equal(a.y, b.y) and a.expression == b.expression for a, b in zip(problems, again))
    assert len({p.expression_id for p in problems}) == 3


def test_search_command_writes_both_methods(tiny_run, tmp_path, capsys):
    argv = ["search", "--checkpoint", str(tiny_run.run_dir), "--problems", "1", "--no-named",
            "--generations", "3", "--population", "6", "--out", str(tmp_path)]
    assert evaluate.main(argv) == 0
    document = json.loads((tmp_path / "search.json").read_text())
    assert set(document["summary"]) == {"basic", "neural"}
    assert sum(document["solved_pairs"].values()) == 1  # one problem, one seed
    for method in ("basic", "neural"):
        assert {"solve_rate", "median_best_mse", "r2_rate", "median_generations_to_solve", "well_formed_rate",
                "wall_seconds"} <= set(document["summary"][method])
    neural = [r for r in document["runs"] if r["method"] == "neural"]
    assert len(neural) == 1 and neural[0]["proposals"] == (neural[0]["generations"] - 1) * 5
    assert "| problem |" in (tmp_path / "search.md").read_text()
    assert "| solved |" in capsys.readouterr().out


def test_search_command_rejects_more_proposals_than_slots(tmp_path, capsys):
    argv = ["search", "--runs", str(tmp_path), "--population", "6", "--proposals", "6"]
    assert evaluate.main(argv) == 2
    assert capsys.readouterr().err.strip() == \
        "error: --proposals: proposals must be in 0 .. population_size - 1 = 5, got 6"


def test_oversampling_keeps_the_fittest_distinct_usable_proposals(trained):
    model, task = trained
    problem = named_problems()["quadratic"]
    search = BasicSR(problem.X, problem.y, SMALL.search_config())
    proposer = NeuralProposer(model, task, SMALL.search_config(), 1, count=2, problem=problem, oversample=3,
                              screen=search.score)
    assert proposer.samples == 6
    fittest = proposer._fittest(["x0", None, "((x0 * x0) + x0)", "x0", "(((x0 * x0) + x0) + 1.0)", "(x0 +"])
    assert fittest == ["(((x0 * x0) + x0) + 1.0)", "((x0 * x0) + x0)"]
    assert search.evaluations == 3  # each distinct usable proposal scored once, in the run's own cache
    assert proposer._fittest([None, "x0", "x0"]) == ["x0", None]
    with pytest.raises(ValueError, match="needs a screen"):
        NeuralProposer(model, task, SMALL.search_config(), 1, count=2, problem=problem, oversample=3)


def test_an_oversampled_run_counts_its_screened_samples_as_evaluations(trained):
    model, task = trained
    problem = named_problems()["x0_x1_squared"]
    plain = run_one(problem, "neural", 0, replace(SMALL, proposals=2), model, task)
    screened = run_one(problem, "neural", 0, replace(SMALL, proposals=2, oversample=4), model, task)
    assert plain.proposals == 2 * (plain.generations - 1)
    assert screened.proposals == 4 * 2 * (screened.generations - 1)  # every sample drawn counts
    assert screened.evaluations > 0 and screened.well_formed <= screened.proposals
    budget = run_one(problem, "basic", 0, replace(SMALL, generations=None, budget_evaluations=30))
    assert 30 <= budget.evaluations and budget.generations >= 1


def test_a_problem_file_replaces_the_benchmark_problems(tmp_path):
    problems = [held_out_problems(2)[1], named_problems()["quadratic"]]
    save_problems(tmp_path / "mine.json", problems)
    loaded = benchmark_problems(replace(SMALL, problem_file=str(tmp_path / "mine.json")))
    assert [p.name for p in loaded] == ["quadratic", problems[0].name]  # by id
    assert all(np.array_equal(a.y, b.y) for a, b in zip(loaded, problems[::-1]))
    # the original's expressions file: a gzipped pickle of {"expressions": [{"id", "X_data", "y_data"}]}
    original = tmp_path / "expressions.pkl.gz"
    entries = [{"id": 7, "X_data": problems[1].X, "y_data": problems[1].y, "expression": problems[1].expression}]
    original.write_bytes(gzip.compress(pickle.dumps({"expressions": entries})))
    (only,) = problems_from_file(original)
    assert only.expression_id == 7 and np.array_equal(only.X, problems[1].X)


def test_a_bad_problem_file_is_one_error_line_naming_it(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"3": {"X": [[1.0], [2.0]], "y": [1.0, float("nan")]}}))
    with pytest.raises(EvaluationInputError, match=r"bad\.json: points are not finite \(expression_id 3\)"):
        problems_from_file(bad)
    argv = ["search", "--runs", str(tmp_path), "--problem-file", str(tmp_path / "missing.json")]
    assert evaluate.main(argv) == 2
    assert "missing.json" in capsys.readouterr().err
