"""The one text layout: fixture round trips, context/population text, record validation."""

import json

import pytest

from sr_lightning.data.format import (
    BadRecord,
    Pair,
    context_text,
    dump_record,
    make_record,
    pair_from_record,
    population_items,
    population_text,
)
from tests.helpers import fixture_lines



def test_every_fixture_line_dumps_back_byte_for_byte():
    for line in fixture_lines():
        record = json.loads(line)
        rebuilt = make_record(record["context"], record["population"], record["target"],
                              record["expression_id"], record["metadata"])
        assert dump_record(rebuilt) == line


def test_population_text_round_trips_on_fixture():
    for line in fixture_lines():
        population = json.loads(line)["population"]
        items = population_items(population)
        assert len(items) == 20
        assert population_text([e for e, _ in items], [float(f) for _, f in items]) == population


def test_context_text_orders_binary_then_unary_sorted():
    assert context_text(0, 3, ["-", "+", "*"], [], [1.0]) == "generation: 0 | 3 variables | ops: *,+,- | constants: 1.0"
    assert (context_text(7, 1, ["+", "*"], ["sin", "exp"], [1.0, 2.5])
            == "generation: 7 | 1 variables | ops: *,+,exp,sin | constants: 1.0,2.5")


def test_population_text_prints_invalid_fitness_like_the_original():
    assert population_text(["x0", "(x0 / x0)"], [-1.5, -1e10]) == "x0 <FITNESS>-1.50000 (x0 / x0) <FITNESS>-10000000000.00000"


def test_pair_texts_follow_the_original_layout():
    pair = pair_from_record({"context": "C", "population": "x0 <FITNESS>-1.00000", "target": "(x0 * x0)"})
    assert pair.input_text == "<|endoftext|><CONTEXT>C<POPULATION>x0 <FITNESS>-1.00000"
    assert pair.target_text == "<TARGET>(x0 * x0)<|endoftext|>"
    assert pair.prompt_text == pair.input_text + "<TARGET>"
    assert pair.text == pair.input_text + pair.target_text


def test_generic_prompt_form_is_accepted():
    pair = pair_from_record({"prompt": "anything", "target": "x1"})
    assert pair.input_text == "<|endoftext|>anything"
    assert pair.target_text == "<TARGET>x1<|endoftext|>"


@pytest.mark.parametrize("record, reason", [
    ([1, 2], "JSON object"),
    ({"context": "c", "population": "p"}, "missing field 'target'"),
    ({"population": "p", "target": "x0"}, "missing field 'context'"),
    ({"context": "c", "population": 5, "target": "x0"}, "'population' is int"),
    ({"context": "c", "population": "p", "target": "  "}, "empty target"),
    ({"context": "c", "population": "p", "target": "x0", "expression_id": "7"}, "expression_id"),
])
def test_bad_records_say_why(record, reason):
    with pytest.raises(BadRecord, match=reason):
        pair_from_record(record)


def test_a_record_without_population_is_a_direct_example():
    pair = pair_from_record({"context": "2 variables | ops: *,+,- | constants: 1.0", "target": "(x0 * x1)",
                             "X_data": [[1.0, 2.0]], "y_data": [2.0]})
    assert pair.direct and pair.inline_points == ([[1.0, 2.0]], [2.0])
    assert pair.text == "<|endoftext|><CONTEXT>2 variables | ops: *,+,- | constants: 1.0<TARGET>(x0 * x1)<|endoftext|>"
    assert not pair_from_record({"context": "c", "population": "p", "target": "x0"}).direct
    assert not pair_from_record({"prompt": "p", "target": "x0"}).direct


def test_with_population_keeps_everything_else():
    pair = Pair("x0", "C", "x0 <FITNESS>-1.00000 x1 <FITNESS>-2.00000", expression_id=3, source="f:1")
    shorter = pair.with_population("x0 <FITNESS>-1.00000")
    assert (shorter.target, shorter.context, shorter.expression_id, shorter.source) == ("x0", "C", 3, "f:1")
    assert shorter.population == "x0 <FITNESS>-1.00000"
