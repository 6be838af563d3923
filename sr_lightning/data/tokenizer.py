"""Tokenizers: the small domain tokenizer shipped with the package, or any HF tokenizer file.

Sequence length is the cost everything else multiplies, so the default tokenizer is a byte-level
BPE with a small vocabulary trained on one-step data: parentheses are always tokens of their own
(so the first target token says "compound expression" or "leaf" unambiguously) and numbers are
pre-split from the expressions around them. Byte-level coding makes ``decode(encode(t)) == t``
hold for any text.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from importlib import resources
from itertools import islice
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from ..commands import command_parser
from .format import EOS, SPECIAL_TOKENS, TARGET, Pair
from .stream import LineReport, cache_dir, iter_raw_lines, parse_lines

log = logging.getLogger(__name__)

DEFAULT_VOCAB_SIZE = 1024
GPT2_VOCAB_SIZE = 50_257  # GPT-2's BPE entries; <|endoftext|> is the last one
TOKENIZER_LINES = 20_000  # data lines the gpt2-size tokenizer learns its merges from
DOMAIN_TOKENIZER_FILE = "domain_tokenizer.json"


def _domain_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"[()]"), behavior="isolated"),
        # A number and the space after it: the fitness after <FITNESS> and constants like 1.0.
        pre_tokenizers.Split(Regex(r"-?\d+\.\d+(?:e[-+]?\d+)? ?"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])


def _train_bpe(texts: Iterable[str], vocab_size: int, pre_tokenizer: pre_tokenizers.PreTokenizer) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def train_domain_tokenizer(texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE) -> Tokenizer:
    """Train the domain BPE on one-step texts (deterministic for the same texts)."""
    return _train_bpe(texts, vocab_size, _domain_pre_tokenizer())


def train_gpt2_style_tokenizer(texts: Iterable[str], vocab_size: int = 50_257) -> Tokenizer:
    """A byte-level BPE with GPT-2's pre-tokenizer and vocabulary size: the baseline to beat."""
    return _train_bpe(texts, vocab_size, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))


class SRTokenizer:
    """A `tokenizers.Tokenizer` that knows the special tokens of the one-step format."""

    def __init__(self, tokenizer: Tokenizer):
        missing = [t for t in SPECIAL_TOKENS if tokenizer.token_to_id(t) is None]
        if missing:
            # HF files (GPT-2/GPT-Neo) lack the four markers: append them in the original's order.
            tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
        self.tokenizer = tokenizer
        self.ids = {t: tokenizer.token_to_id(t) for t in SPECIAL_TOKENS}
        self.eos_id = self.ids[EOS]
        self.target_id = self.ids[TARGET]
        self.pad_id = self.eos_id

    @classmethod
    def default(cls) -> SRTokenizer:
        """The domain tokenizer shipped inside the package."""
        text = resources.files(__package__).joinpath(DOMAIN_TOKENIZER_FILE).read_text()
        return cls.from_str(text)

    @classmethod
    def from_file(cls, path: str | Path) -> SRTokenizer:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as error:  # the Rust side raises plain Exceptions
            raise ValueError(f"{path}: not a tokenizers JSON file ({error})") from error

    @classmethod
    def from_str(cls, text: str) -> SRTokenizer:
        return cls(Tokenizer.from_str(text))

    @classmethod
    def load(cls, path: str | Path | None) -> SRTokenizer:
        """The file at ``path``, or the default domain tokenizer when ``path`` is None."""
        return cls.default() if path is None else cls.from_file(path)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def to_str(self) -> str:
        return self.tokenizer.to_str()

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_str())

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def encode_pairs(self, pairs: Sequence[Pair]) -> list[tuple[list[int], list[int]]]:
        """Input part and target part encoded separately, as the original did."""
        inputs = self.encode_batch([p.input_text for p in pairs])
        targets = self.encode_batch([p.target_text for p in pairs])
        return list(zip(inputs, targets))

    def encode_prompts(self, pairs: Sequence[Pair]) -> list[list[int]]:
        """Inference prompts: the input part followed by ``<TARGET>``."""
        return [ids + [self.target_id] for ids in self.encode_batch([p.input_text for p in pairs])]

    def first_token_label(self, token_id: int) -> str:
        return self.tokenizer.id_to_token(token_id) or str(token_id)


def _data_texts(files: Sequence[Path], limit: int) -> list[str]:
    """The texts of the first ``limit`` good lines of ``files``."""
    report = LineReport()
    return [pair.text for pair in islice(parse_lines(iter_raw_lines(files, report), report), limit)]


def gpt2_size_tokenizer_json(texts: Sequence[str]) -> str:
    """A byte-level BPE with GPT-2's pre-tokenizer and layout: 50,257 entries, ``<|endoftext|>`` = 50256.

    Merges are learned from ``texts`` (a few thousand exist in one-step data); unused entries
    fill the rest, so the vocabulary, the embedding and the 50,261-way head (after SRTokenizer
    appends the four markers) have the original's size.
    """
    learned = json.loads(train_gpt2_style_tokenizer(texts, GPT2_VOCAB_SIZE).to_str())
    ordered = sorted(learned["model"]["vocab"].items(), key=lambda item: item[1])
    tokens = [token for token, _ in ordered if token not in SPECIAL_TOKENS]
    tokens += [f"<|unused{i}|>" for i in range(len(tokens), GPT2_VOCAB_SIZE - 1)] + [EOS]
    learned["model"]["vocab"] = {token: i for i, token in enumerate(tokens)}
    learned["added_tokens"] = [{"id": GPT2_VOCAB_SIZE - 1, "content": EOS, "single_word": False, "lstrip": False,
                                "rstrip": False, "normalized": False, "special": True}]
    return json.dumps(learned, ensure_ascii=False)


def gpt2_size_tokenizer(files: Sequence[Path], lines: int = TOKENIZER_LINES) -> Path:
    """The file of `gpt2_size_tokenizer_json` for these data files, built once into the cache."""
    stats = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    key = hashlib.sha1(json.dumps([stats, lines]).encode()).hexdigest()[:16]
    path = cache_dir() / "bench" / f"gpt2-size-{key}.json"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.write_text(gpt2_size_tokenizer_json(_data_texts(files, lines)), encoding="utf-8")
        partial.replace(path)
        log.info("built the gpt2-size tokenizer into %s", path)
    return path


def _texts_from_jsonl(paths: Sequence[str], limit: int | None) -> list[str]:
    from .format import pair_from_record

    texts: list[str] = []
    for path in paths:
        with open(path, encoding="utf-8") as lines:
            texts += [pair_from_record(json.loads(line)).text for line in islice(lines, limit)]
    return texts


def tokens_per_example(tokenizer: Tokenizer, texts: Sequence[str]) -> float:
    return sum(len(e.ids) for e in tokenizer.encode_batch(list(texts), add_special_tokens=False)) / len(texts)


def compare(train_texts: Sequence[str], eval_texts: Sequence[str], domain: Tokenizer) -> dict[str, float]:
    """Mean tokens per example: the domain tokenizer vs a GPT-2-size BPE trained on the same texts."""
    gpt2_style = train_gpt2_style_tokenizer(train_texts)
    baseline = tokens_per_example(gpt2_style, eval_texts)
    ours = tokens_per_example(domain, eval_texts)
    chars = sum(map(len, eval_texts)) / len(eval_texts)
    return {"domain": ours, "gpt2_size_bpe": baseline, "gpt2_size_bpe_vocab": gpt2_style.get_vocab_size(),
            "characters": chars, "domain_ratio": ours / baseline, "character_ratio": chars / baseline}


def main(argv: Sequence[str] | None = None) -> None:
    """Build the domain tokenizer from one-step JSONL, or compare it with a GPT-2-size BPE."""
    parser = command_parser(prog="python -m sr_lightning.data.tokenizer", description=main.__doc__)
    parser.add_argument("command", choices=("build", "compare"))
    parser.add_argument("data", nargs="+", help="one-step JSONL files (training texts)")
    parser.add_argument("--eval", nargs="*", default=[], help="JSONL files to count tokens on (compare)")
    parser.add_argument("--limit", type=int, default=None, help="lines read per file")
    parser.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE)
    parser.add_argument("--out", default=str(Path(__file__).with_name(DOMAIN_TOKENIZER_FILE)))
    args = parser.parse_args(argv)
    texts = _texts_from_jsonl(args.data, args.limit)
    if not texts:
        parser.error(f"no examples in {', '.join(args.data)}")
    if args.command == "build":
        tokenizer = train_domain_tokenizer(texts, args.vocab_size)
        tokenizer.save(args.out)
        print(f"wrote {args.out}: {tokenizer.get_vocab_size()} entries from {len(texts)} examples")
        return
    eval_texts = _texts_from_jsonl(args.eval, args.limit) if args.eval else texts
    if not eval_texts:
        parser.error(f"no examples in {', '.join(args.eval)}")
    figures = compare(texts, eval_texts, SRTokenizer.default().tokenizer)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
