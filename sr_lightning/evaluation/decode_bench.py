"""``python -m sr_lightning.evaluation.decode_bench --checkpoint RUN_OR_CKPT --n 32``: decoding speed.

Greedy predictions for the same prompts, two ways: batched with the KV cache (what evaluation
and neural-guided search use) and one prompt at a time recomputing the whole sequence every
step (the naive loop). Prints examples per second of each, the ratio, and whether the two
produced identical outputs.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import torch

from ..commands import command_parser
from ..data.points import PointsFileError, ProblemIndex
from ..data.stream import LineReport, resolve_files
from ..data.tokenizer import SRTokenizer
from ..decoding import generate
from ..model import GPTNeo
from ..task import OneStepTask
from .checkpoints import EvaluationInputError, load_for_evaluation, newest_run, points_file, run_files
from .report import read_pairs


def bench_prompts(files: Sequence[Path], task: OneStepTask, n: int, model: GPTNeo,
                  problems: ProblemIndex) -> tuple[list[list[int]], torch.Tensor | None]:
    """The inference prompts of the first ``n`` usable examples of ``files``, and their point prefixes
    when the model reads points (found by ``problems``, as the report finds them)."""
    lines = LineReport()
    kept = task.encode(list(islice(read_pairs(files, lines), n)), lines, problems)
    if not kept:
        raise EvaluationInputError(f"no usable example in {', '.join(map(str, files))}")
    with torch.inference_mode():
        prefixes = model.point_prefix(task.collate([e for _, e in kept]))
    return [task.prompt_ids(e) for _, e in kept], prefixes


def _timed(fn) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def benchmark(model: GPTNeo, tokenizer: SRTokenizer, prompts: list[list[int]], batch_size: int = 32,
              max_new_tokens: int = 64, prefixes: torch.Tensor | None = None) -> dict[str, Any]:
    """Examples per second of batched cached decoding and of one-at-a-time uncached decoding."""
    kwargs = {"eos_id": tokenizer.eos_id, "pad_id": tokenizer.pad_id, "max_new_tokens": max_new_tokens}
    one = (lambda i: None) if prefixes is None else (lambda i: prefixes[i:i + 1])
    generate(model, prompts[:2], prefixes=None if prefixes is None else prefixes[:2], **kwargs)  # warm-up
    batched, fast = _timed(lambda: generate(model, prompts, batch_size=batch_size, prefixes=prefixes, **kwargs))
    single, slow = _timed(lambda: [generate(model, [p], use_cache=False, prefixes=one(i), **kwargs)[0]
                                   for i, p in enumerate(prompts)])
    n = len(prompts)
    return {"n": n, "batch_size": batch_size, "max_new_tokens": max_new_tokens,
            "mean_prompt_tokens": sum(map(len, prompts)) / n,
            "mean_new_tokens": sum(map(len, batched)) / n,
            "batched_cached_per_s": n / fast, "single_uncached_per_s": n / slow, "speedup": slow / fast,
            "identical_outputs": sum(a == b for a, b in zip(batched, single))}


def render(result: dict[str, Any]) -> str:
    return (f"{result['n']} prompts (mean {result['mean_prompt_tokens']:.0f} tokens, "
            f"{result['mean_new_tokens']:.1f} new tokens each)\n"
            f"batched + KV cache (batch {result['batch_size']}): {result['batched_cached_per_s']:.2f} examples/s\n"
            f"one at a time, no cache:          {result['single_uncached_per_s']:.2f} examples/s\n"
            f"speedup: {result['speedup']:.1f}x; identical greedy outputs: "
            f"{result['identical_outputs']}/{result['n']}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = command_parser(prog="python -m sr_lightning.evaluation.decode_bench",
                            description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a .ckpt, a run directory or an HF directory (default: newest run)")
    parser.add_argument("--data", nargs="+", help="JSONL files or globs (default: the run's validation files)")
    parser.add_argument("--tokenizer", help="tokenizer file (HF directories without tokenizer.json)")
    parser.add_argument("--n", type=int, default=32, help="prompts to decode")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        model, task, info = load_for_evaluation(args.checkpoint or newest_run(), args.tokenizer, args.device)
        files = resolve_files(args.data or run_files(info))
        prompts, prefixes = bench_prompts(files, task, args.n, model, ProblemIndex(points_file(info)))
    except (EvaluationInputError, PointsFileError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"checkpoint {info['checkpoint']} on {args.device}, {torch.get_num_threads()} threads")
    print(render(benchmark(model, task.tokenizer, prompts, args.batch_size, args.max_new_tokens, prefixes)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
