"""Direct mode: the problem's points -> its whole expression; recovery judged exactly; warm-started search."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import lightning as L
import numpy as np
import pytest

import evaluate
from sr_lightning.data.datamodule import OneStepDataModule
from sr_lightning.data.format import pair_from_record
from sr_lightning.data.generate import Job, direct_record, main as generate_main, write_dataset
from sr_lightning.data.points import ProblemIndex
from sr_lightning.data.stream import BadInputError, LineReport
from sr_lightning.data.tokenizer import SRTokenizer
from sr_lightning.evaluation.direct import DirectSettings, direct_guesses, direct_pair, judge, recover, summarize
from sr_lightning.evaluation.guided_search import ComparisonSettings, held_out_problems, run_one, warm_population
from sr_lightning.evaluation.report import read_pairs
from sr_lightning.module import OneStepLM
from sr_lightning.sr.expression import parse
from sr_lightning.sr.primitives import Primitives
from sr_lightning.sr.problems import ProblemConfig, named_problems
from sr_lightning.sr.refit import refit_constants
from sr_lightning.sr.search import BasicSR, SearchConfig
from sr_lightning.sr.simplify import polynomial, same_function
from sr_lightning.task import OneStepTask
from tests.conftest import train_in_process

pytestmark = pytest.mark.usefixtures("one_thread")
TOKENIZER = SRTokenizer.default()


def _micro(embedder: str = "e2e", **changes) -> OneStepLM:
    overrides = {"n_positions": 192, "hidden_size": 64, "embed_dropout": 0.0, "attn_dropout": 0.0,
                 "resid_dropout": 0.0}
    return OneStepLM(preset="micro", input_embedder=embedder, model_overrides=overrides, **changes)


def _dataset(out, problems: int, inline: bool = False) -> None:
    generate_main(["--problems", str(problems), "--out", str(out), "--mode", "direct", "--workers", "1",
                   "--val-fraction", "0", "--test-fraction", "0", *(["--inline-points"] if inline else [])])


def _examples(path):
    index = ProblemIndex()
    return [(pair, index.find(pair)) for pair in read_pairs([path], LineReport())]


def test_direct_records_round_trip_from_both_layouts(tmp_path):
    _dataset(tmp_path / "sidecar", 6)
    _dataset(tmp_path / "inline", 6, inline=True)
    task = replace(OneStepTask(TOKENIZER, 128, max_points=64), mode="direct")
    encoded = {}
    for layout in ("sidecar", "inline"):
        lines = (tmp_path / layout / "train.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines]
        assert all("population" not in r and r["context"].endswith("| ops: *,+,- | constants: 1.0") for r in records)
        assert all(("X_data" in r) == (layout == "inline") for r in records)
        pairs = list(read_pairs([tmp_path / layout / "train.jsonl"], LineReport()))
        encoded[layout] = task.encode(pairs, LineReport(), ProblemIndex())
    for (pair, a), (_, b) in zip(encoded["sidecar"], encoded["inline"]):
        assert pair.direct and a.input_ids == b.input_ids and a.target_ids == b.target_ids
        assert np.array_equal(a.points.X, b.points.X) and np.array_equal(a.points.y, b.points.y)
        assert TOKENIZER.decode(a.input_ids).endswith(pair.context)
    (pair, example), *_ = encoded["sidecar"]
    problem = example.points
    assert parse(pair.target) == parse(problem.expression)  # the problem's own expression, as printed
    assert np.allclose(parse(pair.target).evaluate(problem.X), problem.y)


def test_a_run_skips_and_counts_examples_of_the_other_mode():
    onestep = {"context": "generation: 0 | 1 variables | ops: *,+,- | constants: 1.0",
               "population": "x0 <FITNESS>-1.00000", "target": "x0", "X_data": [[1.0]], "y_data": [1.0]}
    problem = named_problems()["quadratic"]
    direct = direct_record(problem, inline_points=True)
    pairs = [pair_from_record(onestep, "f:1"), pair_from_record(direct, "f:2")]
    for mode, kept in (("direct", "f:2"), ("onestep", "f:1")):
        report = LineReport()
        task = replace(OneStepTask(TOKENIZER, 256, max_points=64), mode=mode)
        assert [p.source for p, _ in task.encode(pairs, report, ProblemIndex.of({}))] == [kept]
        other, run = ("direct", "one-step") if mode == "onestep" else ("one-step", "direct")
        assert report.counts == {f"{other} example in a {run} run": 1}


def test_a_direct_model_must_read_the_points():
    with pytest.raises(ValueError, match="input embedder"):
        OneStepTask(TOKENIZER, 128, mode="direct")
    data = OneStepDataModule(train_files="x.jsonl", mode="direct", task=OneStepTask(TOKENIZER, 128))
    with pytest.raises(BadInputError, match="--data.mode direct"):
        data.setup("fit")


def test_polynomials_are_compared_exactly_and_other_functions_on_points():
    assert polynomial(parse("((x0 + 1.0) * (x0 - 1.0))")) == {(0, 0): 1.0, (): -1.0}
    assert same_function(parse("((x0 + 1.0) * x1)"), parse("((x1 * x0) + x1)"))
    assert not same_function(parse("(x0 * x1)"), parse("(x0 + x1)"))
    assert same_function(parse("sin((x0 + x0))"), parse("sin((2.0 * x0))"))
    assert not same_function(parse("sin(x0)"), parse("cos(x0)"))


def test_refitting_constants_recovers_the_numbers_and_never_makes_a_fit_worse():
    X = np.random.default_rng(0).standard_normal((80, 2))
    y = 2.5 * X[:, 0] * X[:, 1] - 3.0
    fitted = refit_constants(parse("((1.0 * (x0 * x1)) + 1.0)"), X, y)
    assert np.allclose(fitted.evaluate(X), y, atol=1e-8)
    wrong = parse("(x0 + 1.0)")
    assert np.mean((refit_constants(wrong, X, y).evaluate(X) - y) ** 2) <= np.mean((wrong.evaluate(X) - y) ** 2)
    assert refit_constants(parse("(x0 * x1)"), X, y) == parse("(x0 * x1)")  # nothing to fit


def test_judging_a_problem_by_hand():
    problem = named_problems()["quadratic"]  # (((x0 * x0) + x0) + 1.0)
    guesses = [parse("((x0 + 1.0) * x0)"), None, parse("((x0 * (x0 + 1.0)) + 1.0)"), parse("x0")]
    row = judge(problem, problem.expression, guesses)
    assert (row.greedy_exact, row.any_exact, row.valid, row.guesses) == (False, True, 3, 4)
    assert row.best_r2 == pytest.approx(1.0) and same_function(parse(row.best), parse(problem.expression))
    numbers = summarize([row], DirectSettings(samples=3))
    assert numbers["exact_rate"] == 1.0 and numbers["greedy_exact_rate"] == 0.0 and numbers["valid_rate"] == 0.75


def test_warm_start_with_no_guesses_taken_is_cold_basicsr_exactly():
    problem = held_out_problems(2)[1]
    settings = ComparisonSettings(generations=8, population_size=10, warm=0)
    guesses = [parse("(x0 * x0)"), parse("x0"), None]
    cold = run_one(problem, "basic", 1, settings)
    warm = run_one(problem, "warm", 1, settings, guesses=guesses)
    ignore = {"method", "seconds"}
    assert {k: v for k, v in asdict(warm).items() if k not in ignore} == \
        {k: v for k, v in asdict(cold).items() if k not in ignore}


def test_warm_start_puts_the_fittest_distinct_guesses_first():
    problem = named_problems()["quadratic"]
    search = BasicSR(problem.X, problem.y, SearchConfig(population_size=6), seed=0)
    guesses = [parse("x0"), parse("(((x0 * x0) + x0) + 1.0)"), parse("x0"), None, parse("(x0 * x0)")]
    start = warm_population(search, guesses, 2)
    assert [str(e) for e in start[:2]] == ["(((x0 * x0) + x0) + 1.0)", "(x0 * x0)"]
    assert len(start) == 6 and search.evaluations == 3  # the distinct guesses were scored by the run


def test_constrained_direct_guesses_are_well_formed_over_each_problems_primitives():
    module = _micro()
    task = replace(module.task, mode="direct")
    problems = held_out_problems(3)
    pairs = [direct_pair(problem) for problem in problems]
    settings = DirectSettings(samples=8, max_new_tokens=40, constrained=True)
    rows = direct_guesses(module.model.eval(), task, pairs, problems, settings)
    for pair, row in zip(pairs, rows):
        primitives = Primitives.from_context(pair.context)
        assert len(row) == 9 and all(g is not None and primitives.admits(g) and g.size <= 25 for g in row)


@pytest.mark.slow
def test_a_direct_micro_model_memorises_32_problems(tmp_path):
    write_dataset(tmp_path, 32, Job(0, ProblemConfig(), SearchConfig(), "all", "direct"), val_fraction=0,
                  test_fraction=0)
    L.seed_everything(0)
    module = _micro(learning_rate=5e-3, warmup_steps=20, weight_decay=0.0)
    data = OneStepDataModule(train_files=str(tmp_path / "train.jsonl"), batch_size=32, num_workers=0, mode="direct",
                             shuffle_buffer=64, length_grouping=0, task=module.task)
    trainer = L.Trainer(accelerator="cpu", max_steps=400, max_epochs=-1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=tmp_path)  # the run's tokenizer.json goes here, not into the clone
    trainer.fit(module, data)
    rows = recover(module.model.eval(), data.task, _examples(tmp_path / "train.jsonl"), DirectSettings(samples=0))
    assert len(rows) == 32
    assert summarize(rows, DirectSettings(samples=0))["greedy_exact_rate"] >= 0.95


@pytest.mark.slow
def test_report_and_warm_started_search_on_a_direct_run(tmp_path, capsys):
    _dataset(tmp_path / "data", 12)
    config = {"trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 4, "val_check_interval": 4,
                          "check_val_every_n_epoch": None, "num_sanity_val_steps": 0, "enable_progress_bar": False,
                          "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                                     "init_args": {"save_dir": str(tmp_path / "runs"), "name": "direct"}}},
              "model": {"preset": "micro", "input_embedder": "e2e", "warmup_steps": 2,
                        "model_overrides": {"n_positions": 192, "hidden_size": 64}},
              "data": {"train_files": str(tmp_path / "data" / "train.jsonl"),
                       "val_files": str(tmp_path / "data" / "train.jsonl"), "batch_size": 4, "num_workers": 0,
                       "mode": "direct"}}
    train_in_process(tmp_path, config)
    run = tmp_path / "runs" / "direct" / "version_0"
    assert evaluate.main(["--checkpoint", str(run), "--samples", "2"]) == 0
    report = json.loads((run / "evaluation" / "report.json").read_text())
    assert report["direct"]["problems"] == 12 and report["direct"]["guesses_per_problem"] == 3
    assert "## Direct: the expression from the points" in (run / "evaluation" / "report.md").read_text()
    argv = ["search", "--init", "direct", "--checkpoint", str(run), "--problems", "2", "--no-named",
            "--generations", "3", "--population", "6", "--seeds", "2", "--init-samples", "3", "--warm", "2",
            "--out", str(tmp_path / "search")]
    assert evaluate.main(argv) == 0
    document = json.loads((tmp_path / "search" / "search.json").read_text())
    assert set(document["summary"]) == {"basic", "warm"} and "warm_only" in document["solved_pairs"]
    assert evaluate.main(["search", "--guide", str(run), "--checkpoint", str(run), "--problems", "1"]) == 2
    assert "--guide goes with --init direct" in capsys.readouterr().err
