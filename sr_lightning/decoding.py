"""Batched greedy / sampled decoding with the KV cache; many samples of one prompt share its prefill.

Prompts of different lengths are LEFT-padded so that every sequence's next token sits in
the last column; an attention mask hides the pads and position ids restart at 0 on each
sequence's first real token, so a padded prompt decodes exactly as it would alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from sr_lightning.model import GPTNeo


def generate(model: GPTNeo, prompts: list[list[int]], *, eos_id: int, pad_id: int,
             max_new_tokens: int = 96, temperature: float = 0.0, top_k: int | None = None,
             generator: torch.Generator | None = None, use_cache: bool = True,
             batch_size: int | None = None, prefixes: torch.Tensor | None = None) -> list[list[int]]:
    """Each prompt's new tokens, up to (not including) `eos_id`.

    `prefixes` [N, P, H]: a point embedder's vectors for each prompt, read before it (computed once:
    the cache keeps them).

    temperature 0 is greedy; otherwise sample from softmax(logits / temperature), restricted
    to the `top_k` most likely tokens when given. With `batch_size`, prompts are decoded in
    batches of similar length (less padding); results keep the order of `prompts`.
    A sequence also ends when it reaches the model's last position.
    `use_cache=False` recomputes the whole sequence each step: the slow reference.
    """
    if any(not p for p in prompts):
        raise ValueError("every prompt needs at least one token")
    order = list(range(len(prompts)))
    if batch_size:
        order.sort(key=lambda i: len(prompts[i]))
    size = batch_size or max(len(prompts), 1)
    results: list[list[int]] = [[] for _ in prompts]

    def pick(logits: torch.Tensor) -> torch.Tensor:
        return _pick(logits, temperature, top_k, generator)

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(order), size):
                chunk = order[start:start + size]
                prefix = None if prefixes is None else prefixes[chunk]
                outputs = _generate_batch(model, [prompts[i] for i in chunk], eos_id, pad_id, max_new_tokens,
                                          pick, use_cache, prefix)
                for i, out in zip(chunk, outputs):
                    results[i] = out
    finally:
        # Callbacks generate in the middle of training; give the model back as it came.
        model.train(was_training)
    return results


def sample_shared(model: GPTNeo, prompts: list[list[int]], samples: int, *, eos_id: int, pad_id: int,
                  max_new_tokens: int = 64, temperature: float = 0.8, top_k: int | None = None,
                  generators: Sequence[torch.Generator | None] | None = None,
                  prefixes: torch.Tensor | None = None) -> list[list[list[int]]]:
    """``samples`` completions of each prompt (its new tokens, up to `eos_id`), in one batch.

    Each prompt, and its point prefix, runs through the model once; its KV cache is then copied to
    its samples, which decode on from there. ``generators[i]`` draws prompt i's samples alone, so a
    prompt's completions do not depend on the other prompts of the batch (given equal logits).
    """
    if any(not p for p in prompts):
        raise ValueError("every prompt needs at least one token")
    if generators is not None and len(generators) != len(prompts):
        raise ValueError(f"{len(generators)} generators for {len(prompts)} prompts")
    if not prompts or samples < 1:
        return [[] for _ in prompts]

    def pick(logits: torch.Tensor) -> torch.Tensor:
        if generators is None:
            return _pick(logits, temperature, top_k, None)
        return torch.cat([_pick(group, temperature, top_k, generator)
                          for group, generator in zip(logits.split(samples), generators)])

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            rows = _generate_batch(model, prompts, eos_id, pad_id, max_new_tokens, pick, True, prefixes, samples)
    finally:
        model.train(was_training)
    return [rows[i:i + samples] for i in range(0, len(rows), samples)]


def _generate_batch(model: GPTNeo, prompts: list[list[int]], eos_id: int, pad_id: int, max_new_tokens: int,
                    pick: Callable[[torch.Tensor], torch.Tensor], use_cache: bool,
                    prefix: torch.Tensor | None = None, samples: int = 1) -> list[list[int]]:
    """Layout per row: [prefix][left pads][prompt]; pads are masked and positions skip them.

    Rows are the prompts' samples in order (prompt 0's ``samples`` rows first); with the cache, the
    prompts run once and their cache rows are copied to their samples.
    """
    device = model.wte.weight.device
    p = 0 if prefix is None else prefix.shape[1]
    width = p + max(len(prompt) for prompt in prompts)
    if width > model.config.n_positions:
        raise ValueError(f"prompt of {width} positions exceeds the model's {model.config.n_positions}")
    steps = min(max_new_tokens, model.config.n_positions - width)
    if steps <= 0:
        return [[] for _ in range(len(prompts) * samples)]
    ids, mask = _left_pad(prompts, pad_id, device)
    mask = torch.cat([mask.new_ones(len(prompts), p), mask], dim=1)
    positions = (mask.long().cumsum(1) - 1).clamp(min=0)
    prefix = None if prefix is None else prefix.to(device)
    cache = model.new_kv_cache(len(prompts), width + steps) if use_cache else None
    if use_cache:
        hidden = model(ids, position_ids=positions, attention_mask=mask, kv_cache=cache, prefix=prefix)
        cache.repeat_rows(samples)
    ids, mask, positions = (t.repeat_interleave(samples, dim=0) for t in (ids, mask, positions))
    if use_cache:
        hidden = hidden[:, -1:].repeat_interleave(samples, dim=0)
    else:
        prefix = None if prefix is None else prefix.repeat_interleave(samples, dim=0)
        hidden = model(ids, position_ids=positions, attention_mask=mask, prefix=prefix)
    finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=device)
    new_tokens = []
    for step in range(steps):
        token = pick(model.lm_head(hidden[:, -1])).masked_fill(finished, pad_id)
        new_tokens.append(token)
        finished |= token == eos_id
        if bool(finished.all()) or step == steps - 1:
            break
        token, next_position = token.unsqueeze(1), positions[:, -1:] + 1
        ids = torch.cat([ids, token], dim=1)
        positions = torch.cat([positions, next_position], dim=1)
        mask = torch.cat([mask, torch.ones_like(token, dtype=torch.bool)], dim=1)
        # With a cache only the new token goes in; without one, the whole sequence (and prefix) again.
        if use_cache:
            hidden = model(token, position_ids=next_position, attention_mask=mask, kv_cache=cache)
        else:
            hidden = model(ids, position_ids=positions, attention_mask=mask, prefix=prefix)
    return [_until_eos(row, eos_id) for row in torch.stack(new_tokens, dim=1).tolist()]


def _left_pad(prompts: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids [B, T] padded on the left, and the mask of real tokens."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt):] = True
    return ids.to(device), mask.to(device)


def _pick(logits: torch.Tensor, temperature: float, top_k: int | None,
          generator: torch.Generator | None) -> torch.Tensor:
    """Next token per row: argmax at temperature 0, else a (top-k) sample."""
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(1)


def _until_eos(tokens: list[int], eos_id: int) -> list[int]:
    return tokens[:tokens.index(eos_id)] if eos_id in tokens else tokens
