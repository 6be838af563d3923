"""The improvement loops: DAgger's labels, expert iteration's successes, the leak guard, the mix, the loop."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from sr_lightning.data.generate import records_from_trace
from sr_lightning.data.stream import count_lines
from sr_lightning.evaluation.checkpoints import EvaluationInputError, load_for_evaluation, run_files
from sr_lightning.evaluation.guided_search import ComparisonSettings, held_out_problems
from sr_lightning.improve import __main__ as cli
from sr_lightning.improve import labels, loop as loop_module
from sr_lightning.improve.labels import (
    TRAINING_ID_BASE,
    LeakError,
    check_training_only,
    expert_records,
    improving_members,
    success_records,
    training_problems,
)
from sr_lightning.improve.loop import Loop, LoopSettings
from sr_lightning.improve.mixing import write_mix
from sr_lightning.sr.expression import parse
from sr_lightning.sr.problems import named_problems
from sr_lightning.sr.search import BasicSR, Generation, SearchConfig, Trace, run_search

pytestmark = pytest.mark.usefixtures("one_thread")
CONFIG = SearchConfig(population_size=8, generations=6, early_stop_mse=1e-10, early_stop_extra_generations=0)


def _state(problem, generation: int = 3):
    """A population a run reached (generation ``generation`` of a seeded BasicSR run)."""
    return run_search(problem.X, problem.y, replace(CONFIG, generations=generation + 1), seed=11).generations[-1]


def test_dagger_labels_are_basicsr_step_from_the_same_population_and_seed():
    problem = training_problems(1, 1)[0]
    state = _state(problem)
    records = expert_records(problem, state, 3, CONFIG, "all", horizon=10, seed=[5, 6])
    population = [parse(e) for e in state.expressions]
    best = population[int(np.argmax(state.fitnesses))]
    children, *_ = BasicSR(problem.X, problem.y, CONFIG, seed=[5, 6]).next_generation(population, state.fitnesses, best)
    assert [r["target"] for r in records] == [str(c) for c in children]
    generator_record = next(records_from_trace(Trace(CONFIG, [state, state]), problem, "all"))
    assert all(r["population"] == generator_record["population"] for r in records)  # read from the state
    assert all(r["context"].startswith("generation: 3 |") and r["expression_id"] == problem.expression_id
               for r in records)


def test_ancestor_labels_are_members_of_the_same_expert_step():
    problem = training_problems(2, 1)[1]
    state = _state(problem)
    everything = [r["target"] for r in expert_records(problem, state, 3, CONFIG, "all", 10, seed=1)]
    ancestors = [r["target"] for r in expert_records(problem, state, 3, CONFIG, "ancestors", 10, seed=1)]
    assert ancestors and set(ancestors) <= set(everything)


def test_a_solved_population_gets_no_labels():
    problem = named_problems()["quadratic"]
    state = _state(problem)
    solved = Generation([problem.expression, *state.expressions[1:]], [1.0] * 8, [()] * 8, problem.expression,
                        1.0, 0.0)
    assert expert_records(problem, solved, 0, CONFIG, "all", 10, seed=1) == []


def _generation(expressions, fitnesses, parents):
    best = int(np.argmax(fitnesses))
    return Generation(expressions, fitnesses, parents, expressions[best], fitnesses[best], 1.0)


def test_expert_iteration_keeps_improving_proposals_and_the_ancestors_of_the_best():
    problem = named_problems()["quadratic"]
    trace = Trace(SearchConfig(population_size=3), [
        _generation(["x0", "1.0", "(x0 + 1.0)"], [0.1, 0.2, 0.3], [(), (), ()]),
        # slot 1: a proposal better than 0.3; slot 2: a worse proposal
        _generation(["(x0 + 1.0)", "(x0 * x0)", "x0"], [0.3, 0.5, 0.05], [(2,), (), ()]),
        # the final best (slot 2) is a child of slot 1 (the improving proposal) and slot 0
        _generation(["(x0 * x0)", "1.0", "((x0 * x0) + x0)"], [0.5, 0.2, 0.9], [(1,), (0,), (1, 0)]),
    ])
    assert improving_members(trace) == [[1], []]  # slot 2 of generation 2 was evolved, not proposed
    targets = [(r["context"][:13], r["target"]) for r in success_records(trace, problem)]
    assert targets == [("generation: 0", "(x0 + 1.0)"), ("generation: 0", "(x0 * x0)"),
                       ("generation: 1", "((x0 * x0) + x0)")]


def test_training_problems_are_new_each_iteration_and_reproducible():
    first, again, second = training_problems(3, 1), training_problems(3, 1), training_problems(3, 2)
    assert [p.expression_id for p in first] == [TRAINING_ID_BASE + 100_000 + j for j in range(3)]
    assert [p.expression for p in first] == [p.expression for p in again]
    assert {p.expression_id for p in first}.isdisjoint(p.expression_id for p in second)
    assert all(np.array_equal(a.X, b.X) for a, b in zip(first, again))


def test_the_leak_guard_refuses_held_out_named_and_foreign_problems():
    problems = training_problems(2, 1)
    records = [{"expression_id": p.expression_id} for p in problems]
    check_training_only(problems, records)  # training problems pass
    for intruder in (held_out_problems(1)[0], named_problems()["quadratic"]):
        with pytest.raises(LeakError, match="named or held-out"):
            check_training_only([*problems, intruder], records)
    with pytest.raises(LeakError, match="not a training problem"):
        check_training_only(problems, [*records, {"expression_id": held_out_problems(1)[0].expression_id}])


def test_the_mix_shuffles_improvement_with_imitation_lines_and_keeps_their_points(tiny_run, tmp_path):
    problems = {p.expression_id: p for p in training_problems(2, 1)}
    improvement = [json.dumps({"context": "c", "population": "p", "target": "x0", "expression_id": i})
                   for i in problems for _ in range(3)]
    counts = write_mix(tmp_path, improvement, problems, [tiny_run.train_file], ratio=0.5, seed=1)
    assert counts == {"improvement_lines": 6, "imitation_lines": 3, "imitation_lines_unreadable": 0, "lines": 9}
    lines = (tmp_path / "train.jsonl").read_text().splitlines()
    assert sorted(line for line in lines if line in improvement) == sorted(improvement)
    assert [line in improvement for line in lines] != [True] * 6 + [False] * 3  # mixed, not appended
    sidecar = json.loads((tmp_path / "problems.json").read_text())
    imitation_ids = {json.loads(line)["expression_id"] for line in lines if line not in improvement}
    assert set(map(int, sidecar)) == set(problems) | imitation_ids


def _settings(tiny_run, name: str = "dagger", **changes) -> LoopSettings:
    search = ComparisonSettings(generations=3, population_size=6, seeds=1, held_out=1, named=False, proposals=2)
    return replace(LoopSettings(loop=name, checkpoint=str(tiny_run.run_dir), problems=2, steps=2, batch_size=4,
                                val_batches=1, warmup_steps=1, expert_generations=2, search=search), **changes)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dagger", "expert-iteration"])
def test_a_one_iteration_loop_end_to_end(tiny_run, tmp_path, name):
    settings = _settings(tiny_run, name)
    lines = Loop(tmp_path, settings, accelerator="cpu").run(1)
    assert [line["iteration"] for line in lines] == [0, 1]
    assert (tmp_path / "summary.jsonl").read_text().count("\n") == 2
    data = tmp_path / "iteration-1" / "data"
    ids = {json.loads(line)["expression_id"] for line in (data / "improvement.jsonl").read_text().splitlines()}
    assert ids and all(TRAINING_ID_BASE <= i < TRAINING_ID_BASE + 200_000 for i in ids)  # no held-out problem
    assert lines[1]["collect"]["examples"] == count_lines(data / "improvement.jsonl")
    mix = tmp_path / "iteration-1" / "fine-tune-data" / "train.jsonl"
    assert count_lines(mix) == lines[1]["mix"]["lines"] > lines[1]["collect"]["examples"]
    model, _, info = load_for_evaluation(tmp_path / "iteration-1" / "run")
    assert info["step"] == 2 and np.isfinite(lines[1]["fine_tune"]["val_loss"])
    payoff = json.loads((tmp_path / "iteration-1" / "payoff" / "search.json").read_text())
    assert payoff["checkpoint"].endswith("iteration-1/run/checkpoints/last.ckpt")
    assert lines[1]["payoff"]["neural"]["runs"] == lines[1]["payoff"]["basic"]["runs"] == 1


@pytest.mark.slow
def test_a_killed_loop_resumes_in_the_phase_it_was_in(tiny_run, tmp_path, monkeypatch):
    settings = _settings(tiny_run)
    real_fine_tune = loop_module.Loop.fine_tune

    def killed(self, iteration):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop_module.Loop, "fine_tune", killed)
    with pytest.raises(KeyboardInterrupt):
        Loop(tmp_path, settings, accelerator="cpu").run(1)
    assert (tmp_path / "iteration-1" / "data" / "collect.json").is_file()
    assert not (tmp_path / "iteration-1" / "summary.json").exists()

    def must_not_collect(*args, **kwargs):
        raise AssertionError("the finished collection ran again")

    monkeypatch.setattr(loop_module.Loop, "fine_tune", real_fine_tune)
    monkeypatch.setattr(loop_module, "records_of_runs", must_not_collect)
    lines = Loop(tmp_path, settings, accelerator="cpu").run(1)
    assert [line["iteration"] for line in lines] == [0, 1] and lines[1]["fine_tune"]["steps"] == 2
    with pytest.raises(EvaluationInputError, match="other steps"):
        Loop(tmp_path, replace(settings, steps=3), accelerator="cpu")


def test_labels_module_refuses_more_problems_than_an_iteration_has_ids():
    with pytest.raises(ValueError, match="problems per iteration"):
        labels.training_problems(labels.IDS_PER_ITERATION, 1)


def test_the_command_line_says_what_is_wrong(tmp_path, capsys):
    assert cli.main(["dagger", "--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert cli.main(["plot", str(tmp_path), "--out", str(tmp_path / "p.png")]) == 2
    assert "no summary here" in capsys.readouterr().err


def test_the_payoff_plot_reads_the_loops_summaries(tmp_path):
    def summary(solved_by_seed):
        return {"runs": 9, "solved": sum(solved_by_seed), "solved_by_seed": solved_by_seed}

    for name in ("dagger", "expert-iteration"):
        folder = tmp_path / name
        folder.mkdir()
        rows = [{"iteration": i, "loop": name, "payoff": {"basic": summary([2, 3, 1]), "neural": summary([i, 1, 2])}}
                for i in range(3)]
        (folder / "summary.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "payoff.png"
    assert cli.main(["plot", str(tmp_path / "dagger"), str(tmp_path / "expert-iteration"), "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_loop_settings_refuse_unknown_loops_and_labels():
    with pytest.raises(ValueError, match="loop must be one of dagger, expert-iteration"):
        LoopSettings(loop="reinforce")
    with pytest.raises(ValueError, match="labels must be one of"):
        LoopSettings(labels="best")


def test_an_online_run_has_no_training_files_to_imitate_but_has_its_held_out_set(tmp_path):
    info = {"data": {"source": "online", "default_data_dir": str(tmp_path)}, "run_dir": None}
    with pytest.raises(EvaluationInputError, match="no training files; pass --imitation-data"):
        run_files(info, "train", "pass --imitation-data")
    (held_out,) = run_files(info, "val")
    assert held_out.startswith(str(tmp_path / "online-heldout-")) and held_out.endswith("val.jsonl")
