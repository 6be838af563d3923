"""Constrained sampling: every completion is a well-formed expression over the problem's own primitives."""

import pytest
import torch

from sr_lightning.constrained import ExpressionGrammar, grammar_for
from sr_lightning.data.tokenizer import SRTokenizer
from sr_lightning.decoding import sample_shared
from sr_lightning.evaluation.guided_search import ComparisonSettings, run_one
from sr_lightning.model import GPTNeo, ModelConfig
from sr_lightning.sr.expression import parse
from sr_lightning.sr.primitives import Primitives
from sr_lightning.sr.problems import named_problems
from sr_lightning.task import OneStepTask

TOKENIZER = SRTokenizer.default()
PROMPT = TOKENIZER.encode("<|endoftext|><CONTEXT>generation: 0 | 3 variables<POPULATION>x0 <FITNESS>-1.00000<TARGET>")


def stepped(grammar: ExpressionGrammar, state, text: str):
    """The state after ``text`` read character by character; None once the language refuses it."""
    for char in text:
        state = grammar.step(state, char)
        if state is None:
            return None
    return state


def accepts(grammar: ExpressionGrammar, text: str) -> bool:
    state = stepped(grammar, grammar.start(), text)
    return state is not None and state.complete


def test_the_grammar_is_the_printed_language_over_the_problems_primitives():
    grammar = ExpressionGrammar(TOKENIZER, 2, ("*", "+"), ("sin",), (1.0, 2.0), max_size=7, max_depth=2)
    for text in ("x0", "x1", "2.0", "(x0 * x1)", "sin((x0 + 1.0))", "((x0 * x0) + x1)"):
        assert accepts(grammar, text), text
    for text in ("x2", "3.0", "(x0 - x1)", "(x0*x1)", "cos(x0)", "(x0 + x1", "x0 x1", "(((x0 + x0) + x0) + x0)"):
        assert not accepts(grammar, text), text  # foreign symbol, spacing, unclosed, trailing, too deep
    assert not accepts(grammar, "((x0 + x0) + (x0 + sin(x1)))")  # 8 nodes > max_size 7


@pytest.mark.parametrize("seed", range(3))
def test_every_constrained_sample_of_a_random_model_parses_within_the_limits(seed):
    torch.manual_seed(seed)
    model = GPTNeo(ModelConfig(vocab_size=TOKENIZER.vocab_size, n_positions=256, hidden_size=32, n_layers=1,
                               n_heads=2)).eval()
    with torch.no_grad():
        model.wte.weight.mul_(20)  # sharper, more varied logits than the initialisation's
    grammar = grammar_for(TOKENIZER, 3, ("*", "+", "-"), ("sin",), (1.0,), 9, 4)
    samples = sample_shared(model, [PROMPT], 200, eos_id=TOKENIZER.eos_id, pad_id=TOKENIZER.pad_id,
                            max_new_tokens=24, temperature=1.5, grammars=[grammar],
                            generators=[torch.Generator().manual_seed(seed)])[0]
    allowed = Primitives(3, frozenset({"*", "+", "-", "sin"}), frozenset({1.0}))
    sizes = set()
    for tokens in samples:
        expr = parse(TOKENIZER.decode(tokens))  # raises on anything ill-formed
        assert allowed.admits(expr) and expr.size <= 9 and expr.depth <= 4
        sizes.add(expr.size)
    assert len(sizes) > 2  # not only leaves: the mask leaves the model its choices


def test_a_short_budget_still_closes_every_expression():
    torch.manual_seed(0)
    model = GPTNeo(ModelConfig(vocab_size=TOKENIZER.vocab_size, n_positions=256, hidden_size=32, n_layers=1,
                               n_heads=2)).eval()
    grammar = grammar_for(TOKENIZER, 3, ("*", "+", "-"), (), (1.0,), 25, 10)
    for budget in (3, 6, 10):
        samples = sample_shared(model, [PROMPT], 50, eos_id=TOKENIZER.eos_id, pad_id=TOKENIZER.pad_id,
                                max_new_tokens=budget, temperature=2.0, grammars=[grammar])[0]
        for tokens in samples:
            parse(TOKENIZER.decode(tokens))
            assert len(tokens) < budget  # room was left for end-of-text


def test_constrained_greedy_equals_unconstrained_greedy_when_that_is_valid(scripted_model):
    kwargs = {"eos_id": TOKENIZER.eos_id, "pad_id": TOKENIZER.pad_id, "max_new_tokens": 20, "temperature": 0.0}
    grammar = grammar_for(TOKENIZER, 2, ("*", "+", "-"), (), (1.0,), 25, 10)
    valid = scripted_model(TOKENIZER, "(x0 * x1)")  # a first-order script: each token once
    free = sample_shared(valid, [PROMPT], 2, **kwargs)
    assert sample_shared(valid, [PROMPT], 2, grammars=[grammar], **kwargs) == free
    assert TOKENIZER.decode(free[0][0]) == "(x0 * x1)"
    broken = scripted_model(TOKENIZER, "((x0 * x7")  # a foreign variable, never closed
    fixed = sample_shared(broken, [PROMPT], 1, grammars=[grammar], **kwargs)[0][0]
    assert parse(TOKENIZER.decode(fixed)).size <= 25


def test_a_constrained_search_uses_every_proposal(scripted_model):
    problem = named_problems()["bivariate_sum"]
    settings = ComparisonSettings(generations=4, population_size=6, proposals=3, constrained=True)
    task_model = scripted_model(TOKENIZER, ")")  # never an expression unconstrained
    task = OneStepTask(TOKENIZER, 1000)
    result = run_one(problem, "neural", 0, settings, task_model, task)
    assert result.proposals == (result.generations - 1) * 3 and result.well_formed == result.proposals
    free = run_one(problem, "neural", 0, ComparisonSettings(generations=4, population_size=6, proposals=3),
                   task_model, task)
    assert free.well_formed == 0


def test_the_trie_walk_allows_exactly_the_tokens_a_per_token_walk_allows():
    """Each token's text stepped on its own from the state: the definition the trie walk must meet."""
    grammar = ExpressionGrammar(TOKENIZER, 3, ("*", "+", "-"), (), (1.0,), max_size=9, max_depth=3)
    texts = [None if i in set(TOKENIZER.ids.values()) else TOKENIZER.decode([i]) for i in range(TOKENIZER.vocab_size)]
    states, frontier = [grammar.start()], [grammar.start()]
    while frontier and len(states) < 60:  # breadth-first over reachable states
        state = frontier.pop(0)
        for after in grammar._costs(state)[1].values():
            if after not in states:
                states.append(after)
                frontier.append(after)
    assert len(states) >= 60
    for state in states:
        costs, following = grammar._costs(state)
        for token, text in enumerate(texts):
            after = stepped(grammar, state, text) if text else None
            if after is not None:
                assert costs[token] == grammar.cost(after) and following[token] == after
            else:
                assert costs[token] == (0 if token == grammar.eos_id and state.complete else -1)
