"""GPT-Neo-architecture language model in one readable file (SPEC section 5).

The forward pass returns hidden states, not logits: training gathers the few target
positions first and runs `lm_head` on them alone, which skips most of the work of a
50k-vocabulary head; with `output_mask` the last block, too, runs on those positions alone.
Module names follow Hugging Face's GPT-Neo (`wte`, `h.{i}.ln_1`, ...) so that `interop` maps
weights by a plain rename.

CPU training takes the dropout paths of `cpu_dropout` (cheap masks, chunked attention); GPUs and
compiled models use SDPA.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .cpu_dropout import Dropout, cpu_dropout, dropout_attention, dropout_multiplier, mask_seed
from .embedders import E2EPointEmbedder, SetPointEmbedder

EMBEDDERS = ("none", "e2e", "set")

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
    input_embedder: str = "none"
    """What the model reads of the problem's points before the tokens: ``none``, ``e2e`` (the original's)
    or ``set`` (see `embedders`)."""
    embedder_max_points: int = 64
    """Points an example brings (the first ones); ``e2e`` reads exactly this many (zero rows when fewer)."""
    embedder_prefix_len: int = 16
    """Prefix vectors of the ``set`` embedder (``e2e`` has one per point)."""

    def __post_init__(self) -> None:
        if self.input_embedder not in EMBEDDERS:
            raise ValueError(f"input_embedder must be one of {EMBEDDERS}, got {self.input_embedder!r}")
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

    def place(self, rows: torch.Tensor, part: KVCache, start: int) -> None:
        """Write ``part`` (a cache of ``len(rows)`` rows) into these rows from position ``start`` on."""
        end = start + part.length
        self.k[:, rows, :, start:end] = part.k[:, :, :, :part.length]
        self.v[:, rows, :, start:end] = part.v[:, :, :, :part.length]

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep these rows, in this order: a row given k times gives k samples its prefill; a finished row
        left out stops costing."""
        self.k = self.k.index_select(1, rows)
        self.v = self.v.index_select(1, rows)



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
    if not cpu_dropout(q, dropout):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=visible, dropout_p=dropout, scale=1.0)
    with torch.autocast("cpu", enabled=False):  # fp32 scores, like SDPA's math path
        scores = (q.float() @ k.float().transpose(-1, -2)).masked_fill(~visible, float("-inf"))
        probs = torch.softmax(scores, dim=-1) * dropout_multiplier(scores.shape, dropout, mask_seed())
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
        if mask is None and cpu_dropout(q, dropout):
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
        self.input_embedder = _embedder(config)
        self.apply(_init_weights)

    @property
    def prefix_len(self) -> int:
        """Positions the point prefix takes before the tokens (0 for a model that reads no points)."""
        return 0 if self.input_embedder is None else self.input_embedder.prefix_len

    def point_prefix(self, batch: dict) -> torch.Tensor | None:
        """The prefix vectors of a batch's points (``points_X``, ``points_y``, ``points_mask``); None
        for a model that reads no points."""
        if self.input_embedder is None:
            return None
        device = self.wte.weight.device
        return self.input_embedder(*(batch[key].to(device) for key in ("points_X", "points_y", "points_mask")))

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, kv_cache: KVCache | None = None,
                output_mask: torch.Tensor | None = None, prefix: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states [B, T, H] of the tokens, after the final LayerNorm.

        `prefix` [B, P, H] (a point embedder's vectors) goes before the tokens, as the original's
        ``inputs_embeds``: it takes positions 0..P-1 and the tokens P..; no hidden state of it is
        returned. Everything below counts the prefix as positions like any token.
        `position_ids` default to 0..P+T-1 (continuing after what the cache holds).
        `attention_mask` (bool, True = real) is only needed for LEFT padding; it covers every key,
        i.e. [B, cache.length + P + T] with a cache. Right padding needs no mask: causal attention
        already keeps real tokens from seeing the pads after them.
        `output_mask` (bool [B, T], training): return only ``hidden[output_mask]``, [N, H]; the
        last block then computes queries, attention rows and MLP for those positions alone.
        """
        if output_mask is not None and (kv_cache is not None or attention_mask is not None):
            raise ValueError("output_mask is for training: it takes no kv_cache and no attention_mask")
        past = kv_cache.length if kv_cache is not None else 0
        if self.input_embedder is not None and prefix is None and past == 0:
            raise ValueError("this model reads each problem's points: pass prefix=model.point_prefix(batch)")
        embeds = self.wte(input_ids)
        p = 0 if prefix is None else prefix.shape[1]
        if prefix is not None:
            embeds = torch.cat([prefix.to(embeds.dtype), embeds], dim=1)
            if output_mask is not None:
                output_mask = torch.cat([output_mask.new_zeros(output_mask.shape[0], p), output_mask], dim=1)
        t = embeds.shape[1]
        if position_ids is None:
            position_ids = torch.arange(past, past + t, device=input_ids.device).unsqueeze(0)
        x = self.drop(embeds + self.wpe(position_ids))
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
        return hidden[:, p:] if output_mask is None else hidden[output_mask]

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


def _embedder(config: ModelConfig) -> nn.Module | None:
    if config.input_embedder == "e2e":
        return E2EPointEmbedder(config.hidden_size, config.embedder_max_points)
    if config.input_embedder == "set":
        return SetPointEmbedder(config.hidden_size, config.embedder_prefix_len)
    return None


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
