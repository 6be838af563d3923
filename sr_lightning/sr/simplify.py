"""When two expressions are the same function: exact for polynomials, on points otherwise.

The search's default language (``+ - *`` over variables and constants) is polynomials, and a
polynomial has one canonical form: the sum of its monomials with their coefficients. `polynomial`
expands an expression into it (``((x0 + 1.0) * x0)`` and ``((x0 * x0) + x0)`` both become
``{(0, 0): 1.0, (0,): 1.0}``), so `same_function` is an exact symbolic match there. An expression
with another operator (``sin``, ``/`` ...) is compared on points instead: equal predictions on the
problem's points and on random ones.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from .expression import Binary, Constant, Expr, Variable, predict

Monomial = tuple[int, ...]  # sorted variable indices, a repeat per power: x0^2 x1 = (0, 0, 1)
Polynomial = dict[Monomial, float]
_TOLERANCE = 1e-9


def _clean(terms: dict[Monomial, float]) -> Polynomial:
    return {m: c for m, c in terms.items() if abs(c) > _TOLERANCE}


def polynomial(expr: Expr) -> Polynomial | None:
    """The canonical monomial expansion of ``expr``; None when it has an operator other than + - *."""
    if isinstance(expr, Variable):
        return {(expr.index,): 1.0}
    if isinstance(expr, Constant):
        return _clean({(): expr.value})
    if not isinstance(expr, Binary) or expr.op not in "+-*":
        return None
    left, right = (polynomial(child) for child in expr.children)
    if left is None or right is None:
        return None
    terms: dict[Monomial, float] = defaultdict(float)
    if expr.op == "*":
        for a, ca in left.items():
            for b, cb in right.items():
                terms[tuple(sorted(a + b))] += ca * cb
    else:
        sign = 1.0 if expr.op == "+" else -1.0
        for m, c in left.items():
            terms[m] += c
        for m, c in right.items():
            terms[m] += sign * c
    return _clean(terms)


def _same_polynomial(a: Polynomial, b: Polynomial) -> bool:
    return a.keys() == b.keys() and all(abs(a[m] - b[m]) <= _TOLERANCE * max(1.0, abs(a[m])) for m in a)


def same_function(a: Expr, b: Expr, X: np.ndarray | None = None, seed: int = 0) -> bool:
    """Whether ``a`` and ``b`` are the same function: their polynomials, else their values on ``X`` and on
    256 standard-normal points over as many variables as either uses."""
    pa, pb = polynomial(a), polynomial(b)
    if pa is not None and pb is not None:
        return _same_polynomial(pa, pb)
    n_vars = max([n.index + 1 for e in (a, b) for n in e.nodes() if isinstance(n, Variable)], default=1)
    points = [np.random.default_rng(seed).standard_normal((256, n_vars))]
    if X is not None and X.shape[1] >= n_vars:
        points.append(X)
    for P in points:
        ya, yb = predict(a, P), predict(b, P)
        if not np.allclose(ya, yb, rtol=1e-7, atol=1e-9, equal_nan=True):
            return False
    return True
