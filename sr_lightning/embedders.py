"""Point embedders: a problem's data points as the vectors the model reads before its tokens.

The original conditions its LM on the data (SPEC section 10): an embedder turns the points
``X`` [B, n, d], ``y`` [B, n] (``mask`` [B, n] marks real points) into ``prefix_len`` vectors of
the model's width, which `GPTNeo.forward(prefix=...)` puts before the tokens. Two kinds:

- `E2EPointEmbedder`: exactly the original's, so its checkpoints reproduce.
- `SetPointEmbedder`: the improvement: normalised, mask-aware, invariant to the order of the
  points, and 16 prefix vectors instead of 64.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

NORM_EPS = 1e-6  # a constant feature's spread, so normalising it gives zeros instead of NaN


def point_features(X: Tensor, y: Tensor, max_vars: int) -> Tensor:
    """[B, n, max_vars + 1]: X zero-padded or cut to ``max_vars`` columns, then y."""
    b, n, d = X.shape
    columns = X[..., :max_vars] if d >= max_vars else torch.cat([X, X.new_zeros(b, n, max_vars - d)], dim=-1)
    return torch.cat([columns, y.unsqueeze(-1)], dim=-1)


class E2EPointEmbedder(nn.Module):
    """The original's ``e2e`` embedder: the first ``max_points`` points (zero rows when fewer), 11 numbers
    each (X padded or cut to 10 variables, then y), through Linear(11, 512) -> ReLU -> Linear(512, hidden).

    No normalisation and no use of the mask (padding points are zero rows, as there); the order of the
    points matters. Parameter names match the original's ``input_embedder.mlp.{0,2}.*``.
    """

    def __init__(self, hidden_size: int, max_points: int = 64, max_vars: int = 10, mlp_hidden: int = 512):
        super().__init__()
        self.max_points, self.max_vars = max_points, max_vars
        self.mlp = nn.Sequential(nn.Linear(max_vars + 1, mlp_hidden), nn.ReLU(), nn.Linear(mlp_hidden, hidden_size))

    @property
    def prefix_len(self) -> int:
        return self.max_points

    def forward(self, X: Tensor, y: Tensor, mask: Tensor | None = None) -> Tensor:
        features = point_features(X, y, self.max_vars)[:, :self.max_points]
        if mask is not None:
            features = features * mask[:, :self.max_points, None].to(features.dtype)
        missing = self.max_points - features.shape[1]
        if missing > 0:
            features = torch.cat([features, features.new_zeros(features.shape[0], missing, features.shape[2])], dim=1)
        return self.mlp(features)


def normalised(features: Tensor, mask: Tensor) -> Tensor:
    """Each example's features standardised over its real points (mean 0, spread 1 per column)."""
    weights = mask.unsqueeze(-1).to(features.dtype)
    count = weights.sum(dim=1, keepdim=True).clamp(min=1.0)
    mean = (features * weights).sum(dim=1, keepdim=True) / count
    spread = (((features - mean) * weights) ** 2).sum(dim=1, keepdim=True).div(count).sqrt()
    return (features - mean) / (spread + NORM_EPS) * weights


class SetPointEmbedder(nn.Module):
    """Points as a set: per-example normalisation, a point MLP, a mask-aware transformer encoder over the
    points, then ``prefix_len`` learned queries attend to them (PMA pooling), projected to the model's
    width with a LayerNorm. Invariant to the order of the points and to padding."""

    def __init__(self, hidden_size: int, prefix_len: int = 16, max_vars: int = 10, width: int = 128,
                 layers: int = 2, heads: int = 4, dropout: float = 0.0):
        super().__init__()
        self.max_vars = max_vars
        self.point_mlp = nn.Sequential(nn.Linear(max_vars + 1, width), nn.GELU(), nn.Linear(width, width))
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.queries = nn.Parameter(torch.randn(prefix_len, width) * 0.02)
        self.pool = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.out = nn.Sequential(nn.Linear(width, hidden_size), nn.LayerNorm(hidden_size))

    @property
    def prefix_len(self) -> int:
        return self.queries.shape[0]

    def forward(self, X: Tensor, y: Tensor, mask: Tensor | None = None) -> Tensor:
        mask = torch.ones(y.shape, dtype=torch.bool, device=y.device) if mask is None else mask.bool()
        points = self.point_mlp(normalised(point_features(X, y, self.max_vars), mask))
        padding = ~mask
        points = self.encoder(points, src_key_padding_mask=padding)
        queries = self.queries.unsqueeze(0).expand(points.shape[0], -1, -1)
        pooled, _ = self.pool(queries, points, points, key_padding_mask=padding, need_weights=False)
        return self.out(pooled)
