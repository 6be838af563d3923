"""CPU dropout kernels for training (measured in BENCHMARKS.md).

With attention dropout, CPU SDPA falls back to a slow math kernel, and `bernoulli_` masks cost
more than the matmuls they mask. Here masks come from a cheap generator (`dropout_multiplier`) and
attention runs chunked, causal blocks only, recomputed in backward (`dropout_attention`). The model
takes these paths on CPU only (`cpu_dropout`); GPUs and compiled models use SDPA's own dropout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


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


def cpu_dropout(x: torch.Tensor, p: float) -> bool:
    """Whether dropout on `x` takes the CPU paths of this module (not on GPUs, nor inside torch.compile)."""
    return 0 < p < 1 and x.device.type == "cpu" and not torch.compiler.is_compiling()


def mask_seed() -> int:
    """A seed for numpy's generator drawn from torch's, so `torch.manual_seed` fixes every mask."""
    return int(torch.randint(2**62, (1,)))


class Dropout(nn.Dropout):
    """`nn.Dropout` whose CPU masks come from `dropout_multiplier` (same result, a fraction of the time)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and cpu_dropout(x, self.p)):
            return super().forward(x)
        return x * dropout_multiplier(x.shape, self.p, mask_seed()).to(x.dtype)


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
        out = _DropoutAttention.apply(q, k, v, p, mask_seed())
    return out.view(b, h, t, d).to(dtype)
