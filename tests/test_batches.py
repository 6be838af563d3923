"""Batches: target-only shifted labels, per-batch padding, fitting the context length."""

import json

import pytest

from sr_lightning.data.batches import IGNORE, Encoded, collate, encode_pairs, fit_to_length
from sr_lightning.data.format import pair_from_record, population_items
from sr_lightning.data.stream import BadInputError, LineReport
from sr_lightning.data.tokenizer import SRTokenizer
from tests.test_format import fixture_lines


@pytest.fixture(scope="module")
def tokenizer() -> SRTokenizer:
    return SRTokenizer.default()


def test_labels_cover_target_and_closing_eos_only():
    examples = [Encoded([0, 11, 12], [4, 21, 22, 0], "a"), Encoded([0, 11], [4, 23, 0], "b")]
    batch = collate(examples, pad_id=0)
    assert batch["input_ids"].tolist() == [[0, 11, 12, 4, 21, 22, 0], [0, 11, 4, 23, 0, 0, 0]]
    # labels[t] is the token predicted from position t: from <TARGET> (position 3) on.
    assert batch["labels"].tolist() == [[IGNORE, IGNORE, IGNORE, 21, 22, 0, IGNORE],
                                        [IGNORE, IGNORE, 23, 0, IGNORE, IGNORE, IGNORE]]
    assert batch["target_positions"].tolist() == [3, 2]
    assert batch["n_tokens"] == 12 and batch["n_examples"] == 2 and batch["sources"] == ["a", "b"]


def test_option_labels_the_target_marker_too():
    batch = collate([Encoded([0, 11, 12], [4, 21, 0], "a")], pad_id=0, include_target_token=True)
    assert batch["labels"].tolist() == [[IGNORE, IGNORE, 4, 21, 0, IGNORE]]


def test_width_is_the_longest_example_rounded_up():
    batch = collate([Encoded([0, 1, 2], [4, 5, 0], "a")], pad_id=0, pad_to_multiple=8)
    assert batch["input_ids"].shape == (1, 8)


def test_over_long_example_loses_population_items_never_target(tokenizer):
    pair = pair_from_record(json.loads(fixture_lines()[0]))
    [(input_ids, target_ids)] = tokenizer.encode_pairs([pair])
    limit = len(input_ids) + len(target_ids) - 40
    fitted = fit_to_length(pair, Encoded(input_ids, target_ids, "s"), tokenizer, limit)
    assert fitted.truncated and fitted.target_ids == target_ids
    assert len(fitted.input_ids) + len(fitted.target_ids) <= limit
    kept = tokenizer.decode(fitted.input_ids)
    original_items = population_items(pair.population)
    assert kept.endswith(" ".join(f"{e} <FITNESS>{f}" for e, f in original_items[: kept.count("<FITNESS>")]))
    assert 0 < kept.count("<FITNESS>") < 20


def test_example_that_cannot_fit_is_skipped_and_counted(tokenizer):
    pair = pair_from_record(json.loads(fixture_lines()[0]), source="f.jsonl:1")
    report = LineReport()
    assert encode_pairs([pair], tokenizer, 12, report) == []  # context + target alone need 17
    assert report.counts["too long"] == 1 and "f.jsonl:1" in report.examples[0]
    with pytest.raises(BadInputError, match="f.jsonl:1: too long"):
        encode_pairs([pair], tokenizer, 12, LineReport(strict=True))
