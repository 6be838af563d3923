"""The LightningModule's loss: target-only, gathered before the head, equal to a hand computation."""

import math

import pytest
import torch
import torch.nn.functional as F

from sr_lightning.data.batches import Encoded, collate
from sr_lightning.metrics import OneStepMetrics
from sr_lightning.module import OneStepLM, warmup_cosine
from sr_lightning.teacher_forcing import teacher_forced


@pytest.fixture(scope="module")
def lm() -> OneStepLM:
    torch.manual_seed(0)
    module = OneStepLM(preset="micro", model_overrides={"hidden_size": 32, "n_layers": 1, "n_heads": 2,
                                                         "n_positions": 64})
    return module.eval()


@pytest.fixture(scope="module")
def batch(lm):
    t = lm.tokenizer
    return collate([Encoded([0, 1, 20, 21, 22, 2, 23], [t.target_id, 30, 31, 0], "a:1"),
                    Encoded([0, 1, 24, 2, 25], [t.target_id, 32, 0], "a:2")], pad_id=0)


def hand_loss(logits: torch.Tensor, batch: dict) -> torch.Tensor:
    """Mean NLL over target tokens and the closing eos, from full-vocabulary logits at every position."""
    total, count = 0.0, 0
    for row, start in enumerate(batch["target_positions"].tolist()):
        ids = batch["input_ids"][row]
        length = int((batch["labels"][row] != -100).nonzero().max()) + 2
        for t in range(start, length - 1):
            total += -F.log_softmax(logits[row, t], -1)[ids[t + 1]]
            count += 1
    return total / count


def test_masked_loss_equals_hand_computation(lm, batch):
    with torch.no_grad():
        nll_sum, _, targets = lm._train_nll(batch)
        full_logits = lm.model.lm_head(lm.model(batch["input_ids"]))
    assert targets.numel() == 3 + 2
    assert torch.allclose(nll_sum / targets.numel(), hand_loss(full_logits, batch), atol=1e-5)


def test_gathered_head_equals_full_head_at_labelled_positions(lm, batch):
    with torch.no_grad():
        _, gathered, _ = lm._train_nll(batch)
        full = lm.model.lm_head(lm.model(batch["input_ids"]))
    assert torch.allclose(gathered, full[batch["labels"] != -100], atol=1e-6)


def test_prompt_positions_do_not_change_the_loss(lm, batch):
    """Perturbing the logits at prompt positions leaves the loss as it is."""
    with torch.no_grad():
        logits = lm.model.lm_head(lm.model(batch["input_ids"]))
    prompt = batch["labels"] == -100
    noisy = logits + prompt.unsqueeze(-1) * torch.randn_like(logits) * 100
    assert torch.allclose(hand_loss(noisy, batch), hand_loss(logits, batch))
    labelled = ~prompt
    assert torch.allclose(F.cross_entropy(noisy[labelled], batch["labels"][labelled]),
                          F.cross_entropy(logits[labelled], batch["labels"][labelled]))


def test_label_free_batch_gives_zero_loss_with_a_graph(lm):
    empty = collate([], pad_id=0)
    nll_sum, _, targets = lm._train_nll(empty)
    assert targets.numel() == 0 and nll_sum.item() == 0.0 and nll_sum.requires_grad


def test_validation_metrics_count_first_tokens_once_per_example(lm, batch):
    metrics = OneStepMetrics(lm.model.config.vocab_size)
    with torch.no_grad():
        metrics.update(teacher_forced(lm.model, batch))
    assert metrics["first_token_acc"].denominator.item() == 2
    assert metrics["first_token_majority"].counts.sum().item() == 2
    assert metrics["loss"].denominator.item() == 5


def test_checkpoint_hparams_carry_the_tokenizer(lm):
    rebuilt = OneStepLM(**{**lm.hparams})
    assert rebuilt.tokenizer.to_str() == lm.tokenizer.to_str()
    assert rebuilt.model.config == lm.model.config


def test_warmup_then_cosine():
    assert warmup_cosine(0, 10, 110, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 110, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(60, 10, 110, 0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)))
    assert warmup_cosine(500, 10, 110, 0.1) == pytest.approx(0.1)
