"""Batched greedy / sampled decoding with the KV cache; many samples of one prompt share its prefill.

Prompts of different lengths are LEFT-padded so that every sequence's next token sits in
the last column; an attention mask hides the pads and position ids restart at 0 on each
sequence's first real token, so a padded prompt decodes exactly as it would alone.

Sampling draws every row's random numbers before the first step (one table per generator) and
picks by inverse CDF, so what a row writes depends only on its own logits and numbers: never on
the other rows of the batch, nor on when they finish. Finished rows leave the batch (their cache
rows with them) once a quarter of it has finished, so a few long completions do not keep the
whole batch busy.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from sr_lightning.constrained import ExpressionGrammar, RowStates
from sr_lightning.model import GPTNeo

COMPACT_FRACTION = 0.25  # finished rows leave the batch once they are this share of it
PREFILL_CHUNK = 8  # prompts per prefill pass, sorted by length: little padding, still batched


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen: argmax at temperature 0, else a sample of softmax(logits / temperature),
    restricted to the ``top_k`` most likely tokens when given."""

    temperature: float = 0.0
    top_k: int | None = None

    def uniforms(self, generators: Sequence[torch.Generator | None], rows_each: int, steps: int,
                 device: torch.device) -> torch.Tensor | None:
        """[len(generators) * rows_each, steps] numbers in [0, 1): generator i's rows follow generator i-1's."""
        if self.temperature == 0.0:
            return None
        return torch.cat([torch.rand(rows_each, steps, generator=g, device=g.device if g else device).to(device)
                          for g in generators])

    def pick(self, logits: torch.Tensor, uniform: torch.Tensor | None) -> torch.Tensor:
        """Next token per row; ``uniform`` [rows] are the rows' numbers for this step."""
        if uniform is None:
            return logits.argmax(dim=-1)
        logits = logits.float() / self.temperature
        if self.top_k is not None:
            kth = torch.topk(logits, min(self.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        cdf = logits.softmax(dim=-1).cumsum(dim=-1)
        target = (uniform.to(cdf.dtype) * cdf[:, -1]).unsqueeze(1)  # below the total: never past the last token
        return torch.searchsorted(cdf, target, right=True).squeeze(1).clamp_(max=logits.shape[-1] - 1)


def generate(model: GPTNeo, prompts: list[list[int]], *, eos_id: int, pad_id: int,
             max_new_tokens: int = 96, temperature: float = 0.0, top_k: int | None = None,
             generator: torch.Generator | None = None, use_cache: bool = True,
             batch_size: int | None = None, prefixes: torch.Tensor | None = None) -> list[list[int]]:
    """Each prompt's new tokens, up to (not including) `eos_id`.

    `prefixes` [N, P, H]: a point embedder's vectors for each prompt, read before it (computed once:
    the cache keeps them).

    temperature 0 is greedy; otherwise sample (see `Sampling`) with ``generator``. With `batch_size`,
    prompts are decoded in batches of similar length (less padding); results keep the order of `prompts`.
    A sequence also ends when it reaches the model's last position.
    `use_cache=False` recomputes the whole sequence each step: the slow reference.
    """
    if any(not p for p in prompts):
        raise ValueError("every prompt needs at least one token")
    results: list[list[int]] = [[] for _ in prompts]
    sampling = Sampling(temperature, top_k)
    with _eval_mode(model):
        for chunk in _passes(prompts, batch_size, by_length=bool(batch_size)):
            prefix = None if prefixes is None else prefixes[chunk]
            outputs = _decode(model, [prompts[i] for i in chunk], eos_id, pad_id, max_new_tokens, sampling,
                              [generator], use_cache, prefix, samples=1, rows_per_generator=len(chunk))
            for i, out in zip(chunk, outputs):
                results[i] = out
    return results


def sample_shared(model: GPTNeo, prompts: list[list[int]], samples: int, *, eos_id: int, pad_id: int,
                  max_new_tokens: int = 64, temperature: float = 0.8, top_k: int | None = None,
                  generators: Sequence[torch.Generator | None] | None = None,
                  prefixes: torch.Tensor | None = None, prompts_per_pass: int | None = None,
                  grammars: Sequence[ExpressionGrammar] | None = None) -> list[list[list[int]]]:
    """``samples`` completions of each prompt (its new tokens, up to `eos_id`).

    Each prompt, and its point prefix, runs through the model once; its KV cache is then copied to
    its samples, which decode on from there. ``generators[i]`` draws prompt i's samples alone, so a
    prompt's completions do not depend on the other prompts of the batch (given equal logits).
    ``prompts_per_pass``: decode prompts of similar length together, this many at a time (every row
    attends over its pass's longest prompt); None: all in one pass. ``grammars[i]``: prompt i's samples
    are expressions of that grammar (`constrained`), closed before ``max_new_tokens`` run out.
    """
    if any(not p for p in prompts):
        raise ValueError("every prompt needs at least one token")
    if generators is not None and len(generators) != len(prompts):
        raise ValueError(f"{len(generators)} generators for {len(prompts)} prompts")
    if not prompts or samples < 1:
        return [[] for _ in prompts]
    results: list[list[list[int]]] = [[] for _ in prompts]
    with _eval_mode(model):
        for chunk in _passes(prompts, prompts_per_pass, by_length=True):
            rows = _decode(model, [prompts[i] for i in chunk], eos_id, pad_id, max_new_tokens,
                           Sampling(temperature, top_k), [generators[i] for i in chunk] if generators else [None],
                           True, None if prefixes is None else prefixes[chunk], samples,
                           rows_per_generator=samples if generators else len(chunk) * samples,
                           grammars=None if grammars is None else [grammars[i] for i in chunk])
            for n, i in enumerate(chunk):
                results[i] = rows[n * samples:(n + 1) * samples]
    return results


def _passes(prompts: list[list[int]], size: int | None, by_length: bool) -> Iterator[list[int]]:
    """Indices of the prompts decoded together, ``size`` at a time (None: all), shortest first if ``by_length``."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i])) if by_length else list(range(len(prompts)))
    size = size or max(len(prompts), 1)
    for start in range(0, len(order), size):
        yield order[start:start + size]


@contextmanager
def _eval_mode(model: GPTNeo) -> Iterator[None]:
    """Inference mode, the model in eval mode, and given back as it came (callbacks generate mid-training)."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def _decode(model: GPTNeo, prompts: list[list[int]], eos_id: int, pad_id: int, max_new_tokens: int,
            sampling: Sampling, generators: Sequence[torch.Generator | None], use_cache: bool,
            prefix: torch.Tensor | None, samples: int, rows_per_generator: int,
            grammars: Sequence[ExpressionGrammar] | None = None) -> list[list[int]]:
    """New tokens of each row; rows are the prompts' samples in order (prompt 0's ``samples`` rows first)."""
    p = 0 if prefix is None else prefix.shape[1]
    width = p + max(len(prompt) for prompt in prompts)
    if width > model.config.n_positions:
        raise ValueError(f"prompt of {width} positions exceeds the model's {model.config.n_positions}")
    rows = len(prompts) * samples
    steps = min(max_new_tokens, model.config.n_positions - width)
    if steps <= 0:
        return [[] for _ in range(rows)]
    device = model.wte.weight.device
    uniforms = sampling.uniforms(generators, rows_per_generator, steps, device)
    prefix = None if prefix is None else prefix.to(device)
    batch = (_CachedRows if use_cache else _RecomputedRows)(model, prompts, prefix, pad_id, steps, samples)
    live = torch.arange(rows, device=device)  # the row each batch row is
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    tokens = torch.full((rows, steps), eos_id, dtype=torch.long, device=device)
    rules = None if grammars is None else RowStates([g for g in grammars for _ in range(samples)])
    hidden = batch.hidden
    for step in range(steps):
        logits = model.lm_head(hidden)
        if rules is not None:
            rows_now = live.tolist()
            logits = logits.masked_fill(~rules.mask(rows_now, steps - step, device), float("-inf"))
        token = sampling.pick(logits, None if uniforms is None else uniforms[live, step])
        if rules is not None:
            rules.advance(rows_now, token.tolist())
        tokens[live, step] = token
        finished |= token == eos_id
        if bool(finished.all()) or step == steps - 1:
            break
        if finished.sum() >= COMPACT_FRACTION * len(finished):
            keep = (~finished).nonzero().squeeze(1)
            live, finished, token = live[keep], finished[keep], token[keep]
            batch.keep(keep)
        hidden = batch.step(token)
    return [_until_eos(row, eos_id) for row in tokens.tolist()]


class _CachedRows:
    """The rows' KV cache. The prompts run in chunks of similar length (little padding), each chunk
    right-aligned into one cache, and each prompt's cache rows are then copied to its samples.

    Row layout: [left pads][prefix][pads of its chunk][prompt]; pads are masked and positions skip them.
    """

    def __init__(self, model: GPTNeo, prompts: list[list[int]], prefix: torch.Tensor | None, pad_id: int,
                 steps: int, samples: int, chunk: int = PREFILL_CHUNK) -> None:
        device = model.wte.weight.device
        p = 0 if prefix is None else prefix.shape[1]
        width = p + max(len(prompt) for prompt in prompts)
        self.model, self.cache = model, model.new_kv_cache(len(prompts), width + steps)
        self.mask = torch.zeros(len(prompts), width, dtype=torch.bool, device=device)
        self.position = torch.zeros(len(prompts), 1, dtype=torch.long, device=device)
        order, last = [], []
        for indices in _passes(prompts, chunk, by_length=True):
            order += indices
            rows = torch.tensor(indices, device=device)
            ids, mask = _left_pad([prompts[i] for i in indices], pad_id, device, p)
            positions = _positions(mask)
            part = model.new_kv_cache(len(rows), mask.shape[1])
            hidden = model(ids, position_ids=positions, attention_mask=mask, kv_cache=part,
                           prefix=None if prefix is None else prefix[rows])
            self.cache.place(rows, part, width - mask.shape[1])
            self.mask[rows, width - mask.shape[1]:] = mask
            self.position[rows] = positions[:, -1:]
            last.append(hidden[:, -1])
        self.hidden = torch.cat(last)[torch.argsort(torch.tensor(order, device=device))]
        self.cache.length = width
        self.keep(torch.arange(len(prompts), device=device).repeat_interleave(samples))

    def keep(self, rows: torch.Tensor) -> None:
        self.cache.select_rows(rows)
        self.mask, self.position, self.hidden = self.mask[rows], self.position[rows], self.hidden[rows]

    def step(self, token: torch.Tensor) -> torch.Tensor:
        """The hidden state after ``token`` [rows]: only the new token goes through the model."""
        self.position = self.position + 1
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(token), 1)], dim=1)
        return self.model(token.unsqueeze(1), position_ids=self.position, attention_mask=self.mask,
                          kv_cache=self.cache)[:, -1]


class _RecomputedRows:
    """The slow reference: every step runs the whole left-padded sequence (and prefix) again."""

    def __init__(self, model: GPTNeo, prompts: list[list[int]], prefix: torch.Tensor | None, pad_id: int,
                 steps: int, samples: int) -> None:
        device = model.wte.weight.device
        ids, mask = _left_pad(prompts, pad_id, device, 0 if prefix is None else prefix.shape[1])
        self.model, self.prefix = model, prefix
        self.ids, self.mask = ids, mask
        self.keep(torch.arange(len(prompts), device=device).repeat_interleave(samples))
        self.hidden = self._run()

    def _run(self) -> torch.Tensor:
        return self.model(self.ids, position_ids=_positions(self.mask), attention_mask=self.mask,
                          prefix=self.prefix)[:, -1]

    def keep(self, rows: torch.Tensor) -> None:
        self.ids, self.mask = self.ids[rows], self.mask[rows]
        self.prefix = None if self.prefix is None else self.prefix[rows]

    def step(self, token: torch.Tensor) -> torch.Tensor:
        self.ids = torch.cat([self.ids, token.unsqueeze(1)], dim=1)
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(token), 1)], dim=1)
        return self._run()


def _left_pad(prompts: list[list[int]], pad_id: int, device: torch.device,
              prefix_len: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids [B, T] padded on the left, and the mask of real positions [B, prefix_len + T]: the point
    prefix, which goes before the pads, is real."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), prefix_len + width), dtype=torch.bool)
    mask[:, :prefix_len] = True
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        mask[row, prefix_len + width - len(prompt):] = True
    return ids.to(device), mask.to(device)


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip the pads: 0 on each row's first real position."""
    return (mask.long().cumsum(1) - 1).clamp(min=0)


def _until_eos(tokens: list[int], eos_id: int) -> list[int]:
    return tokens[:tokens.index(eos_id)] if eos_id in tokens else tokens
