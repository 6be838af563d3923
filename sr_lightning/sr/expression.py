"""Expression trees of the BasicSR search: printer, parser, vectorised evaluation, fitness.

The printed form is the original's, character for character, because it is what the model
reads and writes: binary ``(L op R)`` fully parenthesised with single spaces, unary
``op(child)``, variables ``x0``, ``x1``..., constants as Python float reprs (``1.0``, ``-2.5``,
``1e-05``). ``str(parse(s)) == s`` for every printed expression.

Trees are immutable: mutation and crossover build new trees that share untouched subtrees,
so the elite and the parents never need defensive copies.

Numerical protections are the original's (its ``Node.evaluate``), kept so fitnesses match:

* ``a / b``: a denominator with ``|b| < 1e-10`` becomes ``+1e-10`` (sign dropped, as there).
* ``exp(z)``: ``z`` clipped to ``[-14, 14]`` (``exp(14) ~ 1.2e6``, just past the valid range).
* ``log(z)``: ``log(max(|z|, 1e-12))``; ``sqrt(z)``: ``sqrt(|z|)``.
* ``tan(z)``: ``z`` folded into ``[-pi/2, pi/2)``, output clipped to ``+-1e6``.
* ``inv(z)``: ``|z| < 1e-6`` becomes ``sign(z) * 1e-6`` (``+1e-6`` at zero).
* A variable index beyond the data's columns evaluates to NaN (the individual is invalid).

Anything still non-finite or beyond ``|y_hat| >= 1e6`` is masked out by `masked_mse`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np

BINARY_OPS: tuple[str, ...] = ("+", "-", "*", "/")
DIVISION_EPS = 1e-10
INV_EPS = 1e-6
EXP_CLIP = 14.0
LOG_FLOOR = 1e-12
TAN_CLIP = 1e6

MAX_ABS_PREDICTION = 1e6  # predictions at or beyond this magnitude do not count
MIN_VALID_POINTS = 3  # an individual needs at least max(3, int(0.5 * n)) counted points
MIN_VALID_FRACTION = 0.5
SIZE_PENALTY = 0.01  # fitness = -MSE - SIZE_PENALTY * size
INVALID_FITNESS = -1e10


def _divide(a, b):
    return a / np.where(np.abs(b) < DIVISION_EPS, DIVISION_EPS, b)


def _tan(z):
    return np.clip(np.tan((z + np.pi / 2) % np.pi - np.pi / 2), -TAN_CLIP, TAN_CLIP)


def _inv(z):
    small = np.abs(z) < INV_EPS
    return 1.0 / np.where(small, np.sign(z) * INV_EPS + (z == 0) * INV_EPS, z)


_BINARY_FUNCS: dict[str, Callable] = {
    "+": np.add,
    "-": np.subtract,
    "*": np.multiply,
    "/": _divide,
}

UNARY_FUNCS: dict[str, Callable] = {
    "abs": np.abs,
    "exp": lambda z: np.exp(np.clip(z, -EXP_CLIP, EXP_CLIP)),
    "log": lambda z: np.log(np.clip(np.abs(z), LOG_FLOOR, None)),
    "sqrt": lambda z: np.sqrt(np.abs(z)),
    "sin": np.sin,
    "cos": np.cos,
    "tan": _tan,
    "inv": _inv,
    "neg": np.negative,
    "pow2": lambda z: z * z,  # the original's names for square and cube
    "pow3": lambda z: z * z * z,
}


class ExpressionError(ValueError):
    """Text that is not an expression of the printed format (the message says where and why)."""


class Expr:
    """An immutable expression node.

    ``size`` is the node count, ``depth`` the longest root-to-leaf path (a leaf has depth 0).
    """

    __slots__ = ("size", "depth", "_text")
    children: tuple[Expr, ...] = ()

    def __init__(self) -> None:
        self.size = 1 + sum(c.size for c in self.children)
        self.depth = 1 + max(c.depth for c in self.children) if self.children else 0
        self._text: str | None = None

    def __str__(self) -> str:
        if self._text is None:
            self._text = self._render()
        return self._text

    def __repr__(self) -> str:
        return f"parse({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Expr) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def _render(self) -> str:
        raise NotImplementedError

    def evaluate(self, X: np.ndarray):
        """Raw values on the rows of ``X``: an array, or a scalar for a constant subtree (broadcasts)."""
        raise NotImplementedError

    def with_children(self, children: Sequence[Expr]) -> Expr:
        """The same operator over new children."""
        raise NotImplementedError

    def nodes(self) -> list[Expr]:
        """All subtrees in preorder; index ``i`` here is the ``index`` of `replace`."""
        out: list[Expr] = []
        stack: list[Expr] = [self]
        while stack:
            node = stack.pop()
            out.append(node)
            stack.extend(reversed(node.children))
        return out

    def replace(self, index: int, new: Expr) -> Expr:
        """A new tree with the preorder node ``index`` (and its subtree) replaced by ``new``."""
        if index == 0:
            return new
        offset = 1
        for i, child in enumerate(self.children):
            if index < offset + child.size:
                children = list(self.children)
                children[i] = child.replace(index - offset, new)
                return self.with_children(children)
            offset += child.size
        raise IndexError(f"node index {index} out of range for size {self.size}")


class Variable(Expr):
    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        if index < 0:
            raise ExpressionError(f"negative variable index {index}")
        self.index = index
        super().__init__()

    def _render(self) -> str:
        return f"x{self.index}"

    def evaluate(self, X: np.ndarray):
        if self.index >= X.shape[1]:
            return np.full(X.shape[0], np.nan)
        return X[:, self.index]

    def with_children(self, children: Sequence[Expr]) -> Expr:
        return self


class Constant(Expr):
    __slots__ = ("value",)

    def __init__(self, value: float) -> None:
        self.value = float(value)
        super().__init__()

    def _render(self) -> str:
        return repr(self.value)

    def evaluate(self, X: np.ndarray):
        return self.value

    def with_children(self, children: Sequence[Expr]) -> Expr:
        return self


class Unary(Expr):
    __slots__ = ("op", "children")

    def __init__(self, op: str, child: Expr) -> None:
        if op not in UNARY_FUNCS:
            raise ExpressionError(f"unknown unary operator {op!r}")
        self.op = op
        self.children = (child,)
        super().__init__()

    def _render(self) -> str:
        return f"{self.op}({self.children[0]})"

    def evaluate(self, X: np.ndarray):
        return UNARY_FUNCS[self.op](self.children[0].evaluate(X))

    def with_children(self, children: Sequence[Expr]) -> Expr:
        return Unary(self.op, *children)


class Binary(Expr):
    __slots__ = ("op", "children")

    def __init__(self, op: str, left: Expr, right: Expr) -> None:
        if op not in _BINARY_FUNCS:
            raise ExpressionError(f"unknown binary operator {op!r}")
        self.op = op
        self.children = (left, right)
        super().__init__()

    def _render(self) -> str:
        left, right = self.children
        return f"({left} {self.op} {right})"

    def evaluate(self, X: np.ndarray):
        left, right = self.children
        return _BINARY_FUNCS[self.op](left.evaluate(X), right.evaluate(X))

    def with_children(self, children: Sequence[Expr]) -> Expr:
        return Binary(self.op, *children)


# ---------------------------------------------------------------------------- parsing

_NUMBER = re.compile(r"-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_VARIABLE = re.compile(r"x(0|[1-9]\d*)")
_MAX_NESTING = 200  # deeper text is garbage, not an expression; keeps recursion bounded


class _Parser:
    """Recursive descent over the printed format; whitespace between tokens is tolerated."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, message: str) -> ExpressionError:
        return ExpressionError(f"{message} at position {self.pos} in {self.text!r}")

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def expect(self, char: str) -> None:
        self.skip_space()
        if not self.text.startswith(char, self.pos):
            found = self.text[self.pos] if self.pos < len(self.text) else "end of text"
            raise self.error(f"expected {char!r}, found {found!r}")
        self.pos += 1

    def whole(self) -> Expr:
        expr = self.operand(0)
        self.skip_space()
        if self.pos != len(self.text):
            raise self.error("unexpected trailing text")
        return expr

    def operand(self, nesting: int) -> Expr:
        if nesting > _MAX_NESTING:
            raise self.error("expression nested too deeply")
        self.skip_space()
        if self.pos >= len(self.text):
            raise self.error("unexpected end of text, expected an operand")
        if self.text[self.pos] == "(":
            return self.binary(nesting)
        number = _NUMBER.match(self.text, self.pos)
        if number:
            self.pos = number.end()
            return Constant(float(number.group()))
        name = _NAME.match(self.text, self.pos)
        if name:
            return self.named(name.group(), nesting)
        raise self.error(f"unexpected character {self.text[self.pos]!r}")

    def binary(self, nesting: int) -> Expr:
        self.pos += 1  # the "("
        left = self.operand(nesting + 1)
        self.skip_space()
        op = self.text[self.pos] if self.pos < len(self.text) else ""
        if op not in _BINARY_FUNCS:
            raise self.error(f"expected a binary operator {'/'.join(BINARY_OPS)}, found {op or 'end of text'!r}")
        self.pos += 1
        right = self.operand(nesting + 1)
        self.expect(")")
        return Binary(op, left, right)

    def named(self, name: str, nesting: int) -> Expr:
        variable = _VARIABLE.fullmatch(name)
        if variable:
            self.pos += len(name)
            return Variable(int(variable.group(1)))
        if name not in UNARY_FUNCS:
            raise self.error(f"unknown name {name!r}")
        self.pos += len(name)
        self.expect("(")
        child = self.operand(nesting + 1)
        self.expect(")")
        return Unary(name, child)


def parse(text: str) -> Expr:
    """Parse one printed expression; raises `ExpressionError` on anything else (trailing text included)."""
    if not isinstance(text, str):
        raise ExpressionError(f"expected a string, got {type(text).__name__}")
    return _Parser(text).whole()


def parse_first(text: str) -> Expr:
    """The expression at the start of ``text``, ignoring whatever follows it.

    Model completions run on past the expression (``<FITNESS>...``, a second expression);
    neural-guided search takes the first one, as the original did.
    """
    if not isinstance(text, str):
        raise ExpressionError(f"expected a string, got {type(text).__name__}")
    return _Parser(text).operand(0)


# ---------------------------------------------------------------------------- evaluation


def predict(expr: Expr, X: np.ndarray) -> np.ndarray:
    """Predictions of ``expr`` on ``X`` (n x d) as a float64 vector of length n; warnings silenced."""
    with np.errstate(all="ignore"):
        values = expr.evaluate(X)
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 0:
        return np.full(X.shape[0], float(values))
    return values


def masked_mse(y_pred: np.ndarray, y: np.ndarray) -> float:
    """The search's MSE: over finite predictions with ``|y_hat| < 1e6`` only; ``inf`` if too few count.

    "Too few" is fewer than ``max(3, int(0.5 * n))`` points (the original floors ``n / 2``).
    """
    valid = np.isfinite(y_pred) & (np.abs(y_pred) < MAX_ABS_PREDICTION)
    n_valid = int(np.count_nonzero(valid))
    if n_valid < max(MIN_VALID_POINTS, int(MIN_VALID_FRACTION * y.shape[0])):
        return float("inf")
    if n_valid == y.shape[0]:
        error = y - y_pred
    else:
        error = y[valid] - y_pred[valid]
    mse = float(np.mean(error**2))
    return mse if np.isfinite(mse) else float("inf")


def fitness_from_mse(mse: float, size: int) -> float:
    """``-MSE - 0.01 * size``, or `INVALID_FITNESS` (-1e10) for an invalid individual."""
    if not np.isfinite(mse):
        return INVALID_FITNESS
    return -mse - SIZE_PENALTY * size


def fitness(expr: Expr, X: np.ndarray, y: np.ndarray) -> float:
    """The original's fitness (higher is better)."""
    return fitness_from_mse(masked_mse(predict(expr, X), y), expr.size)


def mse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Plain mean squared error for evaluation; ``inf`` when any prediction is not finite."""
    error = np.asarray(y_true, dtype=np.float64) - np.asarray(y_pred, dtype=np.float64)
    with np.errstate(all="ignore"):
        value = float(np.mean(error**2))
    return value if np.isfinite(value) else float("inf")


def r2(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Coefficient of determination; ``-inf`` for non-finite predictions.

    A constant target has no variance to explain: R^2 is 1.0 for an exact fit there, else ``-inf``.
    """
    y_true = np.asarray(y_true, dtype=np.float64)
    ss_res = mse(y_true, y_pred) * y_true.size
    ss_tot = float(np.sum((y_true - y_true.mean()) ** 2))
    if not np.isfinite(ss_res):
        return float("-inf")
    if ss_tot == 0.0:
        return 1.0 if ss_res == 0.0 else float("-inf")
    return 1.0 - ss_res / ss_tot
