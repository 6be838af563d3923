"""What a problem lets an expression be built from: its variables, operators and constants.

An expression that parses is not necessarily one of the problem's: ``x7`` in a two-variable
problem, a ``/`` the search never offered, or a lone ``14122`` where the only constant is ``1.0``
all parse. `Primitives.admits` tells them apart; the one-step context line names the primitives
(``generation: 0 | 3 variables | ops: *,+,- | constants: 1.0``), so every example carries them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .expression import Binary, Constant, Expr, Unary, Variable

_FIELDS = re.compile(r"(\d+) variables \| ops: ([^|]*?) \| constants: ([^|]*?)\s*(?:\||$)")  # rich: | STATS...


@dataclass(frozen=True)
class Primitives:
    """Variables ``x0 .. x{n_vars-1}``, the operator names and the constant values a problem allows."""

    n_vars: int
    ops: frozenset[str]
    constants: frozenset[float]

    @classmethod
    def from_context(cls, context: str | None) -> Primitives | None:
        """The primitives a context line names; None when there is no such line (generic prompts)."""
        match = _FIELDS.search(context or "")
        if match is None:
            return None
        n_vars, ops, constants = match.groups()
        try:
            values = frozenset(float(c) for c in constants.split(",") if c.strip())
        except ValueError:
            return None
        return cls(int(n_vars), frozenset(op for op in ops.split(",") if op), values)

    def admits(self, expr: Expr) -> bool:
        """Every node of ``expr`` is one of these variables, operators or constants."""
        return all(self._admits_node(node) for node in expr.nodes())

    def _admits_node(self, node: Expr) -> bool:
        if isinstance(node, Variable):
            return node.index < self.n_vars
        if isinstance(node, Constant):
            return node.value in self.constants
        if isinstance(node, (Unary, Binary)):
            return node.op in self.ops
        return False
