"""Point embedders (SPEC section 10) and the model reading their prefix before the tokens."""

import pytest
import torch

from sr_lightning.decoding import generate
from sr_lightning.embedders import E2EPointEmbedder, SetPointEmbedder
from sr_lightning.model import GPTNeo, ModelConfig

pytestmark = pytest.mark.usefixtures("one_thread")
HIDDEN = 32


def e2e_by_hand(embedder: E2EPointEmbedder, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SPEC section 10 spelled out for one example: 64 rows of (x0..x9, y), zeros past the data."""
    rows = []
    for i in range(64):
        row = [0.0] * 11
        if i < X.shape[0]:
            for j in range(min(10, X.shape[1])):
                row[j] = float(X[i, j])
            row[10] = float(y[i])
        rows.append(row)
    first, second = embedder.mlp[0], embedder.mlp[2]
    hidden = torch.relu(torch.tensor(rows) @ first.weight.T + first.bias)
    return hidden @ second.weight.T + second.bias


@pytest.mark.parametrize("n, d", [(5, 2), (80, 12)])  # fewer points and variables than the slots; more of both
def test_e2e_is_the_originals_formula(n, d):
    torch.manual_seed(0)
    embedder = E2EPointEmbedder(HIDDEN)
    X, y = torch.randn(2, n, d), torch.randn(2, n)
    out = embedder(X, y, torch.ones(2, n, dtype=torch.bool))
    assert out.shape == (2, 64, HIDDEN) and embedder.prefix_len == 64
    for b in range(2):
        assert torch.allclose(out[b], e2e_by_hand(embedder, X[b], y[b]), atol=1e-5)
    assert [name for name, _ in embedder.named_parameters()] == ["mlp.0.weight", "mlp.0.bias", "mlp.2.weight",
                                                                 "mlp.2.bias"]  # the original's keys


def test_set_embedder_ignores_point_order_padding_and_scale():
    torch.manual_seed(0)
    embedder = SetPointEmbedder(HIDDEN).eval()
    X, y = torch.randn(1, 20, 3), torch.randn(1, 20)
    mask = torch.ones(1, 20, dtype=torch.bool)
    with torch.no_grad():
        out = embedder(X, y, mask)
        order = torch.randperm(20)
        shuffled = embedder(X[:, order], y[:, order], mask)
        padded = embedder(torch.cat([X, torch.full((1, 7, 3), 99.0)], 1), torch.cat([y, torch.full((1, 7), -5.0)], 1),
                          torch.cat([mask, torch.zeros(1, 7, dtype=torch.bool)], 1))
        scaled = embedder(X * 1000.0 + 3.0, y * 0.001, mask)
    assert out.shape == (1, 16, HIDDEN) and embedder.prefix_len == 16
    assert torch.allclose(out, shuffled, atol=1e-5) and torch.allclose(out, padded, atol=1e-5)
    assert torch.allclose(out, scaled, atol=2e-3)  # float32 standardisation of values near 1,000


def tiny_model() -> GPTNeo:
    torch.manual_seed(1)
    return GPTNeo(ModelConfig(vocab_size=50, n_positions=64, hidden_size=HIDDEN, n_layers=2, n_heads=4,
                              embed_dropout=0.0, attn_dropout=0.0, resid_dropout=0.0)).eval()


def test_the_prefix_comes_first_and_only_token_states_come_back():
    model = tiny_model()
    ids, prefix = torch.randint(0, 50, (2, 7)), torch.randn(2, 5, HIDDEN)
    with torch.no_grad():
        hidden = model(ids, prefix=prefix)
        positions = torch.arange(12)
        x = torch.cat([prefix, model.wte(ids)], 1) + model.wpe(positions)  # the original's inputs_embeds
        for block in model.h:
            x = block(x, None, None, 0)
        expected = model.ln_f(x)[:, 5:]
        mask = torch.zeros(2, 7, dtype=torch.bool)
        mask[0, 3:], mask[1, 6] = True, True
        selected = model(ids, prefix=prefix, output_mask=mask)  # the training path: last block on targets only
    assert hidden.shape == (2, 7, HIDDEN) and torch.allclose(hidden, expected, atol=1e-5)
    assert torch.allclose(selected, hidden[mask], atol=1e-5)


def test_generation_with_a_prefix_and_cache_equals_uncached_and_one_at_a_time():
    model = tiny_model()
    prompts = [[3, 4, 5, 6], [7, 8], [9, 10, 11]]
    prefixes = torch.randn(3, 4, HIDDEN)
    kwargs = {"eos_id": 0, "pad_id": 1, "max_new_tokens": 6}
    cached = generate(model, prompts, prefixes=prefixes, **kwargs)
    uncached = generate(model, prompts, prefixes=prefixes, use_cache=False, **kwargs)
    alone = [generate(model, [p], prefixes=prefixes[i:i + 1], **kwargs)[0] for i, p in enumerate(prompts)]
    assert cached == uncached == alone
    assert cached != generate(model, prompts, **kwargs)  # the prefix changes what the model writes
