"""The domain tokenizer: exact round trips, isolated parentheses, special ids, fewer tokens."""

import json

import pytest

from sr_lightning.data.format import SPECIAL_TOKENS, pair_from_record
from sr_lightning.data.tokenizer import DEFAULT_VOCAB_SIZE, SRTokenizer, compare
from tests.test_format import fixture_lines


@pytest.fixture(scope="module")
def tokenizer() -> SRTokenizer:
    return SRTokenizer.default()


def test_special_tokens_come_first_in_order(tokenizer):
    assert [tokenizer.ids[t] for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert tokenizer.pad_id == tokenizer.eos_id == 0
    assert tokenizer.vocab_size <= DEFAULT_VOCAB_SIZE


def test_round_trip_on_original_fixture(tokenizer):
    for line in fixture_lines():
        text = pair_from_record(json.loads(line)).text
        assert tokenizer.decode(tokenizer.encode(text)) == text


@pytest.mark.parametrize("text", [
    "<|endoftext|><CONTEXT>generation: 12 | 10 variables | ops: *,+,-,/,cos,exp,log,sin | constants: 1.0,-2.5",
    "<POPULATION>sin((x9 / -0.001)) <FITNESS>-10000000000.00000 inv(x10) <FITNESS>-0.01000",
    "<TARGET>(((x0 * x0) + (x1 * x1)) + (x2 * x2))<|endoftext|>",
    "unicode ∑ and tabs\t and  double  spaces",
])
def test_round_trip_on_hand_written_text(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_every_parenthesis_is_its_own_token(tokenizer):
    ids = tokenizer.encode("((x0 * x0) + ((x1 - 1.0) * x2))")
    pieces = [tokenizer.decode([i]) for i in ids]
    assert all(p in "()" for p in pieces if "(" in p or ")" in p)
    assert pieces[:2] == ["(", "("]


def test_input_and_target_parts_are_encoded_separately(tokenizer):
    pair = pair_from_record(json.loads(fixture_lines()[0]))
    [(input_ids, target_ids)] = tokenizer.encode_pairs([pair])
    assert input_ids[0] == tokenizer.eos_id
    assert target_ids[0] == tokenizer.target_id and target_ids[-1] == tokenizer.eos_id
    assert tokenizer.decode(input_ids + target_ids) == pair.text
    assert tokenizer.encode_prompts([pair]) == [input_ids + [tokenizer.target_id]]


def test_fewer_tokens_than_a_gpt2_size_bpe_on_the_same_data(tokenizer):
    texts = [pair_from_record(json.loads(line)).text for line in fixture_lines()]
    figures = compare(texts, texts, tokenizer.tokenizer)
    assert figures["domain"] < figures["gpt2_size_bpe"]


def test_hf_style_file_gets_the_markers_appended(tmp_path):
    from tokenizers import Tokenizer, models

    plain = Tokenizer(models.WordLevel({"a": 0, "<|endoftext|>": 1}, unk_token="a"))
    plain.save(str(tmp_path / "tok.json"))
    loaded = SRTokenizer.from_file(tmp_path / "tok.json")
    assert [loaded.ids[t] for t in SPECIAL_TOKENS] == [1, 2, 3, 4, 5]


def test_missing_or_bad_tokenizer_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer file not found"):
        SRTokenizer.from_file(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        SRTokenizer.from_file(tmp_path / "bad.json")
