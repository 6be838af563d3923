"""Offline stand-ins for the original system's files (no download is possible in tests).

`gpt2_style_tokenizer`: a GPT-2/GPT-Neo-style `tokenizer.json` with GPT-2's layout: byte-level
BPE, the 256 byte symbols first in GPT-2's order (so `(` is 7 and `x` is 87, as in the real
file), 50,257 entries with `<|endoftext|>` last (50256) and added as a special token. Its
merges are learned from the fixture texts instead of GPT-2's 50k; the unused rest of the
vocabulary is filled with tokens no merge produces.

`random_gpt_neo` / `original_checkpoint`: a random `transformers` GPT-Neo and a
`checkpoint-N/` directory like the original's (needs `transformers`; tests skip without it).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

import pytest
import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from sr_lightning.data.format import EOS, SPECIAL_TOKENS, pair_from_record
from tests.test_format import fixture_lines

GPT2_VOCAB_SIZE = 50257
GPT2_EOS_ID = 50256
SPECIAL_SPLIT = re.compile("(" + "|".join(map(re.escape, SPECIAL_TOKENS)) + ")")


def gpt2_byte_symbols() -> list[str]:
    """GPT-2's `bytes_to_unicode` in id order: printable bytes as themselves, the rest from U+0100."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


def fixture_texts() -> list[str]:
    """The fixture's one-step texts cut at the special tokens, as the original's tokenizer saw them."""
    texts = [pair_from_record(json.loads(line)).text for line in fixture_lines()]
    return [piece for text in texts for piece in SPECIAL_SPLIT.split(text) if piece and piece not in SPECIAL_TOKENS]


def _learned_merges(texts: Iterable[str], n_merges: int) -> list[tuple[str, str]]:
    learner = Tokenizer(models.BPE())
    learner.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=256 + n_merges, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    learner.train_from_iterator(texts, trainer=trainer)
    return [tuple(merge) for merge in json.loads(learner.to_str())["model"]["merges"]]


def gpt2_style_tokenizer(n_merges: int = 400) -> Tokenizer:
    """The tokenizer described in the module docstring (deterministic)."""
    merges = _learned_merges(fixture_texts(), n_merges)
    tokens = gpt2_byte_symbols() + [a + b for a, b in merges]
    tokens += [f"<unused{i}>" for i in range(GPT2_EOS_ID - len(tokens))] + [EOS]
    tokenizer = Tokenizer(models.BPE({token: i for i, token in enumerate(tokens)}, merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.add_special_tokens([AddedToken(EOS, special=True, normalized=False)])
    assert tokenizer.get_vocab_size() == GPT2_VOCAB_SIZE and tokenizer.token_to_id(EOS) == GPT2_EOS_ID
    return tokenizer


def random_gpt_neo(vocab_size: int = 50261, n_positions: int = 2048):
    """A random GPTNeoForCausalLM of the "tiny" shape, in eval mode.

    LayerNorm weights and biases get noise too, so that a slip in the weight mapping shows.
    """
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPTNeoConfig(
        vocab_size=vocab_size, max_position_embeddings=n_positions, hidden_size=256, num_layers=4, num_heads=8,
        attention_types=[[["global"], 4]], embed_dropout=0.1, attention_dropout=0.1, resid_dropout=0.1,
        bos_token_id=min(GPT2_EOS_ID, vocab_size - 1), eos_token_id=min(GPT2_EOS_ID, vocab_size - 1),
    )
    model = transformers.GPTNeoForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


def original_checkpoint(out_dir: Path):
    """`out_dir` as the original's checkpoint: random GPT-Neo (vocab 50,261) + GPT-2-style tokenizer.json.

    The tokenizer file lacks the four markers, like GPT-Neo's own; loading appends them.
    Returns the transformers model.
    """
    model = random_gpt_neo()
    model.save_pretrained(out_dir)
    gpt2_style_tokenizer().save(str(out_dir / "tokenizer.json"))
    return model
