import json
from collections import defaultdict

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from sr_lightning.data.dataset import StreamSettings
from sr_lightning.data.format import pair_from_record
from sr_lightning.data.online import (
    OnlineBatches,
    OnlineSettings,
    computes_named,
    draw_problem,
    heldout_index,
    main,
    online_problem_seed,
    training_index,
    write_heldout_set,
)
from sr_lightning.data.tokenizer import SRTokenizer
from sr_lightning.task import OneStepTask
from sr_lightning.sr.problems import GENERATED_ID_BASE, Problem, generated_id, load_problems, named_problems, random_problem

# 4 generations of 6: 18 records per problem with all targets. Batches of 4 take 2 examples from
# each of 2 problems; a problem feeds G = 2 batches, 2 apart. 8 problems per epoch over 2 ranks:
# ceil(8 * 2 / (2 * 2)) = 4 batches per rank, i.e. one chunk of S * G = 4 batches.
TINY = OnlineSettings(problems_per_epoch=8, examples_per_problem=2, batches_per_problem=2, reuse_stride=2,
                      max_vars=3, population_size=6, generations=4, heldout_problems=5)
STREAM = StreamSettings(batch_size=4, seed=42)


@pytest.fixture(scope="module")
def tokenizer():
    return SRTokenizer.default()


def dataset(tokenizer, rank=0, world=2, online=TINY):
    return OnlineBatches(OneStepTask(tokenizer, 1024), STREAM, online, rank, world)


def run(data, epoch=0, start=0, workers=0):
    data.begin_epoch(epoch, start)
    return list(DataLoader(data, batch_size=None, num_workers=workers))


def problem_ids(batch):
    """Expression id of every example, from its source ``online:<id>:g<generation>:t<index>``."""
    return [int(source.split(":")[1]) for source in batch["sources"]]


def same_batches(a, b):
    assert [x["batch_index"] for x in a] == [y["batch_index"] for y in b]
    for x, y in zip(a, b):
        assert x["sources"] == y["sources"]
        assert torch.equal(x["input_ids"], y["input_ids"]) and torch.equal(x["labels"], y["labels"])


def test_length_and_batch_layout(tokenizer):
    data = dataset(tokenizer)
    assert len(data) == 4 and data.problems_per_batch == 2
    assert data.family_of(0, 0) == (0 * 2 + 0, 0)  # (M, q): lane 0 of chunk 0, rank 0
    assert data.family_of(0, 3) == (1 * 2 + 0, 1)  # j = 3 = q*S + lane with q = 1, lane = 1
    assert data.family_of(1, 1) == ((2 + 1) * 2 + 0, 0)  # F = 2 families per epoch before it
    assert dataset(tokenizer, rank=1).family_of(0, 0) == (1, 0)
    batches = run(data)
    assert [b["n_examples"] for b in batches] == [4] * 4
    assert [(b["epoch"], b["rank"], b["skipped"]) for b in batches] == [(0, 0, {})] * 4
    for batch in batches:
        ids = problem_ids(batch)
        assert sorted(ids.count(i) for i in set(ids)) == [2, 2]
    # Batches 0 and 2 are family 0 (members 0 and 1): the same two problems, different examples.
    assert set(problem_ids(batches[0])) == set(problem_ids(batches[2]))
    assert not set(batches[0]["sources"]) & set(batches[2]["sources"])
    assert not set(problem_ids(batches[0])) & set(problem_ids(batches[1]))
    # Family 0 owns problems 0 .. G*B - 1 and takes them in order: the first two.
    assert set(problem_ids(batches[0])) == {generated_id(training_index(0)), generated_id(training_index(1))}


def test_batches_match_the_records_they_come_from(tokenizer):
    data = dataset(tokenizer)
    records = data.batch_records(0, 1)
    batch = run(data)[1]
    for row, record in enumerate(records):
        pair = pair_from_record(record)
        text = tokenizer.decode(batch["input_ids"][row, : batch["target_positions"][row] + 1].tolist())
        assert text == pair.prompt_text
        assert record["context"].endswith("| ops: *,+,- | constants: 1.0")


def test_stream_is_deterministic_and_changes_with_epoch_and_seed(tokenizer):
    first = run(dataset(tokenizer))
    same_batches(first, run(dataset(tokenizer)))
    later = run(dataset(tokenizer), epoch=1)
    assert not {s for b in first for s in b["sources"]} & {s for b in later for s in b["sources"]}
    other_seed = OnlineBatches(OneStepTask(tokenizer, 1024), StreamSettings(batch_size=4, seed=7), TINY, 0, 2)
    reseeded = run(other_seed)[0]
    assert set(problem_ids(first[0])) == set(problem_ids(reseeded))  # the same problem numbers ...
    assert not torch.equal(first[0]["input_ids"], reseeded["input_ids"])  # ... other problems


def test_no_problem_repeats_across_ranks_workers_and_epochs(tokenizer):
    owners = defaultdict(set)  # expression id -> (epoch, rank, family)
    examples = set()
    for rank in (0, 1):
        data = dataset(tokenizer, rank)
        for epoch in (0, 1):
            batches = run(data, epoch, workers=2)
            assert [b["batch_index"] for b in batches] == [0, 1, 2, 3]  # worker count never changes the order
            if epoch == 0:
                same_batches(batches, run(dataset(tokenizer, rank)))
            for batch in batches:
                family = data.family_of(epoch, batch["batch_index"])[0]
                for expression_id in problem_ids(batch):
                    owners[expression_id].add((epoch, rank, family))
                assert not examples & set(batch["sources"])
                examples |= set(batch["sources"])
    assert len(examples) == 2 * 2 * 4 * 4
    assert len(owners) == 2 * 2 * 4 * 4 // (2 * 2)  # every problem gives 2 examples to each of 2 batches
    assert all(len(places) == 1 for places in owners.values())
    assert all((i - GENERATED_ID_BASE) % 2 == 0 for i in owners)  # training indices are even


def test_resume_continues_the_stream(tokenizer):
    data = dataset(tokenizer, rank=1)
    whole = run(data, epoch=1)
    resumed = run(data, epoch=1, start=1, workers=2)
    same_batches(whole[1:], resumed)


def test_problem_seeds_are_injective_and_split_by_parity():
    assert online_problem_seed(5, 12345, 3) == 5 * 2**80 + 3 * 2**64 + 12345
    # Bit 0 of the seed is bit 0 of the index: even (training) and odd (held-out) never meet.
    for base in (0, 1, 42):
        assert online_problem_seed(base, training_index(7), 2) % 2 == 0
        assert online_problem_seed(base, heldout_index(7), 2) % 2 == 1
    assert len({online_problem_seed(b, i, a) for b in range(3) for i in range(4) for a in range(3)}) == 36
    with pytest.raises(ValueError):
        online_problem_seed(0, 2**64)
    with pytest.raises(ValueError):
        online_problem_seed(0, 1, attempt=2**16)


def test_named_functions_are_redrawn():
    named = list(named_problems().values())
    X = np.random.default_rng(0).standard_normal((20, 2))
    rewritten = Problem(1, "p", "((x1 * x1) + (x0 * x0))", X, X[:, 0] ** 2 + X[:, 1] ** 2, 0)
    assert computes_named(rewritten, named)  # bivariate_sum, written the other way round
    assert not computes_named(Problem(1, "p", "(x0 + x1)", X, X.sum(axis=1), 0), named)
    first_draws = {n: random_problem(generated_id(training_index(n)), online_problem_seed(42, training_index(n)),
                                     TINY.problem) for n in range(300)}
    hits = [n for n, p in first_draws.items() if computes_named(p, named)]
    assert hits  # e.g. ((x0 + 1.0) * x0) + ... = x0*x0 + x0 + 1.0, the "quadratic" benchmark
    for n in hits:
        redrawn = draw_problem(training_index(n), 42, TINY, named)
        assert redrawn.seed >> 64 & 0xFFFF >= 1 and not computes_named(redrawn, named)
    kept = next(n for n in range(300) if n not in hits)
    assert draw_problem(training_index(kept), 42, TINY, named).seed == first_draws[kept].seed


def test_heldout_set_is_never_produced_by_training(tokenizer, tmp_path):
    manifest = write_heldout_set(tmp_path, TINY)
    problems = load_problems(tmp_path / "problems.json")
    named = named_problems()
    assert manifest["problems"] == len(problems) == 5 + len(named) and manifest["named"] == len(named)
    assert sorted(problems) == [p.expression_id for p in named.values()] + [
        generated_id(heldout_index(n)) for n in range(5)]
    records = [json.loads(line) for line in (tmp_path / "val.jsonl").read_text().splitlines()]
    assert len(records) == manifest["examples"] == 2 * len(problems)  # examples_per_problem each
    assert {r["expression_id"] for r in records} == set(problems)
    # Held out by construction: ids and seeds of training problems are even-indexed, these are not.
    streamed = {i for rank in (0, 1) for b in run(dataset(tokenizer, rank)) for i in problem_ids(b)}
    assert not streamed & set(problems)
    # ... and empirically, by (expression, X), over a few hundred training and held-out problems.
    named_list = list(named.values())
    training = [draw_problem(training_index(n), 42, TINY, named_list) for n in range(300)]
    heldout = [draw_problem(heldout_index(n), TINY.heldout_seed, TINY, named_list) for n in range(300)]
    heldout += [problems[i] for i in problems]

    def key(p):
        return p.expression, p.X.tobytes()

    assert len({key(p) for p in training}) == 300
    assert not {key(p) for p in training} & {key(p) for p in heldout}
    assert not any(computes_named(p, named_list) for p in training)
    # Deterministic: the same settings write the same files.
    again = tmp_path / "again"
    main(["--heldout", str(again), "--problems-per-epoch", "8", "--examples-per-problem", "2", "--max-vars", "3",
          "--population-size", "6", "--generations", "4", "--heldout-problems", "5",
          "--batches-per-problem", "2", "--reuse-stride", "2"])
    for name in ("val.jsonl", "problems.json", "manifest.json"):
        assert (again / name).read_bytes() == (tmp_path / name).read_bytes(), name


def test_settings_shape_the_data(tokenizer):
    online = OnlineSettings(problems_per_epoch=2, examples_per_problem=4, batches_per_problem=1, reuse_stride=1,
                            min_vars=2, max_vars=2, unary_ops=("sin",), population_size=5, generations=3,
                            targets="ancestors")
    records = OnlineBatches(OneStepTask(tokenizer, 1024), STREAM, online).batch_records(0, 0)
    assert len(records) == 4
    for record in records:
        assert record["context"].endswith("| 2 variables | ops: *,+,-,sin | constants: 1.0")
        assert record["metadata"]["generation"] in (0, 1)
    assert online.heldout_key() == OnlineSettings(**{**online.__dict__, "problems_per_epoch": 9}).heldout_key()
    assert online.heldout_key() != OnlineSettings(**{**online.__dict__, "generations": 4}).heldout_key()
    from_config = OnlineSettings.of({"unary_ops": ["sin"], "binary_ops": ["+", "*"], "generations": 3})
    assert from_config == OnlineSettings(unary_ops=("sin",), binary_ops=("+", "*"), generations=3)
    assert OnlineSettings.of(online) is online
    for bad in ({"targets": "best"}, {"generations": 1}, {"examples_per_problem": 0}):
        with pytest.raises(ValueError):
            OnlineSettings(**bad)


def test_direct_mode_makes_one_example_per_problem_with_its_points(tokenizer, tmp_path):
    task = OneStepTask(tokenizer, 1024, max_points=64, mode="direct")
    data = OnlineBatches(task, STREAM, TINY)
    batches = run(data)
    ids = [i for b in batches for i in problem_ids(b)]
    assert len(ids) == len(set(ids)) == sum(b["n_examples"] for b in batches)  # a new problem per example
    assert len(ids) == TINY.problems_per_epoch  # an epoch is problems_per_epoch problems, as in one-step mode
    assert all(b["points_X"].shape[0] == b["n_examples"] for b in batches)
    main(["--heldout", str(tmp_path), "--mode", "direct", "--heldout-problems", "3", "--max-vars", "3"])
    records = [json.loads(line) for line in (tmp_path / "val.jsonl").read_text().splitlines()]
    assert len(records) == 3 + len(named_problems()) and all("population" not in r for r in records)
    problems = load_problems(tmp_path / "problems.json")
    assert all(r["target"] == problems[r["expression_id"]].expression for r in records)
