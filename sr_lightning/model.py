"""GPT-Neo-architecture language model in one readable file (SPEC section 5).

The forward pass returns hidden states, not logits: training gathers the few target
positions first and runs `lm_head` on them alone, which skips most of the work of a
50k-vocabulary head; with `output_mask` the last block, too, runs on those positions alone.
Module names follow Hugging Face's GPT-Neo (`wte`, `h.{i}.ln_1`, ...) so that `interop` maps
weights by a plain rename.

CPU training has its own dropout paths (measured in BENCHMARKS.md): with attention dropout,
SDPA falls back to a slow math kernel and `bernoulli_` masks cost more than the matmuls, so
attention runs chunked with cheap masks (`dropout_attention`). GPUs and compiled models use SDPA.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PRESETS: dict[str, dict[str, int]] = {
    # CPU-sized model for smoke runs and tests.
    "micro": dict(hidden_size=128, n_layers=2, n_heads=4, n_positions=1024),
    # The original "gpt-neo-tiny" (16.55 M parameters with the 50,261 vocabulary).
    "tiny": dict(hidden_size=256, n_layers=4, n_heads=8, n_positions=2048),
    # The original "small" ("s") model.
    "small": dict(hidden_size=1024, n_layers=16, n_heads=16, n_positions=4096),
}


@dataclass
class ModelConfig:
    """Shape and regularisation of the model; the defaults are the "tiny" preset."""

    vocab_size: int = 50261
    """Token embedding rows; also the output vocabulary (the head is tied to `wte`)."""
    n_positions: int = 2048
    """Learned absolute positions, i.e. the longest sequence the model can read."""
    hidden_size: int = 256
    """Width of the residual stream."""
    n_layers: int = 4
    """Number of transformer blocks."""
    n_heads: int = 8
    """Attention heads per block; must divide `hidden_size`."""
    intermediate_size: int | None = None
    """MLP hidden width; None means 4 x `hidden_size` (GPT-Neo's default)."""
    embed_dropout: float = 0.1
    """Dropout on token + position embeddings."""
    attn_dropout: float = 0.1
    """Dropout on attention probabilities."""
    resid_dropout: float = 0.1
    """Dropout on each block's attention and MLP outputs before the residual add."""
    layer_norm_eps: float = 1e-5
    """LayerNorm epsilon."""

    def __post_init__(self) -> None:
        if self.hidden_size % self.n_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by n_heads {self.n_heads}")

    @property
    def mlp_size(self) -> int:
        """The MLP hidden width with the None default resolved."""
        return self.intermediate_size or 4 * self.hidden_size

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.n_heads

    @classmethod
    def preset(cls, name: str, **overrides) -> ModelConfig:
        """A named size ("micro", "tiny", "small") with any field overridden."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


class KVCache:
    """Preallocated keys and values of every layer, so decoding appends without copying.

    Tensors are [layers, batch, heads, max_len, head_dim]; `length` counts the positions
    already written. The model advances `length` once per forward, after all layers.
    """

    def __init__(self, config: ModelConfig, batch_size: int, max_len: int,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        shape = (config.n_layers, batch_size, config.n_heads, max_len, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this step's keys/values of one layer and return the whole prefix."""
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions, {end} needed")
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, n: int) -> None:
        self.length += n


QUERY_BLOCK = 128
"""Queries per chunk of `dropout_attention`: a block of queries needs only the keys up to its end."""
CHUNK_ELEMENTS = 1 << 22
"""Scores per chunk of `dropout_attention` (16 MiB in fp32). Smaller chunks were no faster on one
thread and far slower on two threads of a busy CPU, where every small op waits for both."""


def dropout_multiplier(shape: tuple[int, ...], p: float, seed: int) -> torch.Tensor:
    """Dropout as a float factor: 0 where an element drops, 1 / (1 - p) where it stays.

    P(drop) is p rounded to a multiple of 1/65536. Why not `bernoulli_`: on CPU it draws a
    double per element and cost more than the attention matmuls it masks; 16 bits of numpy's
    SFC64 generator per element are ~20x cheaper.
    """
    drops = round(p * 65536)
    bits = np.random.SFC64(seed).random_raw(-(-math.prod(shape) // 4)).view(np.uint16)[:math.prod(shape)]
    factor = np.greater_equal(bits, drops) * np.float32(65536 / (65536 - drops))
    return torch.from_numpy(factor).view(shape)


def _cpu_dropout(x: torch.Tensor, p: float) -> bool:
    """Whether dropout on `x` takes the CPU paths of this module (not on GPUs, nor inside torch.compile)."""
    return 0 < p < 1 and x.device.type == "cpu" and not torch.compiler.is_compiling()


def _seed() -> int:
    """A seed for numpy's generator drawn from torch's, so `torch.manual_seed` fixes every mask."""
    return int(torch.randint(2**62, (1,)))


class Dropout(nn.Dropout):
    """`nn.Dropout` whose CPU masks come from `dropout_multiplier` (same result, a fraction of the time)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and _cpu_dropout(x, self.p)):
            return super().forward(x)
        return x * dropout_multiplier(x.shape, self.p, _seed()).to(x.dtype)


@dataclass(frozen=True)
class _Chunk:
    """Rows [r0, r1) of the flattened (example, head) dimension, queries [q0, q1): causal, so keys [0, q1)."""

    r0: int
    r1: int
    q0: int
    q1: int

    def queries(self, x: torch.Tensor) -> torch.Tensor:
        return x[self.r0:self.r1, self.q0:self.q1]

    def keys(self, x: torch.Tensor) -> torch.Tensor:
        return x[self.r0:self.r1, :self.q1]


def _chunks(shape: torch.Size) -> list[_Chunk]:
    """Chunks of about `CHUNK_ELEMENTS` scores over [rows, T, head_dim] tensors."""
    rows, t, _ = shape
    block = min(t, QUERY_BLOCK)
    per_chunk = max(1, CHUNK_ELEMENTS // (block * t))
    return [_Chunk(r0, min(rows, r0 + per_chunk), q0, min(t, q0 + block))
            for r0 in range(0, rows, per_chunk) for q0 in range(0, t, block)]


def _causal_probs(q: torch.Tensor, k: torch.Tensor, chunk: _Chunk) -> torch.Tensor:
    """softmax(q k^T) of one chunk, causal: only its diagonal block has keys to hide. [rows, queries, keys]"""
    scores = torch.bmm(chunk.queries(q), chunk.keys(k).transpose(1, 2))
    n = chunk.q1 - chunk.q0
    scores[:, :, chunk.q0:].add_(torch.full((n, n), float("-inf"), dtype=q.dtype, device=q.device).triu_(1))
    return torch.softmax(scores, dim=-1)


class _DropoutAttention(torch.autograd.Function):
    """dropout(softmax(q k^T)) v with a causal mask, chunk by chunk, recomputed in backward.

    Why: with dropout, CPU SDPA falls back to its math path, which draws a double per mask
    element, computes the masked upper triangle too, and keeps three [rows, T, T] tensors for
    backward. Here blocks above the diagonal are skipped, the mask is cheap, and backward
    recomputes the probabilities and regenerates each chunk's mask from its seed instead of
    storing either, so memory stays that of the chunks.
    """

    @staticmethod
    def forward(ctx, q, k, v, p: float, seed: int):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        out = torch.empty_like(q)
        for index, chunk in enumerate(_chunks(q.shape)):
            probs = _causal_probs(q, k, chunk)
            probs.mul_(dropout_multiplier(probs.shape, p, seed + index))
            chunk.queries(out).copy_(torch.bmm(probs, chunk.keys(v)))
        ctx.save_for_backward(q, k, v, out)
        ctx.p, ctx.seed = p, seed
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        # softmax backward needs sum_j P_ij dL/dP_ij per row, which is grad_out . out (as in flash attention)
        row_dot = (grad_out * out).sum(-1, keepdim=True)
        dq, dk, dv = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
        for index, chunk in enumerate(_chunks(q.shape)):
            probs = _causal_probs(q, k, chunk)
            factor = dropout_multiplier(probs.shape, ctx.p, ctx.seed + index)
            grad = chunk.queries(grad_out)
            chunk.keys(dv).add_(torch.bmm((probs * factor).transpose(1, 2), grad))
            grad_scores = torch.bmm(grad, chunk.keys(v).transpose(1, 2)).mul_(factor)
            grad_scores.sub_(chunk.queries(row_dot)).mul_(probs)
            chunk.queries(dq).copy_(torch.bmm(grad_scores, chunk.keys(k)))
            chunk.keys(dk).add_(torch.bmm(grad_scores.transpose(1, 2), chunk.queries(q)))
        return dq, dk, dv, None, None


def dropout_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: float) -> torch.Tensor:
    """Causal, unscaled attention with dropout on the probabilities, for CPU training.

    q, k, v: [B, heads, T, head_dim]; computed in fp32 whatever the autocast dtype. The seed comes from torch's global generator, so
    `torch.manual_seed` (and a restored RNG state) fixes the masks.
    """
    (b, h, t, d), dtype = q.shape, q.dtype
    q, k, v = (x.float().reshape(b * h, t, d) for x in (q, k, v))
    with torch.autocast("cpu", enabled=False):
        out = _DropoutAttention.apply(q, k, v, p, _seed())
    return out.view(b, h, t, d).to(dtype)


@dataclass(frozen=True)
class KeptPositions:
    """The positions whose outputs are needed, row by row: ``positions[b, :count_b]`` ascending."""

    mask: torch.Tensor
    """[B, T] bool, True = needed."""
    positions: torch.Tensor
    """[B, S] long, S = the largest count; a row's slots past its count repeat other positions."""
    valid: torch.Tensor
    """[B, S] bool, True for the slots that hold a needed position."""

    @classmethod
    def of(cls, mask: torch.Tensor) -> KeptPositions:
        counts = mask.sum(dim=1)
        slots = max(1, int(counts.max()) if counts.numel() else 0)  # a batch of no rows still has one slot
        positions = torch.argsort((~mask).to(torch.uint8), dim=1, stable=True)[:, :slots]
        valid = torch.arange(slots, device=mask.device) < counts.unsqueeze(1)
        return cls(mask, positions, valid)


def _row_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible: torch.Tensor,
                   dropout: float) -> torch.Tensor:
    """Unscaled attention of a few query rows [B, heads, S, d] over all keys, `visible` [B, 1, S, T]."""
    if not _cpu_dropout(q, dropout):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=visible, dropout_p=dropout, scale=1.0)
    with torch.autocast("cpu", enabled=False):  # fp32 scores, like SDPA's math path
        scores = (q.float() @ k.float().transpose(-1, -2)).masked_fill(~visible, float("-inf"))
        probs = torch.softmax(scores, dim=-1) * dropout_multiplier(scores.shape, dropout, _seed())
        return (probs @ v.float()).to(q.dtype)


class SelfAttention(nn.Module):
    """Causal multi-head attention, GPT-Neo flavour: no bias on q/k/v, and no 1/sqrt(d) scale."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        h = config.hidden_size
        self.n_heads = config.n_heads
        self.q_proj = nn.Linear(h, h, bias=False)
        self.k_proj = nn.Linear(h, h, bias=False)
        self.v_proj = nn.Linear(h, h, bias=False)
        self.out_proj = nn.Linear(h, h, bias=True)
        self.attn_dropout = config.attn_dropout
        self.resid_dropout = Dropout(config.resid_dropout)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, h = x.shape
        return x.view(b, t, self.n_heads, h // self.n_heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None,
                kv_cache: KVCache | None, layer: int) -> torch.Tensor:
        q, k, v = (self._split_heads(proj(x)) for proj in (self.q_proj, self.k_proj, self.v_proj))
        if kv_cache is not None:
            k, v = kv_cache.update(layer, k, v)
        dropout = self.attn_dropout if self.training else 0.0
        if mask is None and _cpu_dropout(q, dropout):
            y = dropout_attention(q, k, v, dropout)
        else:
            # Without a mask the causal flag alone lets SDPA pick its fast (flash) kernels.
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                               dropout_p=dropout, scale=1.0)
        y = y.transpose(1, 2).reshape(x.shape)
        return self.resid_dropout(self.out_proj(y))

    def selected(self, x: torch.Tensor, kept: KeptPositions) -> torch.Tensor:
        """Output at the kept positions only, [N, hidden]: their queries against every earlier key."""
        b, t, h = x.shape
        rows = x.gather(1, kept.positions.unsqueeze(-1).expand(-1, -1, h))
        q = self._split_heads(self.q_proj(rows))
        k, v = self._split_heads(self.k_proj(x)), self._split_heads(self.v_proj(x))
        visible = (torch.arange(t, device=x.device) <= kept.positions.unsqueeze(-1)).unsqueeze(1)
        y = _row_attention(q, k, v, visible, self.attn_dropout if self.training else 0.0)
        y = y.transpose(1, 2)[kept.valid].reshape(-1, h)
        return self.resid_dropout(self.out_proj(y))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.hidden_size, config.mlp_size)
        self.c_proj = nn.Linear(config.mlp_size, config.hidden_size)
        self.dropout = Dropout(config.resid_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # GPT-Neo's "gelu_new" is the tanh approximation.
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    """Pre-LayerNorm transformer block."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = SelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None,
                kv_cache: KVCache | None, layer: int) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask, kv_cache, layer)
        return x + self.mlp(self.ln_2(x))

    def selected(self, x: torch.Tensor, kept: KeptPositions) -> torch.Tensor:
        """The block's output at the kept positions only, [N, hidden] (keys and values still use all)."""
        x = x[kept.mask] + self.attn.selected(self.ln_1(x), kept)
        return x + self.mlp(self.ln_2(x))


class GPTNeo(nn.Module):
    """Decoder-only LM: embeddings -> blocks -> final LayerNorm; `lm_head` is separate."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.hidden_size)
        self.wpe = nn.Embedding(config.n_positions, config.hidden_size)
        self.drop = Dropout(config.embed_dropout)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.apply(_init_weights)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None,
                kv_cache: KVCache | None = None, output_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states [B, T, H] after the final LayerNorm.

        `position_ids` default to 0..T-1 (continuing after the cache's prefix).
        `attention_mask` (bool, True = real token) is only needed for LEFT padding; it covers
        every key, i.e. [B, cache.length + T] when a cache is given. Right padding needs no
        mask: causal attention already keeps real tokens from seeing the pads after them.
        `output_mask` (bool [B, T], training): return only ``hidden[output_mask]``, [N, H]; the
        last block then computes queries, attention rows and MLP for those positions alone.
        """
        if output_mask is not None and (kv_cache is not None or attention_mask is not None):
            raise ValueError("output_mask is for training: it takes no kv_cache and no attention_mask")
        past = kv_cache.length if kv_cache is not None else 0
        t = input_ids.shape[1]
        if position_ids is None:
            position_ids = torch.arange(past, past + t, device=input_ids.device).unsqueeze(0)
        x = self.drop(self.wte(input_ids) + self.wpe(position_ids))
        mask = None
        if attention_mask is not None or kv_cache is not None:
            mask = _attention_mask(attention_mask, past, t, input_ids.device)
        # Selecting positions inside a compiled graph would break it (data-dependent shapes):
        # compiled, every position is computed and the selection comes last.
        selective = output_mask is not None and not torch.compiler.is_compiling()
        for layer, block in enumerate(self.h[:len(self.h) - selective]):
            x = block(x, mask, kv_cache, layer)
        if selective:
            return self.ln_f(self.h[-1].selected(x, KeptPositions.of(output_mask)))
        if kv_cache is not None:
            kv_cache.advance(t)
        hidden = self.ln_f(x)
        return hidden if output_mask is None else hidden[output_mask]

    def lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over the vocabulary; the output matrix is the (tied) token embedding."""
        return F.linear(hidden, self.wte.weight)

    def new_kv_cache(self, batch_size: int, max_len: int, device: torch.device | str | None = None,
                     dtype: torch.dtype | None = None) -> KVCache:
        """An empty cache on the model's device and dtype unless told otherwise."""
        weight = self.wte.weight
        return KVCache(self.config, batch_size, max_len, device or weight.device, dtype or weight.dtype)

    def num_parameters(self) -> int:
        """Trainable parameters, the tied embedding counted once."""
        return sum(p.numel() for p in self.parameters())


def _attention_mask(key_mask: torch.Tensor | None, past: int, t: int, device: torch.device) -> torch.Tensor:
    """Boolean mask [B|1, 1, T, past+T]: causal, minus padded keys.

    Every query may always see itself, so pad rows never become all-masked: a fully masked
    row would give NaN, and NaN values leak into real tokens even at attention weight 0.
    """
    q_pos = torch.arange(past, past + t, device=device).unsqueeze(1)
    k_pos = torch.arange(past + t, device=device).unsqueeze(0)
    mask = k_pos <= q_pos
    if key_mask is None:
        return mask
    if key_mask.shape[1] != past + t:
        raise ValueError(f"attention_mask covers {key_mask.shape[1]} positions, expected {past + t}")
    return mask & (key_mask[:, None, None, :].bool() | (k_pos == q_pos))


def _init_weights(module: nn.Module) -> None:
    """GPT-Neo / Hugging Face initialisation: N(0, 0.02) weights, zero biases, unit LayerNorm."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
