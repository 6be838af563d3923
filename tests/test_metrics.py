import math
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from sr_lightning.metrics import (
    FirstTokenAccuracy,
    FirstTokenMajorityBaseline,
    TargetNLL,
    TargetTokenNLL,
    TokenAccuracy,
    TokenHistogram,
    majority_share,
    predicted_tokens,
)

V = 4
# argmax per row: 0, 2, 1, 1 -> against TARGETS: right, right, wrong, right = 3/4
LOGITS = torch.tensor([
    [3.0, 0.0, 0.0, 0.0],
    [0.0, 0.0, 5.0, 1.0],
    [0.0, 2.0, 1.0, 0.0],
    [1.0, 4.0, 0.0, 0.0],
])
TARGETS = torch.tensor([0, 2, 2, 1])
EMPTY_LOGITS = torch.zeros(0, V)
EMPTY_IDS = torch.zeros(0, dtype=torch.long)


def test_predicted_tokens_from_logits_or_ids():
    assert predicted_tokens(LOGITS).tolist() == [0, 2, 1, 1]
    assert predicted_tokens(torch.tensor([[1.0, 1.0, 0.0, 0.0]])).tolist() == [0]  # tie -> lowest id
    assert predicted_tokens(TARGETS) is TARGETS
    with pytest.raises(ValueError, match="expected logits"):
        predicted_tokens(torch.tensor([0.5, 1.5]))
    with pytest.raises(ValueError, match="expected logits"):
        predicted_tokens(torch.zeros(2, 3, V))


@pytest.mark.parametrize("cls", [TokenAccuracy, FirstTokenAccuracy])
def test_accuracy_on_hand_made_logits(cls):
    metric = cls()
    metric.update(LOGITS, TARGETS)
    assert metric.compute().item() == pytest.approx(0.75)

    from_ids = cls()
    from_ids.update(torch.tensor([0, 2, 1, 1]), TARGETS)
    assert from_ids.compute().item() == pytest.approx(0.75)


def test_accuracy_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="must be"):
        TokenAccuracy().update(LOGITS, TARGETS[:3])
    with pytest.raises(ValueError, match="must be"):
        TokenAccuracy().update(LOGITS[0:1], TARGETS[0:1].view(1, 1))


@pytest.mark.parametrize("cls", [TokenAccuracy, FirstTokenAccuracy])
def test_accuracy_split_into_updates_equals_one_update(cls):
    whole, split = cls(), cls()
    whole.update(LOGITS, TARGETS)
    for rows in (slice(0, 1), slice(1, 1), slice(1, 3), slice(3, 4)):  # includes an empty slice
        split.update(LOGITS[rows], TARGETS[rows])
    assert split.compute().item() == whole.compute().item() == pytest.approx(0.75)


def test_empty_updates_change_nothing_and_empty_compute_is_nan():
    acc = TokenAccuracy()
    acc.update(EMPTY_LOGITS, EMPTY_IDS)
    assert math.isnan(acc.compute().item())
    acc.update(LOGITS[:2], TARGETS[:2])
    acc.update(EMPTY_LOGITS, EMPTY_IDS)
    assert acc.compute().item() == pytest.approx(1.0)
    assert (acc.numerator.item(), acc.denominator.item()) == (2.0, 2.0)

    nll = TargetTokenNLL()
    nll.update(torch.tensor(0.0), 0)
    assert math.isnan(nll.compute().item())

    hist, baseline = TokenHistogram(V), FirstTokenMajorityBaseline(V)
    hist.update(EMPTY_IDS)
    baseline.update(EMPTY_IDS)
    assert hist.compute().tolist() == [0, 0, 0, 0]
    assert math.isnan(baseline.compute().item())


def test_compute_without_any_update_is_nan_not_an_error():
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert math.isnan(FirstTokenAccuracy().compute().item())
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert math.isnan(FirstTokenMajorityBaseline(V).compute().item())


def test_nll_per_token_and_per_target():
    # Uniform logits: every token costs ln(V). Two targets of 2 and 3 tokens -> 5 tokens.
    logits = torch.zeros(5, V, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3, 0])
    nll_sum = F.cross_entropy(logits, labels, reduction="sum")
    per_token, per_target = TargetTokenNLL(), TargetNLL()
    per_token.update(nll_sum, 5)
    per_target.update(nll_sum, 2)
    assert per_token.compute().item() == pytest.approx(math.log(V))
    assert per_target.compute().item() == pytest.approx(2.5 * math.log(V))
    assert per_token.numerator.grad_fn is None  # the state keeps no autograd graph


def test_nll_weights_tokens_not_batches():
    # batch A: 2.0 over 3 tokens / 1 target; batch B: 4.0 over 5 tokens / 2 targets; then an empty batch.
    per_token, per_target = TargetTokenNLL(), TargetNLL()
    for nll_sum, n_tokens, n_targets in ((torch.tensor(2.0), 3, 1), (4.0, torch.tensor(5), 2), (0.0, 0, 0)):
        per_token.update(nll_sum, n_tokens)
        per_target.update(nll_sum, n_targets)
    assert per_token.compute().item() == pytest.approx(6.0 / 8)  # not mean(2/3, 4/5)
    assert per_target.compute().item() == pytest.approx(6.0 / 3)


def test_histogram_and_majority_baseline():
    hist, baseline = TokenHistogram(V), FirstTokenMajorityBaseline(V)
    for tokens in (torch.tensor([2, 2]), torch.tensor([1, 2, 0])):
        hist.update(tokens)
        baseline.update(tokens)
    assert hist.compute().tolist() == [1, 1, 3, 0]
    assert baseline.compute().item() == pytest.approx(3 / 5)
    assert majority_share(hist.compute()).item() == pytest.approx(3 / 5)
    assert math.isnan(majority_share(torch.zeros(V, dtype=torch.long)).item())


def test_histogram_rejects_bad_tokens():
    with pytest.raises(ValueError, match="outside the vocabulary of 4"):
        TokenHistogram(V).update(torch.tensor([1, 4]))
    with pytest.raises(ValueError, match="integer token ids"):
        TokenHistogram(V).update(torch.tensor([1.0]))
    with pytest.raises(ValueError, match="vocab_size must be positive"):
        TokenHistogram(0)


def test_inverted_model_scores_below_the_baseline():
    # The diagnosed failure: 4 of 5 targets start with token 1, the model mostly predicts token 3.
    first_targets = torch.tensor([1, 1, 1, 1, 0])
    predicted = torch.tensor([3, 3, 1, 3, 0])
    accuracy, baseline = FirstTokenAccuracy(), FirstTokenMajorityBaseline(V)
    accuracy.update(predicted, first_targets)
    baseline.update(first_targets)
    assert accuracy.compute().item() == pytest.approx(0.4)
    assert baseline.compute().item() == pytest.approx(0.8)


def test_forward_returns_the_batch_value_and_accumulates():
    metric = TokenAccuracy()
    assert metric(LOGITS[2:3], TARGETS[2:3]).item() == 0.0
    assert metric(LOGITS[:2], TARGETS[:2]).item() == 1.0
    assert metric.compute().item() == pytest.approx(2 / 3)
    metric.reset()
    metric.update(LOGITS[:1], TARGETS[:1])
    assert metric.compute().item() == 1.0


def _feed(metrics: dict, rows: slice, nll: tuple[float, int, int]) -> None:
    """One validation batch, the way the LightningModule feeds the metrics."""
    logits, targets = LOGITS[rows], TARGETS[rows]
    metrics["token_acc"].update(logits, targets)
    metrics["first_acc"].update(logits, targets)
    metrics["baseline"].update(targets)
    metrics["true_hist"].update(targets)
    metrics["pred_hist"].update(predicted_tokens(logits))
    metrics["loss"].update(nll[0], nll[1])
    metrics["nll_per_target"].update(nll[0], nll[2])


def _new_metrics() -> dict:
    return {
        "token_acc": TokenAccuracy(), "first_acc": FirstTokenAccuracy(), "baseline": FirstTokenMajorityBaseline(V),
        "true_hist": TokenHistogram(V), "pred_hist": TokenHistogram(V),
        "loss": TargetTokenNLL(), "nll_per_target": TargetNLL(),
    }


# Two shards of the same data, as two DDP ranks would see them; shard 1 includes an empty batch.
SHARDS = [
    [(slice(0, 2), (2.0, 3, 1))],
    [(slice(2, 2), (0.0, 0, 0)), (slice(2, 4), (4.0, 5, 2))],
]
# By hand for the union: 3/4 right; targets 0,2,2,1; predictions 0,2,1,1; NLL 6.0 over 8 tokens, 3 targets.
UNION = {
    "token_acc": 0.75, "first_acc": 0.75, "baseline": 0.5,
    "true_hist": [1, 1, 2, 0], "pred_hist": [1, 2, 1, 0],
    "loss": 0.75, "nll_per_target": 2.0,
}


def _as_plain(value: torch.Tensor):
    return value.tolist() if value.ndim else pytest.approx(value.item())


def _check_union(computed: dict) -> None:
    assert {name: _as_plain(value) for name, value in computed.items()} == UNION


def test_merged_states_equal_one_metric_on_the_union():
    shards = [_new_metrics() for _ in SHARDS]
    for metrics, batches in zip(shards, SHARDS):
        for rows, nll in batches:
            _feed(metrics, rows, nll)
    for name, metric in shards[0].items():
        metric.merge_state(shards[1][name])
    _check_union({name: metric.compute() for name, metric in shards[0].items()})


def _ddp_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=30))
    try:
        metrics = _new_metrics()
        for rows, nll in SHARDS[rank]:
            _feed(metrics, rows, nll)
        computed = {name: metric.compute() for name, metric in metrics.items()}
        local_tokens = metrics["token_acc"].denominator.item()  # compute must leave the local state local
        torch.save({"computed": computed, "local_tokens": local_tokens}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed + gloo")
def test_two_process_gloo_compute_returns_the_union_on_every_rank(tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for rank, local_tokens in ((0, 2.0), (1, 2.0)):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        _check_union(result["computed"])
        assert result["local_tokens"] == local_tokens
