"""The CPU dropout kernels: mask rate and values, and chunked attention against the plain formula."""

import pytest
import torch

from sr_lightning import cpu_dropout as D


def test_dropout_multiplier_rate_and_values():
    factor = D.dropout_multiplier((200, 500), 0.1, seed=7)
    assert factor.unique().tolist() == [0.0, pytest.approx(65536 / (65536 - 6554))]  # 6554 / 65536 drop
    assert abs((factor == 0).double().mean().item() - 0.1) < 0.005
    assert torch.equal(factor, D.dropout_multiplier((200, 500), 0.1, seed=7))
    assert not torch.equal(factor, D.dropout_multiplier((200, 500), 0.1, seed=8))


@pytest.mark.parametrize("query_block, chunk_elements", [(8, 200), (128, 1 << 22)])
def test_cpu_dropout_attention_matches_the_plain_formula(monkeypatch, query_block, chunk_elements):
    monkeypatch.setattr(D, "QUERY_BLOCK", query_block)
    monkeypatch.setattr(D, "CHUNK_ELEMENTS", chunk_elements)
    torch.manual_seed(0)
    rows, t, d, p, seed = 6, 37, 8, 0.3, 1234
    q, k, v = (torch.randn(rows, t, d, dtype=torch.float64, requires_grad=True) for _ in range(3))
    out = D._DropoutAttention.apply(q, k, v, p, seed)
    factor = torch.zeros(rows, t, t)  # the masks the chunks draw, laid out over the full score matrix
    for index, c in enumerate(D._chunks(q.shape)):
        factor[c.r0:c.r1, c.q0:c.q1, :c.q1] = D.dropout_multiplier((c.r1 - c.r0, c.q1 - c.q0, c.q1), p, seed + index)
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    expected = (torch.softmax((q @ k.transpose(1, 2)).masked_fill(~causal, float("-inf")), -1) * factor) @ v
    assert torch.allclose(out, expected, atol=1e-12)
    grad = torch.randn_like(out)
    for ours, reference in zip(torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(expected, (q, k, v), grad)):
        assert torch.allclose(ours, reference, atol=1e-12)
    assert (factor[:, causal] == 0).double().mean().item() == pytest.approx(p, abs=0.03)
