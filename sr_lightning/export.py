"""``python -m sr_lightning.export CKPT OUT_DIR``: a training checkpoint as an HF GPT-Neo directory.

The directory (config.json, model.safetensors, tokenizer.json) loads with
``transformers.GPTNeoForCausalLM.from_pretrained`` and ``tokenizers.Tokenizer.from_file``, so
tools built around the original system keep working; ``--model.init_from`` and
``evaluate.py --checkpoint`` read it back.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from .commands import command_parser
from .interop import CONFIG_FILE, SAFETENSORS_FILE, TOKENIZER_FILE, save_hf_gpt_neo
from .module import OneStepLM


class ExportError(Exception):
    """The checkpoint cannot be exported; the message is one line for the user."""


def export(checkpoint: str | Path, out_dir: str | Path) -> list[Path]:
    """Write the checkpoint's model and tokenizer into ``out_dir``; returns the files written."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise ExportError(f"checkpoint not found: {checkpoint}")
    try:
        lm = OneStepLM.load_from_checkpoint(checkpoint, map_location="cpu")
    except Exception as error:  # torch, pickle, zip and Lightning each raise their own kind
        reason = str(error).split(". ")[0].splitlines()[0] if str(error) else ""
        raise ExportError(f"{checkpoint}: not a readable sr_lightning checkpoint "
                          f"({type(error).__name__}: {reason})") from error
    if lm.model.config.input_embedder not in ("none", "e2e"):
        raise ExportError(f"{checkpoint}: a {lm.model.config.input_embedder!r} embedder has no layout of the "
                          f"original's to write (e2e models export as its WithEmbedderForCausalLM)")
    tokenizer = lm.tokenizer
    out = save_hf_gpt_neo(lm.model, out_dir, tokenizer_json=tokenizer.to_str(),
                          bos_id=tokenizer.eos_id, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
    return [out / name for name in (CONFIG_FILE, SAFETENSORS_FILE, TOKENIZER_FILE)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = command_parser(prog="python -m sr_lightning.export",
                            description="Write a train.py checkpoint as a Hugging Face GPT-Neo directory.")
    parser.add_argument("checkpoint", help="a .ckpt file written by train.py")
    parser.add_argument("out_dir", help="directory to write (created if missing; files in it are replaced)")
    args = parser.parse_args(argv)
    try:
        files = export(args.checkpoint, args.out_dir)
    except ExportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for path in files:
        print(f"wrote {path} ({path.stat().st_size:,} bytes)")
    print(f"load with transformers.GPTNeoForCausalLM.from_pretrained({str(args.out_dir)!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
