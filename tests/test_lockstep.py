"""Guided runs in lockstep, time budgets, and search shards merged back into one result."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import numpy as np
import pytest

import evaluate
from sr_lightning.evaluation.checkpoints import load_for_evaluation
from sr_lightning.evaluation.guided_search import (
    TIMING_KEYS,
    ComparisonSettings,
    guided_run,
    result_of,
    benchmark_problems,
    compare,
    run_one,
    shard_runs,
)
from sr_lightning.evaluation.lockstep import run_lockstep

pytestmark = pytest.mark.usefixtures("one_thread")
SETTINGS = ComparisonSettings(generations=4, population_size=6, held_out=2, named=False, seeds=2, proposals=3)


@pytest.fixture(scope="module")
def trained(tiny_run):
    model, task, _ = load_for_evaluation(tiny_run.run_dir)
    return model, task


def _without_seconds(result) -> dict:
    return {k: v for k, v in asdict(result).items() if k != "seconds"}


def test_a_run_in_lockstep_is_the_run_alone(trained):
    model, task = trained
    problems = benchmark_problems(SETTINGS)
    runs = [guided_run(p, s, SETTINGS, model, task) for p, s in shard_runs(problems, SETTINGS.seeds)]
    done = run_lockstep(runs, batch_runs=1, progress=False)
    for (problem, seed), run in zip(shard_runs(problems, SETTINGS.seeds), done):
        alone = run_one(problem, "neural", seed, SETTINGS, model, task)
        assert _without_seconds(result_of(problem, "neural", seed, run.trace, 0.0, run.proposer)) == \
            _without_seconds(alone)
        assert run.clock.seconds > 0


def test_many_runs_per_model_call_give_every_run_its_proposals(trained):
    model, task = trained
    results = compare(benchmark_problems(SETTINGS), SETTINGS, model, task, batch_runs=3)
    assert [(r.expression_id, r.seed, r.method) for r in results] == \
        [(p.expression_id, s, m) for p, s in shard_runs(benchmark_problems(SETTINGS), 2) for m in ("basic", "neural")]
    for result in results:
        if result.method == "neural":
            assert result.proposals == (result.generations - 1) * 3


def test_a_time_budget_gives_each_method_the_same_seconds(trained):
    model, task = trained
    problem = benchmark_problems(SETTINGS)[0]
    hard = replace(problem, y=np.exp(problem.X[:, 0]))  # no polynomial is exp(x0): no run ends solved
    settings = ComparisonSettings(population_size=6, budget_seconds=0.3, proposals=3)
    basic = run_one(hard, "basic", 0, settings)
    neural = run_one(hard, "neural", 0, settings, model, task)
    for result in (basic, neural):
        assert result.solved or result.seconds >= 0.3
        assert result.seconds < 0.3 + 3.0  # it stops at the first generation past its budget
    assert not (basic.solved or neural.solved)
    assert basic.generations > neural.generations  # evolution alone runs more generations in the same time


def test_shards_merge_into_the_unsharded_result(trained, tiny_run, tmp_path, capsys):
    common = ["--checkpoint", str(tiny_run.run_dir), "--problems", "3", "--no-named", "--generations", "3",
              "--population", "6", "--seeds", "2", "--proposals", "2", "--batch-runs", "1"]
    assert evaluate.main(["search", *common, "--out", str(tmp_path / "whole")]) == 0
    for index in range(3):
        assert evaluate.main(["search", *common, "--shard", f"{index}/3", "--out", str(tmp_path / f"part{index}")]) == 0
    parts = [str(tmp_path / f"part{i}") for i in (2, 0, 1)]  # any order
    assert evaluate.main(["search", "merge", *parts, "--out", str(tmp_path / "merged")]) == 0
    whole, merged = (json.loads((tmp_path / d / "search.json").read_text()) for d in ("whole", "merged"))
    assert len(merged["runs"]) == 3 * 2 * 2
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in merged["runs"]] == \
        [{k: v for k, v in r.items() if k != "seconds"} for r in whole["runs"]]
    for method in ("basic", "neural"):
        assert {k: v for k, v in merged["summary"][method].items() if k not in TIMING_KEYS} == \
            {k: v for k, v in whole["summary"][method].items() if k not in TIMING_KEYS}
    assert merged["solved_pairs"] == whole["solved_pairs"] and merged["settings"] == whole["settings"]
    capsys.readouterr()
    assert evaluate.main(["search", "merge", parts[0], parts[1], "--out", str(tmp_path / "bad")]) == 2
    assert "a merge needs each of 0/3 .. 2/3 exactly once" in capsys.readouterr().err


def test_search_options_are_checked_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit):
        evaluate.main(["search", "--runs", str(tmp_path), "--shard", "3/3"])
    assert "error: argument --shard: expected I/N with 0 <= I < N, got '3/3'" in capsys.readouterr().err
    assert evaluate.main(["search", "--runs", str(tmp_path), "--budget-seconds", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --budget-seconds: budget_seconds must be positive, got 0.0"


def test_search_bench_times_the_four_paths_on_the_same_runs(tiny_run, capsys):
    from sr_lightning.evaluation.search_bench import main as search_bench

    assert search_bench(["--checkpoint", str(tiny_run.run_dir), "--problems", "2", "--no-named",
                         "--generations", "3", "--population", "6", "--proposals", "2", "--threads", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| BasicSR") or
            line.startswith("| guided")]
    assert len(rows) == 4
    for row in rows[1:]:  # each generation after a run's first has its 2 proposals, in every guided path
        cells = [cell.strip() for cell in row.split("|")]
        assert int(cells[5]) == 2 * (int(cells[3]) - 2) > 0
