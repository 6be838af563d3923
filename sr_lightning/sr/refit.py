"""Constants fitted to a problem's points: what an end-to-end model's guess is worth once its numbers move.

A direct model writes an expression's structure and its constants; the structure is the hard part.
`refit_constants` keeps the structure and moves every constant to lower the MSE on (X, y) by
Levenberg-Marquardt with a finite-difference Jacobian (a handful of constants, a few hundred points:
cheap in numpy), starting from the written values.
"""

from __future__ import annotations

import numpy as np

from .expression import Constant, Expr, mse, predict


def _constant_nodes(expr: Expr) -> list[int]:
    return [i for i, node in enumerate(expr.nodes()) if isinstance(node, Constant)]


def with_constants(expr: Expr, where: list[int], values: np.ndarray) -> Expr:
    """``expr`` with the constants at preorder indices ``where`` set to ``values`` (sizes unchanged)."""
    for index, value in zip(where, values):
        expr = expr.replace(index, Constant(float(value)))
    return expr


def refit_constants(expr: Expr, X: np.ndarray, y: np.ndarray, iterations: int = 30) -> Expr:
    """``expr`` with its constants fitted to (X, y); ``expr`` itself when it has none or nothing improves."""
    where = _constant_nodes(expr)
    if not where:
        return expr
    nodes = expr.nodes()
    params = np.array([nodes[i].value for i in where], dtype=np.float64)

    def residual(p: np.ndarray) -> np.ndarray:
        return predict(with_constants(expr, where, p), X) - y

    current, damping = residual(params), 1e-3
    best = float(np.mean(current**2)) if np.all(np.isfinite(current)) else np.inf
    for _ in range(iterations):
        if not np.isfinite(best):
            break
        steps = 1e-6 * np.maximum(1.0, np.abs(params))
        jacobian = np.stack([(residual(params + np.eye(len(params))[k] * steps[k]) - current) / steps[k]
                             for k in range(len(params))], axis=1)
        if not np.all(np.isfinite(jacobian)):
            break
        normal = jacobian.T @ jacobian
        gradient = jacobian.T @ current
        try:
            delta = np.linalg.solve(normal + damping * np.diag(np.diag(normal) + 1e-12), -gradient)
        except np.linalg.LinAlgError:
            break
        trial = residual(params + delta)
        error = float(np.mean(trial**2)) if np.all(np.isfinite(trial)) else np.inf
        if error < best:
            params, current, best, damping = params + delta, trial, error, damping / 3
            if best < 1e-24:
                break
        else:
            damping *= 10
            if damping > 1e8:
                break
    fitted = with_constants(expr, where, params)
    return fitted if mse(y, predict(fitted, X)) <= mse(y, predict(expr, X)) else expr
