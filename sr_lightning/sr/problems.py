"""Target problems for BasicSR: random expressions (training data) and a fixed named benchmark set.

Expression ids: named problems own the range 900-999 (``bivariate_sum`` = 900 and
``polynomial_product`` = 901, as in the original's fixtures); generated problems are numbered
from `GENERATED_ID_BASE` = 1000 upwards, so the two never collide however many are made.

The ``problems.json`` sidecar maps ``"<expression_id>"`` to ``{"name", "seed", "X", "y",
"expression"}`` (the original's layout plus ``expression``, which its fixture lacks).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Iterable

import numpy as np

from sr_lightning.sr.expression import MAX_ABS_PREDICTION, parse, predict
from sr_lightning.sr.search import SearchConfig, TreeSampler

NAMED_ID_BASE = 900
GENERATED_ID_BASE = 1000


@dataclass
class Problem:
    """Data to fit and, when known, the expression that made it."""

    expression_id: int
    name: str
    expression: str | None  # None when the source did not record it (the original's fixture)
    X: np.ndarray  # (n, d) float64
    y: np.ndarray  # (n,) float64
    seed: int

    @property
    def n_vars(self) -> int:
        return self.X.shape[1]


@dataclass(frozen=True)
class ProblemConfig:
    """How random target problems are drawn (the original: 1-10 variables, + - *, 5d-200 points)."""

    min_vars: int = 1
    max_vars: int = 10
    binary_ops: tuple[str, ...] = ("*", "+", "-")
    unary_ops: tuple[str, ...] = ()
    constants: tuple[float, ...] = (1.0,)
    max_depth: int = 4  # depth limit of the target expression
    max_size: int = 15  # node limit of the target expression (BasicSR's own limit is 25)
    points_per_var: int = 5  # at least this many points per variable ...
    max_points: int = 200  # ... and at most this many points
    max_attempts: int = 1000  # draws before giving up on a degenerate configuration


def generated_id(index: int) -> int:
    """Expression id of the ``index``-th generated problem."""
    return GENERATED_ID_BASE + index


def _standardised(X: np.ndarray) -> np.ndarray:
    std = X.std(axis=0)
    return (X - X.mean(axis=0)) / np.where(std > 0, std, 1.0)


def _degenerate(y: np.ndarray) -> bool:
    """Targets the search cannot meaningfully fit: non-finite, out of the valid range, or constant."""
    if not np.all(np.isfinite(y)) or np.max(np.abs(y)) >= MAX_ABS_PREDICTION:
        return True
    return float(np.ptp(y)) <= 1e-9 * max(1.0, float(np.max(np.abs(y))))


def random_problem(expression_id: int, seed: int, config: ProblemConfig = ProblemConfig()) -> Problem:
    """A random noise-free problem, deterministic for ``seed``: standardised X, y = f(X) for a random f."""
    rng = np.random.default_rng(seed)
    n_vars = int(rng.integers(config.min_vars, config.max_vars + 1))
    n_points = int(rng.integers(min(config.points_per_var * n_vars, config.max_points), config.max_points + 1))
    X = _standardised(rng.standard_normal((n_points, n_vars)))
    sampler = TreeSampler(
        SearchConfig(binary_ops=config.binary_ops, unary_ops=config.unary_ops, constants=config.constants),
        n_vars, rng)
    for _ in range(config.max_attempts):
        tree = sampler.tree(config.max_depth)
        if tree.size > config.max_size:
            continue
        y = predict(tree, X)
        if not _degenerate(y):
            return Problem(expression_id, str(tree), str(tree), X, y, seed)
    raise RuntimeError(f"no non-degenerate target in {config.max_attempts} draws (seed {seed})")


@dataclass(frozen=True)
class NamedSpec:
    """A benchmark problem: X ~ U(-bound, bound) from ``RandomState(seed)``, as the original drew it."""

    name: str
    expression: str
    n_vars: int
    bound: float = 3.0
    n_points: int = 50
    seed: int = 7


NAMED_SPECS: tuple[NamedSpec, ...] = (
    NamedSpec("bivariate_sum", "((x0 * x0) + (x1 * x1))", 2),
    NamedSpec("polynomial_product", "((x0 + 1.0) * (x1 + 2.0))", 2, bound=2.0),
    NamedSpec("trivariate_sum", "(((x0 * x0) + (x1 * x1)) + (x2 * x2))", 3),
    NamedSpec("discriminant", "((x1 * x1) - ((4.0 * x0) * x2))", 3),
    NamedSpec("scaled_square", "(8.0 * (x0 * x0))", 1),
    NamedSpec("quadratic", "(((x0 * x0) + x0) + 1.0)", 1),
    NamedSpec("x0_x1_squared", "(x0 * (x1 * x1))", 2),
    NamedSpec("triple_product", "((x0 * x1) * x2)", 3),
)


def named_problem(expression_id: int, spec: NamedSpec) -> Problem:
    X = np.random.RandomState(spec.seed).uniform(-spec.bound, spec.bound, (spec.n_points, spec.n_vars))
    return Problem(expression_id, spec.name, spec.expression, X, predict(parse(spec.expression), X), spec.seed)


def named_problems() -> dict[str, Problem]:
    """The fixed benchmark set by name; ids 900, 901, ... in `NAMED_SPECS` order."""
    return {spec.name: named_problem(NAMED_ID_BASE + i, spec) for i, spec in enumerate(NAMED_SPECS)}


# ---------------------------------------------------------------------------- sidecar


def _entry(problem: Problem) -> dict:
    return {"name": problem.name, "seed": problem.seed, "X": problem.X.tolist(), "y": problem.y.tolist(),
            "expression": problem.expression}


class ProblemsWriter:
    """Writes the sidecar one problem at a time, so a large dataset never holds all X/y in memory."""

    def __init__(self, path: str | Path) -> None:
        self._file: IO[str] = open(path, "w", encoding="utf-8")
        self._file.write("{")
        self._count = 0

    def add(self, problem: Problem) -> None:
        separator = ", " if self._count else ""
        self._file.write(f"{separator}{json.dumps(str(problem.expression_id))}: {json.dumps(_entry(problem))}")
        self._count += 1

    def close(self) -> None:
        self._file.write("}\n")
        self._file.close()

    def __enter__(self) -> ProblemsWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def save_problems(path: str | Path, problems: Iterable[Problem]) -> None:
    with ProblemsWriter(path) as writer:
        for problem in problems:
            writer.add(problem)


def load_problems(path: str | Path) -> dict[int, Problem]:
    """Problems of a sidecar (ours or the original's) by expression id."""
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    return {
        int(key): Problem(int(key), entry["name"], entry.get("expression"),
                          np.asarray(entry["X"], dtype=np.float64), np.asarray(entry["y"], dtype=np.float64),
                          entry["seed"])
        for key, entry in raw.items()
    }
