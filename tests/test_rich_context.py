"""The text alternative to an embedder (--model.context rich): statistics of y in the context line."""

import json

import numpy as np
import pytest

import evaluate
from sr_lightning.data.describe import stats_suffix
from sr_lightning.data.format import Pair
from sr_lightning.data.points import ProblemIndex
from sr_lightning.data.stream import LineReport, parse_lines
from sr_lightning.data.tokenizer import SRTokenizer
from sr_lightning.evaluation.checkpoints import load_for_evaluation
from sr_lightning.evaluation.proposals import NeuralProposer
from sr_lightning.sr.primitives import Primitives
from sr_lightning.sr.problems import load_problems
from sr_lightning.sr.search import SearchConfig
from sr_lightning.task import OneStepTask
from tests.conftest import tiny_config, train_in_process, write_tiny_data
from tests.helpers import SAMPLE, SAMPLE_PROBLEMS, fixture_lines

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_statistics_of_y_along_the_first_variable():
    X = np.array([[3.0], [0.0], [2.0], [1.0]])  # out of order: statistics follow x0
    y = np.array([2.0, -1.0, 1.0, 0.0])
    assert stats_suffix(X, y) == (" | STATS: range=[-1.000,2.000] | mean=0.500 | var=1.250 | skew=0.000 | "
                                  "monotonic=increasing | zeros=1 | complexity=1.000")


def test_a_curve_that_turns_back_is_not_monotonic_and_more_complex():
    x = np.linspace(-3, 3, 61)[:, None]
    text = stats_suffix(x, np.sin(2 * x[:, 0]))
    assert "monotonic=no" in text and "zeros=3" in text
    assert float(text.rsplit("complexity=", 1)[1]) > 3


def test_a_constant_y_has_zero_skew_and_complexity():
    text = stats_suffix(np.zeros((5, 2)), np.full(5, 4.0))
    assert "var=0.000 | skew=0.000" in text and text.endswith("complexity=0.000")


def _pairs(n: int) -> list[Pair]:
    return list(parse_lines([(f"{SAMPLE}:{i}", line.encode()) for i, line in enumerate(fixture_lines()[:n], 1)],
                            LineReport()))


def test_the_rich_task_appends_the_problems_statistics_and_keeps_its_primitives():
    task = OneStepTask(SRTokenizer.default(), 1024, context="rich")
    assert task.reads_points and not task.max_points
    (pair, example), = task.encode(_pairs(1), LineReport(), ProblemIndex())
    problem = load_problems(SAMPLE_PROBLEMS)[pair.expression_id]
    assert pair.context.endswith(stats_suffix(problem.X, problem.y))
    assert "STATS: range=" in task.tokenizer.decode(example.input_ids)
    assert Primitives.from_context(pair.context) == Primitives.from_context(_pairs(1)[0].context)
    assert "points_X" not in task.collate([example])  # the text carries the data; no embedder


def test_rich_examples_without_points_or_context_are_skipped_and_counted():
    task = OneStepTask(SRTokenizer.default(), 1024, context="rich")
    report = LineReport()
    assert task.encode(_pairs(2), report, ProblemIndex.of({})) == []
    prompt_only = Pair("x0", prompt="<CONTEXT>anything", expression_id=_pairs(1)[0].expression_id, source="p:1")
    assert task.encode([prompt_only], report, ProblemIndex.of(load_problems(SAMPLE_PROBLEMS))) == []
    assert report.total == 3 and report.counts["no points"] == 2
    assert report.examples[-1].startswith("p:1: the rich context needs the record's 'context' field")


def test_an_unknown_context_kind_is_refused():
    with pytest.raises(ValueError, match="context must be one of basic, rich"):
        OneStepTask(SRTokenizer.default(), 1024, context="superrich")


def test_a_rich_model_trains_evaluates_and_searches_with_the_statistics(tmp_path):
    train_file, val_file, _ = write_tiny_data(tmp_path)
    config = tiny_config(tmp_path, train_file, val_file)
    config["trainer"].update(max_steps=3, check_val_every_n_epoch=3)
    config["model"]["context"] = "rich"
    run = train_in_process(tmp_path, config)
    model, task, _ = load_for_evaluation(run)
    assert task.context == "rich"
    assert evaluate.main(["--checkpoint", str(run), "--max-new-tokens", "4"]) == 0
    report = json.loads((run / "evaluation" / "report.json").read_text())
    assert report["n_examples"] == 8 and report["val_loss"] == pytest.approx(report["recorded_val_loss"], rel=1e-5)
    problem = load_problems(SAMPLE_PROBLEMS)[900]
    proposer = NeuralProposer(model, task, SearchConfig(population_size=4), problem.n_vars, problem=problem)
    prompt = task.tokenizer.decode(proposer.prompt_ids(1, ["x0", "x0"], [0.5, 0.5]))
    assert stats_suffix(problem.X, problem.y) in prompt
    with pytest.raises(ValueError, match="give NeuralProposer the problem"):
        NeuralProposer(model, task, SearchConfig(population_size=4), problem.n_vars)
