"""Proposals that always parse: a prefix-validity mask over the tokenizer, per decoding step.

The printed expression language is small: an operand is a variable ``x0 .. x{d-1}``, an allowed
constant (``1.0``), ``(E op E)`` with an allowed binary operator between single spaces, or
``f(E)`` with an allowed unary operator. `ExpressionGrammar` runs each token's text through a
character automaton of that language (a stack of what must come next), so it works for any
tokenizer whose tokens decode to text: a token is allowed in a state when all its characters
are, and when what is still owed afterwards (operands, operators, closing parentheses, the
end-of-text token) fits in the tokens left, counting one token per character (every byte is a
token of a byte-level BPE). Trees stay within ``max_size`` nodes and ``max_depth`` levels. After
the expression only end-of-text is allowed. Each state's token transitions are computed once and
cached, so a search pays for a state the first time it meets it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from .data.format import format_constant
from .data.tokenizer import SRTokenizer

OPERAND, OPERATOR, CLOSE = "E", "OP", ")"


class TokenTrie:
    """The tokens' texts as a character trie: ``tokens`` end at this node, ``children`` go on by a character."""

    def __init__(self, texts: list[str | None] = ()) -> None:
        self.tokens: list[int] = []
        self.children: dict[str, TokenTrie] = {}
        for token, text in enumerate(texts):
            if text:
                self.add(token, text)

    def add(self, token: int, text: str) -> None:
        node = self
        for char in text:
            node = node.children.setdefault(char, TokenTrie())
        node.tokens.append(token)


@dataclass(frozen=True)
class State:
    """Where a completion is: the terminal being read (its alternatives: the text still to come and what
    finishing it does; None between terminals) at its nesting ``level``, the stack of what comes after it
    (top last, each with its level), and the nodes started so far."""

    alternatives: frozenset[tuple[str, str]] | None
    level: int
    stack: tuple[tuple[str, int], ...]
    nodes: int

    @property
    def complete(self) -> bool:
        return not self.stack and (self.alternatives is None or ("", "leaf") in self.alternatives)


class ExpressionGrammar:
    """The canonical printed expressions over one problem's primitives, as a token mask."""

    def __init__(self, tokenizer: SRTokenizer, n_vars: int, binary_ops: tuple[str, ...],
                 unary_ops: tuple[str, ...], constants: tuple[float, ...], max_size: int = 25, max_depth: int = 10):
        self.max_size, self.max_depth = max_size, max_depth
        self.leaves = tuple(f"x{i}" for i in range(n_vars)) + tuple(format_constant(c) for c in constants)
        self.unary = tuple(f"{op}(" for op in unary_ops)
        self.operators = frozenset((f" {op} ", "op") for op in binary_ops)
        shortest = min(len(leaf) for leaf in self.leaves)
        # Characters owed at least: per pending stack entry, and per terminal kind for what it pushes.
        self.owed = {OPERAND: shortest, OPERATOR: 3, CLOSE: 1}
        self.pushed = {"leaf": 0, "close": 0, "op": 0, "unary": shortest + 1, "binary": 2 * shortest + 4}
        special = set(tokenizer.ids.values())
        self.vocab_size = tokenizer.vocab_size
        self.trie = TokenTrie([None if i in special else tokenizer.decode([i]) for i in range(self.vocab_size)])
        self.eos_id = tokenizer.eos_id
        self._costs = lru_cache(maxsize=None)(self._token_costs)

    # -- the automaton ------------------------------------------------------------------
    def start(self) -> State:
        return State(None, 0, ((OPERAND, 0),), 0)

    def _operand(self, level: int, owed: int, nodes: int) -> frozenset[tuple[str, str]]:
        """The ways an operand at nesting ``level`` may begin, ``owed`` operands still to come after it and
        ``nodes`` started before it, within the size and depth limits."""
        ways = {(leaf, "leaf") for leaf in self.leaves}
        if level + 1 <= self.max_depth and nodes + 1 + owed + 1 <= self.max_size:
            ways |= {(name, "unary") for name in self.unary}
        if level + 1 <= self.max_depth and nodes + 1 + owed + 2 <= self.max_size:
            ways.add(("(", "binary"))
        return frozenset(ways)

    def _begin(self, state: State) -> State | None:
        """Start reading the next terminal the stack asks for."""
        if not state.stack:
            return None
        (kind, level), rest = state.stack[-1], state.stack[:-1]
        if kind == OPERAND:
            owed = sum(k == OPERAND for k, _ in rest)
            return State(self._operand(level, owed, state.nodes), level, rest, state.nodes + 1)
        return State(self.operators if kind == OPERATOR else frozenset({(")", "close")}), level, rest, state.nodes)

    def _finish(self, kind: str, state: State) -> State:
        """The state after a terminal of ``kind`` is read whole: an operator node pushes its operands."""
        level, stack = state.level, state.stack
        if kind == "binary":
            stack = stack + ((CLOSE, level), (OPERAND, level + 1), (OPERATOR, level), (OPERAND, level + 1))
        elif kind == "unary":
            stack = stack + ((CLOSE, level), (OPERAND, level + 1))
        return State(None, level, stack, state.nodes)

    def step(self, state: State, char: str) -> State | None:
        """The state after ``char``; None when the language does not allow it here."""
        if state.alternatives is None:
            state = self._begin(state)
            if state is None:
                return None
        going = frozenset((text[1:], kind) for text, kind in state.alternatives if text[:1] == char)
        if going:
            done = [kind for text, kind in going if text == ""]
            if len(going) == 1 and done:
                return self._finish(done[0], state)
            return State(going, state.level, state.stack, state.nodes)
        if ("", "leaf") in state.alternatives:  # x1 was whole: the character belongs to what follows
            return self.step(self._finish("leaf", state), char)
        return None

    def cost(self, state: State) -> int:
        """Characters still owed at least (the end-of-text token included): an upper bound on tokens."""
        now = 0 if state.alternatives is None else min(len(t) + self.pushed[k] for t, k in state.alternatives)
        return now + sum(self.owed[kind] for kind, _ in state.stack) + 1

    # -- tokens ---------------------------------------------------------------------------
    def _token_costs(self, state: State) -> tuple[torch.Tensor, dict[int, State]]:
        """Per token, what is owed after it (-1: not allowed), and the states the allowed ones lead to.

        Tokens are walked as a trie of their texts: a shared prefix is stepped once, and a prefix the
        language refuses rules out every token that starts with it."""
        costs = torch.full((self.vocab_size,), -1, dtype=torch.long)
        following: dict[int, State] = {}
        if state.complete:
            costs[self.eos_id] = 0
        pending = [(self.trie, state)]
        while pending:
            node, before = pending.pop()
            for char, child in node.children.items():
                after = self.step(before, char)
                if after is None:
                    continue
                if child.tokens:
                    owed = self.cost(after)
                    for token in child.tokens:
                        costs[token], following[token] = owed, after
                if child.children:
                    pending.append((child, after))
        return costs, following

    def allowed(self, state: State, remaining: int) -> torch.Tensor:
        """Bool mask of the tokens allowed with ``remaining`` tokens left (this one included)."""
        costs, _ = self._costs(state)
        return (costs >= 0) & (costs <= remaining - 1)

    def next(self, state: State, token: int) -> State:
        if token == self.eos_id:
            return state
        return self._costs(state)[1][token]


class RowStates:
    """The grammar state of every row of a decoding batch (rows of one prompt share its grammar)."""

    def __init__(self, grammars: list[ExpressionGrammar]) -> None:
        self.grammars = grammars
        self.states = [grammar.start() for grammar in grammars]

    def mask(self, rows: list[int], remaining: int, device: torch.device) -> torch.Tensor:
        """[len(rows), vocab] allowed tokens; a row left with none may still end (end-of-text)."""
        masks = torch.stack([self.grammars[r].allowed(self.states[r], remaining) for r in rows])
        stuck = ~masks.any(dim=1)
        if stuck.any():
            masks[stuck, self.grammars[0].eos_id] = True
        return masks.to(device)

    def advance(self, rows: list[int], tokens: list[int]) -> None:
        for row, token in zip(rows, tokens):
            self.states[row] = self.grammars[row].next(self.states[row], token)


@lru_cache(maxsize=64)
def grammar_for(tokenizer: SRTokenizer, n_vars: int, binary_ops: tuple[str, ...], unary_ops: tuple[str, ...],
                constants: tuple[float, ...], max_size: int, max_depth: int) -> ExpressionGrammar:
    """One grammar (and its cache of states) per tokenizer and primitives, shared by every run that uses them."""
    return ExpressionGrammar(tokenizer, n_vars, binary_ops, unary_ops, constants, max_size, max_depth)
