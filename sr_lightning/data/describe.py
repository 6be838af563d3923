"""The text alternative to a point embedder: statistics of the problem's y appended to the context line.

The original's ``rich`` context (SPEC section 10) appends
`` | STATS: range=[min,max] | mean=... | var=... | skew=... | monotonic=... | zeros=... | complexity=...``
with 3 decimals. The SPEC names the statistics, not their formulas; ours, all over the problem's
points ordered by their first variable (the order a plot of y against x0 shows):

- ``range``, ``mean``, ``var`` (population variance), ``skew`` (Fisher's, 0 when y is constant);
- ``monotonic``: ``increasing`` or ``decreasing`` when every step of y along x0 goes one way
  (ties allowed), else ``no``;
- ``zeros``: how often y changes sign along x0 (its crossings of zero);
- ``complexity``: y's total variation along x0 over its range; 1.000 for a monotonic y, larger the
  more it turns back (0 for a constant y).
"""

from __future__ import annotations

import numpy as np

CONTEXT_KINDS = ("basic", "rich")


def _fixed(value: float) -> str:
    return f"{value:.3f}"


def monotonic(y_along: np.ndarray) -> str:
    steps = np.diff(y_along)
    if steps.size and np.all(steps >= 0):
        return "increasing"
    if steps.size and np.all(steps <= 0):
        return "decreasing"
    return "no"


def sign_changes(y_along: np.ndarray) -> int:
    signs = np.sign(y_along)
    signs = signs[signs != 0]
    return int(np.count_nonzero(signs[1:] != signs[:-1]))


def complexity(y_along: np.ndarray) -> float:
    spread = float(y_along.max() - y_along.min())
    return float(np.abs(np.diff(y_along)).sum()) / spread if spread > 0 else 0.0


def stats_suffix(X: np.ndarray, y: np.ndarray) -> str:
    """`` | STATS: ...`` of y (n points, X is n x d), appended to the context line by the ``rich`` context."""
    y = np.asarray(y, dtype=np.float64)
    if y.size == 0:
        raise ValueError("no points to describe")
    X = np.asarray(X, dtype=np.float64).reshape(len(y), -1)
    y_along = y[np.argsort(X[:, 0], kind="stable")] if X.shape[1] else y
    std = float(y.std())
    skew = float(np.mean(((y - y.mean()) / std) ** 3)) if std > 0 else 0.0
    parts = [f"range=[{_fixed(y.min())},{_fixed(y.max())}]", f"mean={_fixed(y.mean())}", f"var={_fixed(y.var())}",
             f"skew={_fixed(skew)}", f"monotonic={monotonic(y_along)}", f"zeros={sign_changes(y_along)}",
             f"complexity={_fixed(complexity(y_along))}"]
    return " | STATS: " + " | ".join(parts)
