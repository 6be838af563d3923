import pytest
import torch

from sr_lightning.decoding import Sampling, generate, sample_shared
from sr_lightning.model import GPTNeo, ModelConfig

VOCAB, PAD, NO_EOS = 61, 0, -1
PROMPTS = [[5, 9, 13], [7], [3, 4, 5, 6, 7, 8, 9], [11, 12]]


@pytest.fixture(scope="module")
def model() -> GPTNeo:
    torch.manual_seed(0)
    model = GPTNeo(ModelConfig(vocab_size=VOCAB, n_positions=40, hidden_size=32, n_layers=2, n_heads=4))
    with torch.no_grad():  # larger weights than the 0.02 init: varied, position-dependent outputs
        for name, p in model.named_parameters():
            if p.dim() == 2 and name != "wte.weight":
                p.mul_(10)
    return model.eval()


def greedy_step_by_step(model: GPTNeo, prompt: list[int], n: int) -> list[int]:
    """Reference: argmax of the full, unpadded forward, one token at a time."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model.lm_head(model(torch.tensor([ids]))[0, -1]).argmax()))
    return ids[len(prompt):]


def test_greedy_matches_step_by_step_reference(model):
    out = generate(model, PROMPTS, eos_id=NO_EOS, pad_id=PAD, max_new_tokens=6)
    assert out == [greedy_step_by_step(model, p, 6) for p in PROMPTS]


def test_cached_and_uncached_greedy_agree_with_left_padding(model):
    cached = generate(model, PROMPTS, eos_id=NO_EOS, pad_id=PAD, max_new_tokens=10)
    uncached = generate(model, PROMPTS, eos_id=NO_EOS, pad_id=PAD, max_new_tokens=10, use_cache=False)
    assert cached == uncached
    assert all(len(o) == 10 for o in cached)
    assert len({t for o in cached for t in o}) > 10  # not a degenerate repeat-one-token model


def test_batched_equals_one_at_a_time_and_keeps_order(model):
    alone = [generate(model, [p], eos_id=NO_EOS, pad_id=PAD, max_new_tokens=8)[0] for p in PROMPTS]
    assert generate(model, PROMPTS, eos_id=NO_EOS, pad_id=PAD, max_new_tokens=8) == alone
    assert generate(model, PROMPTS, eos_id=NO_EOS, pad_id=PAD, max_new_tokens=8, batch_size=3) == alone


def test_stops_at_eos_and_excludes_it(model):
    free = generate(model, PROMPTS, eos_id=NO_EOS, pad_id=PAD, max_new_tokens=8)
    eos = free[0][3]  # the token prompt 0 would produce fourth
    out = generate(model, PROMPTS, eos_id=eos, pad_id=PAD, max_new_tokens=8)
    for row, free_row in zip(out, free):
        expected = free_row[:free_row.index(eos)] if eos in free_row else free_row
        assert row == expected
    assert len(out[0]) <= 3


def test_stops_at_the_last_position(model):
    out = generate(model, [[1] * 38], eos_id=NO_EOS, pad_id=PAD, max_new_tokens=10)
    assert len(out[0]) == 2
    with pytest.raises(ValueError, match="exceeds"):
        generate(model, [[1] * 41], eos_id=NO_EOS, pad_id=PAD)


def test_sampling_is_deterministic_with_a_seeded_generator(model):
    def sample(seed: int) -> list[list[int]]:
        return generate(model, PROMPTS, eos_id=NO_EOS, pad_id=PAD, max_new_tokens=12, temperature=1.5,
                        generator=torch.Generator().manual_seed(seed))

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)


def test_top_k_1_is_greedy(model):
    greedy = generate(model, PROMPTS, eos_id=NO_EOS, pad_id=PAD, max_new_tokens=6)
    top1 = generate(model, PROMPTS, eos_id=NO_EOS, pad_id=PAD, max_new_tokens=6, temperature=1.0, top_k=1,
                    generator=torch.Generator().manual_seed(0))
    assert top1 == greedy


def test_restores_training_mode(model):
    model.train()
    generate(model, PROMPTS[:1], eos_id=NO_EOS, pad_id=PAD, max_new_tokens=2)
    assert model.training
    model.eval()


def test_shared_prefill_greedy_equals_each_sample_decoded_on_its_own(model):
    shared = sample_shared(model, PROMPTS, 3, eos_id=NO_EOS, pad_id=PAD, max_new_tokens=10, temperature=0.0)
    alone = generate(model, PROMPTS, eos_id=NO_EOS, pad_id=PAD, max_new_tokens=10)
    assert shared == [[out] * 3 for out in alone]


def test_shared_prefill_with_a_point_prefix_equals_uncached_decoding():
    from tests.test_embedders import HIDDEN, tiny_model

    model = tiny_model()
    prompts, prefixes = [[3, 4, 5, 6], [7, 8]], torch.randn(2, 4, HIDDEN)
    shared = sample_shared(model, prompts, 2, eos_id=0, pad_id=1, max_new_tokens=6, temperature=0.0,
                           prefixes=prefixes)
    uncached = generate(model, prompts, eos_id=0, pad_id=1, max_new_tokens=6, prefixes=prefixes, use_cache=False)
    assert shared == [[out] * 2 for out in uncached]


def test_each_prompt_samples_from_its_own_generator(model):
    def samples(prompts, seeds):
        generators = [torch.Generator().manual_seed(s) for s in seeds]
        return sample_shared(model, prompts, 4, eos_id=NO_EOS, pad_id=PAD, max_new_tokens=8, temperature=1.0,
                             generators=generators)

    together = samples(PROMPTS[:2], [1, 2])
    assert together[0] == samples(PROMPTS[:1], [1])[0]  # the other prompt draws from its own generator
    assert together[1] == samples(PROMPTS[1:2], [2])[0]
    assert len({tuple(s) for s in together[0]}) > 1  # the samples of one prompt differ
    with pytest.raises(ValueError, match="2 generators for 1 prompts"):
        samples(PROMPTS[:1], [1, 2])


def test_inverse_cdf_sampling_follows_the_distribution_and_top_k():
    probs = torch.tensor([0.1, 0.2, 0.0, 0.7])
    logits = probs.log().expand(200_000, -1)
    uniform = torch.rand(200_000, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(Sampling(1.0).pick(logits, uniform), minlength=4) / 200_000
    assert torch.allclose(counts, probs, atol=0.005) and counts[2] == 0  # never a token of probability 0
    top2 = torch.bincount(Sampling(1.0, top_k=2).pick(logits, uniform), minlength=4) / 200_000
    assert torch.allclose(top2, torch.tensor([0.0, 2 / 9, 0.0, 7 / 9]), atol=0.005)
    assert torch.equal(Sampling(0.0).pick(logits[:3], None), torch.tensor([3, 3, 3]))


def test_a_rows_samples_do_not_depend_on_when_the_other_rows_finish(model):
    """Finished rows leave the batch part-way (a quarter at a time); the rows left draw their own numbers."""
    def samples(prompts, seeds):
        return sample_shared(model, prompts, 6, eos_id=7, pad_id=PAD, max_new_tokens=30, temperature=3.0,
                             generators=[torch.Generator().manual_seed(s) for s in seeds])

    together = samples(PROMPTS, [1, 2, 3, 4])
    lengths = [len(out) for rows in together for out in rows]
    assert min(lengths) < 10 and max(lengths) == 30  # some rows ended early, some ran to the limit
    assert [samples([prompt], [seed])[0] for prompt, seed in zip(PROMPTS, [1, 2, 3, 4])] == together


def test_passes_of_similar_length_give_each_prompt_the_same_samples(model):
    def samples(per_pass):
        return sample_shared(model, PROMPTS, 3, eos_id=NO_EOS, pad_id=PAD, max_new_tokens=8, temperature=1.0,
                             generators=[torch.Generator().manual_seed(s) for s in range(4)],
                             prompts_per_pass=per_pass)

    assert samples(2) == samples(None)  # shorter prompts decode in their own pass, their rows unchanged
