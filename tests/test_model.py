import math

import pytest
import torch
import torch.nn.functional as F

from sr_lightning.model import GPTNeo, ModelConfig

VOCAB = 97


def small_model(seed: int = 0, **overrides) -> GPTNeo:
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=VOCAB, n_positions=64, hidden_size=32, n_layers=2, n_heads=4, **overrides)
    return GPTNeo(config).eval()


def random_ids(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_tiny_preset_has_the_original_parameter_count():
    model = GPTNeo(ModelConfig.preset("tiny"))
    h, layers, vocab, positions = 256, 4, 50261, 2048
    per_layer = 2 * 2 * h + 3 * h * h + (h * h + h) + (h * 4 * h + 4 * h) + (4 * h * h + h)
    expected = vocab * h + positions * h + layers * per_layer + 2 * h
    assert model.num_parameters() == expected == 16_547_584
    assert round(model.num_parameters() / 1e6, 2) == 16.55


def test_presets_and_overrides():
    small = ModelConfig.preset("small")
    assert (small.hidden_size, small.n_layers, small.n_heads, small.n_positions, small.mlp_size) == (
        1024, 16, 16, 4096, 4096)
    micro = ModelConfig.preset("micro", vocab_size=100)
    assert (micro.hidden_size, micro.n_layers, micro.n_heads, micro.n_positions, micro.vocab_size) == (
        128, 2, 4, 1024, 100)
    with pytest.raises(ValueError, match="unknown preset"):
        ModelConfig.preset("huge")
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(hidden_size=30, n_heads=4)


def test_forward_shapes_and_tied_head():
    model = small_model()
    hidden = model(random_ids(3, 10))
    assert hidden.shape == (3, 10, 32)
    logits = model.lm_head(hidden)
    assert logits.shape == (3, 10, VOCAB)
    assert torch.allclose(logits, hidden @ model.wte.weight.T, atol=1e-6)
    assert len(list(model.parameters())) == len({id(p) for p in model.parameters()})


def test_initialisation_follows_gpt_neo():
    model = GPTNeo(ModelConfig.preset("micro", vocab_size=1000))
    assert abs(model.wte.weight.std().item() - 0.02) < 1e-3
    assert abs(model.h[0].mlp.c_fc.weight.std().item() - 0.02) < 1e-3
    assert torch.all(model.h[0].attn.out_proj.bias == 0)
    assert torch.all(model.h[0].ln_1.weight == 1) and torch.all(model.ln_f.bias == 0)
    assert model.h[0].attn.q_proj.bias is None and model.h[0].attn.k_proj.bias is None


def test_causal_later_tokens_do_not_change_earlier_states():
    model = small_model()
    ids = random_ids(1, 12)
    changed = ids.clone()
    changed[0, 7:] = (changed[0, 7:] + 1) % VOCAB
    a, b = model(ids), model(changed)
    assert torch.allclose(a[:, :7], b[:, :7], atol=1e-6)
    assert not torch.allclose(a[:, 7:], b[:, 7:], atol=1e-3)


def test_right_padding_leaves_real_positions_unchanged():
    model = small_model()
    ids = random_ids(1, 9)
    padded = torch.cat([ids, torch.zeros(1, 5, dtype=torch.long)], dim=1)
    assert torch.allclose(model(ids), model(padded)[:, :9], atol=1e-6)


def manual_gpt_neo(model: GPTNeo, ids: torch.Tensor) -> torch.Tensor:
    """Straight-line GPT-Neo forward with explicit softmax(q k^T) (no 1/sqrt(d) scale)."""
    cfg = model.config
    t = ids.shape[1]
    x = model.wte(ids) + model.wpe(torch.arange(t))
    causal = torch.tril(torch.ones(t, t, dtype=torch.bool))
    for block in model.h:
        a = block.attn
        y = F.layer_norm(x, (cfg.hidden_size,), block.ln_1.weight, block.ln_1.bias, cfg.layer_norm_eps)
        q, k, v = (p(y).view(1, t, cfg.n_heads, cfg.head_dim).transpose(1, 2) for p in (a.q_proj, a.k_proj, a.v_proj))
        scores = (q @ k.transpose(-1, -2)).masked_fill(~causal, float("-inf"))
        att = (scores.softmax(-1) @ v).transpose(1, 2).reshape(1, t, cfg.hidden_size)
        x = x + a.out_proj(att)
        y = F.layer_norm(x, (cfg.hidden_size,), block.ln_2.weight, block.ln_2.bias, cfg.layer_norm_eps)
        u = block.mlp.c_fc(y)
        gelu_new = 0.5 * u * (1 + torch.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u ** 3)))
        x = x + block.mlp.c_proj(gelu_new)
    return F.layer_norm(x, (cfg.hidden_size,), model.ln_f.weight, model.ln_f.bias, cfg.layer_norm_eps)


def test_matches_manual_unscaled_attention():
    model = small_model()
    with torch.no_grad():  # make the scores large, so a 1/sqrt(d) scale would show
        for block in model.h:
            block.attn.q_proj.weight.mul_(10)
        ids = random_ids(1, 11)
        expected = manual_gpt_neo(model, ids)
        assert torch.allclose(model(ids), expected, atol=1e-5)
        for block in model.h:  # and the test can tell a scaled model apart
            block.attn.q_proj.weight.div_(math.sqrt(model.config.head_dim))
        assert not torch.allclose(model(ids), expected, atol=1e-3)


def test_gathered_head_equals_full_head():
    model = small_model()
    ids = random_ids(2, 8)
    labels = torch.full_like(ids, -100)
    labels[0, 5:] = ids[0, 5:]
    labels[1, 2:4] = ids[1, 2:4]
    hidden = model(ids)
    gathered = model.lm_head(hidden[labels != -100])
    assert gathered.shape == (5, VOCAB)
    assert torch.allclose(gathered, model.lm_head(hidden)[labels != -100], atol=1e-6)


def test_kv_cache_forward_equals_full_forward():
    model = small_model()
    ids = random_ids(2, 10)
    full = model(ids)
    cache = model.new_kv_cache(batch_size=2, max_len=12)
    parts = [model(ids[:, :6], kv_cache=cache)]
    parts += [model(ids[:, i:i + 1], kv_cache=cache) for i in range(6, 10)]
    assert cache.length == 10
    assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-5)
    with pytest.raises(ValueError, match="KV cache holds 12"):
        model(ids[:, :3], kv_cache=cache)


def test_left_padding_with_mask_and_positions_matches_unpadded():
    model = small_model()
    ids = random_ids(1, 7)
    padded = torch.cat([torch.zeros(1, 4, dtype=torch.long), ids], dim=1)
    mask = torch.tensor([[False] * 4 + [True] * 7])
    positions = torch.tensor([[0] * 4 + list(range(7))])
    out = model(padded, position_ids=positions, attention_mask=mask)
    assert torch.isfinite(out).all()
    assert torch.allclose(out[:, 4:], model(ids), atol=1e-5)


def test_dropout_active_only_in_training():
    model = small_model(embed_dropout=0.5, attn_dropout=0.5, resid_dropout=0.5)
    ids = random_ids(1, 8)
    assert torch.equal(model(ids), model(ids))
    model.train()
    assert not torch.allclose(model(ids), model(ids))
