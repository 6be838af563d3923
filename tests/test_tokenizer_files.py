"""GPT-2/GPT-Neo tokenizer files: the original's ids and the original's encoding of SPEC section 3."""

import json

import pytest
from tokenizers import Tokenizer

from sr_lightning.data.format import CONTEXT, EOS, FITNESS, POPULATION, SPECIAL_TOKENS, TARGET, pair_from_record
from sr_lightning.data.tokenizer import SRTokenizer
from tests.hf_original import SPECIAL_SPLIT, gpt2_style_tokenizer
from tests.test_format import fixture_lines

ORIGINAL_IDS = {EOS: 50256, CONTEXT: 50257, POPULATION: 50258, FITNESS: 50259, TARGET: 50260}


@pytest.fixture(scope="module")
def gpt2_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("gpt2") / "tokenizer.json"
    gpt2_style_tokenizer().save(str(path))
    return path


@pytest.fixture(scope="module")
def pairs():
    return [pair_from_record(json.loads(line)) for line in fixture_lines()]


def original_encoding(text: str, plain: Tokenizer) -> list[int]:
    """What HF's tokenizer did: cut at the special tokens, byte-level BPE on each piece on its own."""
    ids = []
    for piece in SPECIAL_SPLIT.split(text):
        if piece in ORIGINAL_IDS:
            ids.append(ORIGINAL_IDS[piece])
        elif piece:
            ids += plain.encode(piece, add_special_tokens=False).ids
    return ids


def test_markers_get_the_original_ids(gpt2_file):
    tokenizer = SRTokenizer.from_file(gpt2_file)
    assert {t: tokenizer.ids[t] for t in SPECIAL_TOKENS} == ORIGINAL_IDS
    assert (tokenizer.vocab_size, tokenizer.eos_id, tokenizer.pad_id, tokenizer.target_id) == (50261, 50256, 50256,
                                                                                                  50260)
    # GPT-2's byte symbols come first: '(' is byte 0x28, the 8th printable one; 'x' (0x78) the 88th.
    assert (tokenizer.encode("("), tokenizer.encode("x"), tokenizer.encode(EOS)) == ([7], [87], [50256])


def test_a_file_that_already_has_the_markers_keeps_their_ids(gpt2_file, tmp_path):
    """The original saved its tokenizer beside each checkpoint after adding the markers."""
    saved = tmp_path / "tokenizer.json"
    SRTokenizer.from_file(gpt2_file).save(saved)
    added = [t["content"] for t in json.loads(saved.read_text())["added_tokens"]]
    assert added == list(SPECIAL_TOKENS)
    again = SRTokenizer.from_file(saved)
    assert again.ids == ORIGINAL_IDS and again.vocab_size == 50261


def test_input_and_target_parts_encode_as_the_original_did(gpt2_file, pairs):
    tokenizer = SRTokenizer.from_file(gpt2_file)
    plain = Tokenizer.from_file(str(gpt2_file))  # GPT-2's file knows only <|endoftext|> as special
    for pair, (input_ids, target_ids) in zip(pairs, tokenizer.encode_pairs(pairs), strict=True):
        assert input_ids == original_encoding(pair.input_text, plain)
        assert target_ids == original_encoding(pair.target_text, plain)
        assert input_ids[:2] == [50256, 50257] and input_ids.count(50258) == 1
        assert input_ids.count(50259) == pair.population.count(FITNESS) == 20
        assert target_ids[0] == 50260 and target_ids[-1] == 50256 and 50260 not in input_ids
        assert tokenizer.decode(input_ids) == pair.input_text
        assert tokenizer.decode(target_ids) == pair.target_text
        assert tokenizer.encode_prompts([pair]) == [input_ids + [50260]]


def test_transformers_with_the_added_markers_gives_the_same_ids(gpt2_file, pairs):
    """The original: GPT-Neo's fast tokenizer plus `add_special_tokens` of the four markers."""
    transformers = pytest.importorskip("transformers")
    original = transformers.PreTrainedTokenizerFast(tokenizer_file=str(gpt2_file), bos_token=EOS, eos_token=EOS,
                                                    unk_token=EOS)
    original.add_special_tokens({"additional_special_tokens": [CONTEXT, POPULATION, FITNESS, TARGET]})
    assert len(original) == 50261
    ours = SRTokenizer.from_file(gpt2_file)
    for pair, (input_ids, target_ids) in zip(pairs, ours.encode_pairs(pairs), strict=True):
        assert original(pair.input_text)["input_ids"] == input_ids
        assert original(pair.target_text)["input_ids"] == target_ids
