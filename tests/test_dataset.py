"""The batch plan: exactly once per epoch across ranks and workers, resumable, seeded shuffling."""

import json

import pytest

from sr_lightning.data.dataset import EpochLoader, OneStepBatches, StreamSettings
from sr_lightning.data.tokenizer import SRTokenizer
from sr_lightning.task import OneStepTask
from tests.helpers import numbered_fixture_lines, write_lines

N_LINES = 37


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    return write_lines(tmp_path_factory.mktemp("d") / "train.jsonl", numbered_fixture_lines(N_LINES))


@pytest.fixture(scope="module")
def tokenizer():
    return SRTokenizer.default()


def make(data_file, tokenizer, rank=0, world=1, **settings):
    base = dict(batch_size=4, shuffle=True, shuffle_buffer=8, length_grouping=2, seed=3)
    task = OneStepTask(tokenizer, 1024)
    return OneStepBatches([data_file], task, StreamSettings(**{**base, **settings}), rank, world)


def ids_of(batch) -> list[int]:
    return [int(s.rsplit(":", 1)[1]) - 1 for s in batch["sources"]]


def run(dataset, workers=0, epoch=0, start=0):
    loader = EpochLoader(dataset, lambda: (epoch, start), num_workers=workers)
    return list(loader)


def test_every_example_once_across_two_ranks_and_two_workers(data_file, tokenizer):
    seen, counts = [], []
    for rank in range(2):
        batches = run(make(data_file, tokenizer, rank, 2), workers=2)
        counts.append(len(batches))
        seen += [i for b in batches for i in ids_of(b)]
    assert sorted(seen) == list(range(N_LINES))
    assert counts[0] == counts[1] == 5  # rank 1 has 18 lines (5 batches); padding keeps ranks in step


def test_short_rank_gets_label_free_padding_batches(data_file, tokenizer):
    batches = run(make(data_file, tokenizer, 1, 2))
    assert batches[-1]["n_examples"] == 2 or all(b["n_examples"] for b in batches)
    dataset = make(data_file, tokenizer, 1, 4)  # 9 lines on rank 1, rank 0 has 10 -> 3 batches each
    last = run(dataset)[-1]
    assert len(run(dataset)) == len(dataset) == 3
    assert last["n_examples"] == 1


def test_order_does_not_depend_on_worker_count(data_file, tokenizer):
    dataset = make(data_file, tokenizer)
    one = [ids_of(b) for b in run(dataset, workers=0)]
    two = [ids_of(b) for b in run(dataset, workers=2)]
    assert one == two and len(one) == len(dataset) == 10


def test_resume_continues_with_the_same_batches(data_file, tokenizer):
    dataset = make(data_file, tokenizer)
    whole = [ids_of(b) for b in run(dataset, workers=2, epoch=1)]
    resumed = [ids_of(b) for b in run(dataset, workers=2, epoch=1, start=6)]
    assert resumed == whole[6:]
    assert [b["batch_index"] for b in run(dataset, epoch=1, start=6)] == list(range(6, 10))


def test_shuffle_changes_with_epoch_and_seed_but_not_run_to_run(data_file, tokenizer):
    dataset = make(data_file, tokenizer)
    first = [ids_of(b) for b in run(dataset, epoch=0)]
    assert first == [ids_of(b) for b in run(dataset, epoch=0)]
    assert first != [ids_of(b) for b in run(dataset, epoch=1)]
    assert first != [ids_of(b) for b in run(make(data_file, tokenizer, seed=4), epoch=0)]


def test_validation_stream_is_fixed_and_ordered(data_file, tokenizer):
    dataset = make(data_file, tokenizer, shuffle=False, length_grouping=0)
    assert [i for b in run(dataset) for i in ids_of(b)] == list(range(N_LINES))


def test_bad_lines_keep_their_slot_and_are_counted(tmp_path, tokenizer):
    lines = numbered_fixture_lines(8)
    lines[2] = "{broken"
    lines[5] = json.dumps({"context": "c", "population": "p", "target": ""})
    lines[6] = ""
    path = write_lines(tmp_path / "bad.jsonl", lines)
    batches = run(make(path, tokenizer, shuffle=False, length_grouping=0))
    assert [ids_of(b) for b in batches] == [[0, 1, 3], [4, 7]]
    skipped = {}
    for b in batches:
        for reason, count in b["skipped"].items():
            skipped[reason] = skipped.get(reason, 0) + count
    assert skipped == {"malformed JSON": 1, "empty target": 1, "blank": 1}
