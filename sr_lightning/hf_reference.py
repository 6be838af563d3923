"""The original's training setup, rebuilt on `transformers` for the speed comparison of ``bench --compare``.

``hf-original`` pads every example to the context length, runs the 50k-way head over every position,
recomputes activations (gradient checkpointing) and takes 4 examples per micro-batch x 4 accumulation
steps; ``hf-tuned`` pads each micro-batch to its own longest example and does not recompute. Both train
on the very batches our path consumed, with the HF Trainer's defaults here (fused AdamW, clip 1.0).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from jsonargparse import Namespace

from .data.batches import IGNORE
from .data.tokenizer import SRTokenizer
from .measure import Batch, Figures, peak_memory, sync

log = logging.getLogger(__name__)

HF_MICRO_BATCH = 4  # the original's per-device batch; its 16-example step was 4 x 4 accumulation


def autocast(device: torch.device, precision: str):
    if precision.startswith("bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision in ("32-true", "32", "64-true"):
        return nullcontext()
    raise ValueError(f"the HF references support precision 32-true or bf16-mixed, not {precision!r}")


def _transformers():
    try:
        import transformers
    except ImportError as error:
        raise SystemExit("--compare needs the optional `transformers` package: pip install 'sr-lightning[bench]' "
                         f"({error})") from None
    transformers.logging.set_verbosity_error()
    return transformers


def hf_model(config, eos_id: int, device: torch.device, checkpointing: bool):
    """transformers' GPTNeoForCausalLM with our model's shape, vocabulary and dropout."""
    from .interop import config_to_hf

    transformers = _transformers()
    hf_config = transformers.GPTNeoConfig.from_dict({**config_to_hf(config, eos_id, eos_id), "use_cache": False})
    model = transformers.GPTNeoForCausalLM(hf_config).to(device).train()
    if checkpointing:
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()
    return model


def hf_optimizer(model) -> torch.optim.Optimizer:
    """The HF Trainer's default here: fused AdamW, lr 1e-4, decay 0.01 except biases and LayerNorms."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=1e-4, fused=True)


@dataclass
class Reference:
    """One HF setup: whether it pads to the context length and recomputes activations."""

    name: str
    pad_to: int | None
    """Pad every micro-batch to this length (the original's context length); None: dynamic padding."""
    checkpointing: bool
    micro_batch: int = HF_MICRO_BATCH

    def micro_batches(self, batch: Batch, pad_id: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(input_ids, attention_mask, HF labels) per micro-batch; HF labels are unshifted."""
        lengths = batch.lengths
        hf_labels = torch.cat([torch.full_like(batch.labels[:, :1], IGNORE), batch.labels[:, :-1]], dim=1)
        for start in range(0, len(lengths), self.micro_batch):
            rows = slice(start, start + self.micro_batch)
            width = self.pad_to or int(lengths[rows].max())
            ids = torch.full((len(lengths[rows]), width), pad_id, dtype=torch.long)
            labels = torch.full_like(ids, IGNORE)
            real = min(width, batch.input_ids.shape[1])
            ids[:, :real] = batch.input_ids[rows, :real]
            labels[:, :real] = hf_labels[rows, :real]
            mask = (torch.arange(width) < lengths[rows, None]).long()
            yield ids, mask, labels

    def computed_tokens(self, batch: Batch) -> int:
        lengths = batch.lengths
        return sum(len(lengths[i:i + self.micro_batch]) * (self.pad_to or int(lengths[i:i + self.micro_batch].max()))
                   for i in range(0, len(lengths), self.micro_batch))


def reference_step(ref: Reference, model, optimizer, batch: Batch, pad_id: int, device: torch.device,
                   precision: str) -> None:
    """One optimizer step as the HF Trainer takes it: micro-batches, accumulated loss, clip, step."""
    parts = list(ref.micro_batches(batch, pad_id))
    for ids, mask, labels in parts:
        with autocast(device, precision):
            loss = model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device)).loss
        (loss / len(parts)).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def run_reference(ref: Reference, config, tokenizer: SRTokenizer, warmup: Sequence[Batch], timed: Sequence[Batch],
                  device: torch.device, precision: str) -> Figures:
    figures = Figures(ref.name)
    with peak_memory(device) as peak:
        model = hf_model(config, tokenizer.eos_id, device, ref.checkpointing)
        optimizer = hf_optimizer(model)
        for batch in warmup:
            reference_step(ref, model, optimizer, batch, tokenizer.pad_id, device, precision)
        for batch in timed:
            sync(device)
            start = time.perf_counter()
            reference_step(ref, model, optimizer, batch, tokenizer.pad_id, device, precision)
            sync(device)
            figures.step_seconds.append(time.perf_counter() - start)
            examples, tokens, targets, _ = batch.figures()
            figures.add_batch(examples, tokens, targets, ref.computed_tokens(batch))
            log.info("%s step %d: %.2f s", ref.name, figures.steps, figures.step_seconds[-1])
        figures.seconds = sum(figures.step_seconds)
        figures.peak_memory_mb = peak()
    del model, optimizer
    return figures


def compare(batches: Sequence[Batch], args: Namespace, model_config, tokenizer: SRTokenizer,
            device: torch.device, precision: str, ours: Figures) -> dict[str, Any]:
    """Run both references on our batches (warmup ones first) and print the ratios."""
    warmup, timed = batches[:args.warmup], batches[args.warmup:args.warmup + args.steps]
    tuned = run_reference(Reference("hf-tuned", None, False), model_config, tokenizer, warmup, timed,
                          device, precision)
    print(tuned.line(), flush=True)
    results: dict[str, Any] = {"hf_tuned": tuned.as_dict(), "ratios": {"vs_tuned": _ratio(ours, tuned)}}
    ratio_line = f"ratio ours/hf-tuned={results['ratios']['vs_tuned']:.2f}x"
    if args.original_steps:
        original_ref = Reference("hf-original", model_config.n_positions, True)
        start = args.original_warmup
        original = run_reference(original_ref, model_config, tokenizer, timed[:start],
                                 timed[start:start + args.original_steps], device, precision)
        print(original.line(), flush=True)
        results["hf_original"] = original.as_dict()
        results["ratios"]["vs_original"] = _ratio(ours, original)
        ratio_line = f"ratio ours/hf-original={results['ratios']['vs_original']:.2f}x " + ratio_line
    print(f"{ratio_line} (examples/s, same batches, same model size, vocabulary {tokenizer.vocab_size}, "
          f"{precision})", flush=True)
    return results


def _ratio(ours: Figures, other: Figures) -> float:
    return ours.examples_per_s / other.examples_per_s if other.examples_per_s else math.inf
