import json
import subprocess
import sys

import numpy as np
import pytest

from sr_lightning.data.format import context_text, dump_record, pair_from_record, population_items
from sr_lightning.data.generate import generate_examples, main, dataset_problem_seed, records_from_trace, split_of_problems
from sr_lightning.sr.expression import fitness, parse, predict
from sr_lightning.sr.problems import ProblemConfig, generated_id, load_problems, named_problems, random_problem
from sr_lightning.sr.search import SearchConfig, ancestors_of_best, run_search

TINY = ["--problems", "6", "--generations", "4", "--population", "6", "--max-vars", "3",
        "--val-fraction", "0.2", "--test-fraction", "0.2", "--seed", "11"]
FILES = ("train.jsonl", "val.jsonl", "test.jsonl", "problems.json")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    manifest = main([*TINY, "--out", str(out), "--workers", "1"])
    return out, manifest


def read_records(path):
    lines = path.read_text().splitlines()
    return lines, [json.loads(line) for line in lines]


def test_split_is_by_problem(tiny):
    out, manifest = tiny
    ids = {name: {r["expression_id"] for r in read_records(out / f"{name}.jsonl")[1]}
           for name in ("train", "val", "test")}
    assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"] and not ids["val"] & ids["test"]
    assert ids["train"] | ids["val"] | ids["test"] == {generated_id(i) for i in range(6)}
    assert [len(ids[n]) for n in ("train", "val", "test")] == [4, 1, 1]
    assert {n: s["problems"] for n, s in manifest["splits"].items()} == {"train": 4, "val": 1, "test": 1}
    assert json.loads((out / "manifest.json").read_text()) == json.loads(json.dumps(manifest))


def test_every_line_redumps_byte_identically(tiny):
    out, manifest = tiny
    for name in ("train", "val", "test"):
        lines, records = read_records(out / f"{name}.jsonl")
        assert len(lines) == manifest["splits"][name]["examples"] == manifest["splits"][name]["problems"] * 3 * 6
        for line, record in zip(lines, records):
            assert dump_record(record) == line
            assert list(record) == ["context", "population", "target", "expression_id", "metadata"]
            pair_from_record(record)  # what training will do with it


def test_records_match_the_sidecar(tiny):
    out, _ = tiny
    problems = load_problems(out / "problems.json")
    assert sorted(problems) == [generated_id(i) for i in range(6)]
    _, records = read_records(out / "train.jsonl")
    for record in records:
        problem = problems[record["expression_id"]]
        meta = record["metadata"]
        assert meta["target_expression"] == problem.name and meta["source_expressions_file"] == "problems.json"
        assert record["context"] == context_text(meta["generation"], problem.n_vars, ("*", "+", "-"), (), (1.0,))
        for expression, printed in population_items(record["population"])[:3]:
            assert f"{fitness(parse(expression), problem.X, problem.y):.5f}" == printed
    for index in range(6):
        problem = problems[generated_id(index)]
        again = random_problem(generated_id(index), dataset_problem_seed(11, index), ProblemConfig(max_vars=3))
        assert problem.seed == again.seed and problem.expression == again.expression
        np.testing.assert_array_equal(problem.X, again.X)
        np.testing.assert_array_equal(problem.y, predict(parse(problem.expression), problem.X))


def test_output_does_not_depend_on_worker_count(tiny, tmp_path):
    out, _ = tiny
    other = tmp_path / "two"
    subprocess.run([sys.executable, "-m", "sr_lightning.data.generate", *TINY, "--out", str(other), "--workers", "2"],
                   check=True, capture_output=True)
    for name in FILES:
        assert (other / name).read_bytes() == (out / name).read_bytes(), name


def test_shards_hold_the_whole_datasets_lines_between_them(tiny, tmp_path):
    out, manifest = tiny
    parts = [main([*TINY, "--out", str(tmp_path / f"part{i}"), "--workers", "1", "--shard", f"{i}/4"]) for i in range(4)]
    assert [p["shard"] for p in parts] == [[i, 4] for i in range(4)]
    for split in ("train", "val", "test"):
        whole = sorted((out / f"{split}.jsonl").read_text().splitlines())
        assert sorted(line for i in range(4) for line in (tmp_path / f"part{i}" / f"{split}.jsonl").read_text()
                      .splitlines()) == whole
        assert sum(p["splits"][split]["problems"] for p in parts) == manifest["splits"][split]["problems"]
    sidecars = [load_problems(tmp_path / f"part{i}" / "problems.json") for i in range(4)]
    assert sorted(k for s in sidecars for k in s) == sorted(load_problems(out / "problems.json"))
    assert sorted(sidecars[1]) == [generated_id(1), generated_id(5)]  # every 4th problem from the 2nd


def test_ancestor_targets_follow_the_ancestry():
    problem = named_problems()["polynomial_product"]
    config = SearchConfig(population_size=10, generations=8)
    trace = run_search(problem.X, problem.y, config, seed=3)
    ancestors = ancestors_of_best(trace)
    records = list(records_from_trace(trace, problem, "ancestors"))
    assert sorted({r["metadata"]["generation"] for r in records}) == list(range(7))
    for g in range(7):
        chosen = [r for r in records if r["metadata"]["generation"] == g]
        assert [r["metadata"]["target_index"] for r in chosen] == list(range(len(chosen)))
        following = trace.generations[g + 1].expressions
        assert [r["target"] for r in chosen] == [following[i] for i in sorted(ancestors[g + 1])]
    assert records[-1]["target"] == trace.best_expression


def test_new_ancestor_targets_are_the_ancestors_their_population_lacks():
    problem = named_problems()["polynomial_product"]
    trace = run_search(problem.X, problem.y, SearchConfig(population_size=10, generations=8), seed=3)
    ancestors = list(records_from_trace(trace, problem, "ancestors"))
    new = list(records_from_trace(trace, problem, "new-ancestors"))

    def step(record):
        return record["metadata"]["generation"], record["target"]

    held = {(g, e) for g, generation in enumerate(trace.generations) for e in generation.expressions}
    assert [step(r) for r in new] == [step(r) for r in ancestors if step(r) not in held]
    assert 0 < len(new) < len(ancestors)  # the elite's copies go, the new children stay


def test_all_targets_and_seeded_library_function():
    problem = random_problem(generated_id(0), 0)
    config = SearchConfig(population_size=5, generations=3)
    records = list(generate_examples(problem, config))
    assert len(records) == 2 * 5
    assert [(r["metadata"]["generation"], r["metadata"]["target_index"]) for r in records] == \
        [(g, k) for g in range(2) for k in range(5)]
    assert records == list(generate_examples(problem, config))
    assert records != list(generate_examples(problem, config, seed=99))
    with pytest.raises(ValueError, match="targets"):
        list(generate_examples(problem, config, targets="best"))


def test_split_assignment():
    splits = split_of_problems(100, 0.1, 0.2, seed=0)
    assert (splits.count("train"), splits.count("val"), splits.count("test")) == (70, 10, 20)
    assert splits == split_of_problems(100, 0.1, 0.2, seed=0) and splits != split_of_problems(100, 0.1, 0.2, seed=1)
    with pytest.raises(ValueError):
        split_of_problems(3, 0.6, 0.6, seed=0)
