"""The throughput bench (`python -m sr_lightning.bench`) and the CPU fast paths of the model it measures."""

from __future__ import annotations

import json
import mmap
import re
import sys
from pathlib import Path

import pytest
import torch
import yaml

from sr_lightning import bench
from sr_lightning import model as M
from sr_lightning.data.format import SPECIAL_TOKENS, pair_from_record
from sr_lightning.data.tokenizer import SRTokenizer, gpt2_size_tokenizer_json
from sr_lightning.hf_reference import Reference
from sr_lightning.measure import Batch, _rss_mb, peak_memory
from tests.conftest import SAMPLE, torch_threads

RESULT = re.compile(r"^RESULT examples_per_s=(\d+(?:\.\d+)?(?:e[-+]?\d+)?) tokens_per_s=(\d+(?:\.\d+)?(?:e[-+]?\d+)?)$")
BATCH = 4


@pytest.fixture
def micro_config(tmp_path: Path) -> Path:
    """A micro model with 512 positions (the fixture's longest example has 416 domain tokens)."""
    config = {"model": {"preset": "micro", "model_overrides": {"n_positions": 512}},
              "data": {"batch_size": BATCH, "num_workers": 0, "length_grouping": 0},
              "trainer": {"precision": "32-true"}}
    path = tmp_path / "micro.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_bench(capsys, *args: str) -> tuple[dict, list[str]]:
    with torch_threads(1):
        results = bench.main(["--data", str(SAMPLE), "--steps", "2", "--warmup", "1", *args])
    return results, capsys.readouterr().out.strip().splitlines()


@pytest.mark.parametrize("embedder", ["e2e", "set"])
def test_bench_trains_a_model_that_reads_points(capsys, micro_config, embedder):
    results, lines = run_bench(capsys, "--config", str(micro_config), "--input-embedder", embedder)
    assert results["ours"]["steps"] == 2 and RESULT.match(lines[-1])


def test_bench_trains_our_path_and_ends_with_the_result_line(capsys, micro_config, tmp_path):
    out = tmp_path / "figures.json"
    results, lines = run_bench(capsys, "--config", str(micro_config), "--json", str(out), "--loader-batches", "2")
    match = RESULT.match(lines[-1])
    assert match, lines[-1]
    ours = results["ours"]
    assert ours["steps"] == 2 and ours["examples"] == 2 * BATCH
    assert float(match.group(1)) == pytest.approx(ours["examples"] / ours["seconds"], rel=1e-4)
    assert float(match.group(2)) == pytest.approx(ours["tokens"] / ours["seconds"], rel=1e-4)
    # Per-batch padding: every computed position beyond the real tokens is padding.
    assert 0 <= ours["padding_share"] < 0.5 and ours["computed_tokens"] >= ours["tokens"] > ours["target_tokens"] > 0
    assert results["precision"] == "32-true" and results["loader_examples_per_s_per_worker"] > 0
    assert json.loads(out.read_text())["ours"]["examples"] == 2 * BATCH
    assert any(line.startswith("ours ") for line in lines)


def test_compare_runs_both_references_on_the_same_batches(capsys, micro_config):
    pytest.importorskip("transformers")
    results, lines = run_bench(capsys, "--config", str(micro_config), "--compare", "--loader-batches", "0")
    assert RESULT.match(lines[-1])
    ours, tuned, original = results["ours"], results["hf_tuned"], results["hf_original"]
    # Same batches: the same examples, real tokens and targets.
    assert (tuned["examples"], tuned["tokens"], tuned["target_tokens"]) == (
        ours["examples"], ours["tokens"], ours["target_tokens"])
    # The original pads every example to the context length (512): one step of 4 examples.
    assert original["steps"] == 1 and original["computed_tokens"] == BATCH * 512
    assert original["padding_share"] > 0.1
    assert results["ratios"]["vs_tuned"] == pytest.approx(ours["examples_per_s"] / tuned["examples_per_s"])
    assert any(line.startswith("ratio ours/hf-original=") for line in lines)


def test_compare_without_transformers_says_so(capsys, micro_config, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.raises(SystemExit, match="needs the optional `transformers` package"):
        run_bench(capsys, "--config", str(micro_config), "--compare", "--steps", "1", "--loader-batches", "0")


def test_gpt2_size_tokenizer_has_the_original_layout():
    texts = [pair_from_record(json.loads(line)).text for line in SAMPLE.read_text().splitlines()]
    tokenizer = SRTokenizer.from_str(gpt2_size_tokenizer_json(texts))
    assert tokenizer.vocab_size == 50_261
    assert [tokenizer.ids[t] for t in SPECIAL_TOKENS] == [50256, 50257, 50258, 50259, 50260]
    assert tokenizer.decode(tokenizer.encode(texts[0])) == texts[0]
    assert len(tokenizer.encode(texts[0])) < len(texts[0]) / 1.5  # merges were learned


def test_reference_micro_batches_unshift_labels_and_pad():
    # Two rows of real lengths 5 and 3, batch width 5; labels shifted as in our batches.
    ids = torch.tensor([[9, 1, 2, 3, 4], [9, 5, 6, 0, 0]])
    labels = torch.tensor([[-100, -100, 3, 4, -100], [-100, 6, -100, -100, -100]])
    batch = Batch(ids, labels)
    assert batch.lengths.tolist() == [5, 3]
    assert batch.figures() == (2, 8, 3, 10)
    tuned = Reference("t", None, False, micro_batch=1)
    (ids0, mask0, hf0), (ids1, mask1, hf1) = tuned.micro_batches(batch, pad_id=0)
    assert ids0.tolist() == [[9, 1, 2, 3, 4]] and hf0.tolist() == [[-100, -100, -100, 3, 4]]
    assert ids1.tolist() == [[9, 5, 6]] and hf1.tolist() == [[-100, -100, 6]] and mask1.tolist() == [[1, 1, 1]]
    original = Reference("o", 8, True, micro_batch=2)
    [(ids2, mask2, hf2)] = original.micro_batches(batch, pad_id=0)
    assert ids2.shape == (2, 8) and mask2.sum(1).tolist() == [5, 3] and hf2[:, 5:].eq(-100).all()
    assert original.computed_tokens(batch) == 16 and tuned.computed_tokens(batch) == 8


def test_output_mask_gives_the_selected_hidden_states_and_gradients():
    torch.manual_seed(0)
    model = M.GPTNeo(M.ModelConfig(vocab_size=97, n_positions=64, hidden_size=32, n_layers=3, n_heads=4)).eval()
    ids = torch.randint(0, 97, (3, 20))
    mask = torch.zeros(3, 20, dtype=torch.bool)
    mask[0, 10:19], mask[1, 3:5], mask[2, [0, 19]] = True, True, True
    weights = torch.randn(int(mask.sum()), 32)
    full = model(ids)[mask]
    selected = model(ids, output_mask=mask)
    assert selected.shape == (13, 32) and torch.allclose(selected, full, atol=1e-6)
    params = list(model.parameters())
    for a, b in zip(torch.autograd.grad((full * weights).sum(), params),
                    torch.autograd.grad((model(ids, output_mask=mask) * weights).sum(), params)):
        assert torch.allclose(a, b, atol=1e-5 * max(1.0, a.abs().max().item()))


def test_cpu_training_forward_uses_dropout_everywhere_and_trains():
    torch.manual_seed(0)
    config = M.ModelConfig(vocab_size=97, n_positions=64, hidden_size=32, n_layers=2, n_heads=4,
                           embed_dropout=0.0, resid_dropout=0.0, attn_dropout=0.5)
    model = M.GPTNeo(config).train()
    ids = torch.randint(0, 97, (2, 30))
    torch.manual_seed(1)
    a = model(ids)
    torch.manual_seed(1)
    assert torch.equal(a, model(ids))  # masks follow torch's seed
    assert not torch.allclose(a, model(ids))
    a.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_peak_memory_sees_an_allocation_inside_the_block():
    before = _rss_mb()
    with peak_memory(torch.device("cpu")) as peak:
        block = mmap.mmap(-1, 64 * 2**20)  # fresh pages: malloc might reuse memory already resident
        block.write(b"x" * len(block))
    assert peak() >= before + 60
    block.close()
