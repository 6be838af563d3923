"""A model that reads the problem's points (--model.input_embedder): training, checkpoints, report, search."""

import json
from collections import Counter

import pytest
import torch

import evaluate
from sr_lightning.data.dataset import OneStepBatches, StreamSettings
from sr_lightning.data.points import ProblemIndex
from sr_lightning.data.stream import LineReport, parse_lines
from sr_lightning.data.tokenizer import SRTokenizer
from sr_lightning.evaluation.checkpoints import load_for_evaluation
from sr_lightning.evaluation.decode_bench import main as decode_bench_main
from sr_lightning.evaluation.guided_search import ComparisonSettings, run_one
from sr_lightning.module import OneStepLM
from sr_lightning.sr.problems import load_problems
from sr_lightning.task import OneStepTask
from tests.conftest import tiny_config, train_in_process, write_tiny_data
from tests.helpers import SAMPLE, SAMPLE_PROBLEMS, fixture_lines, write_lines

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_batch_carries_the_first_points_of_each_examples_problem():
    task = OneStepTask(SRTokenizer.default(), 1024, max_points=5)
    pairs = list(parse_lines(
        [(f"{SAMPLE}:{i}", line.encode()) for i, line in enumerate(fixture_lines()[:3], 1)], LineReport()))
    batch = task.collate([e for _, e in task.encode(pairs, LineReport(), ProblemIndex())])
    problem = load_problems(SAMPLE_PROBLEMS)[pairs[0].expression_id]
    assert batch["points_X"].shape == (3, 5, problem.n_vars) and batch["points_mask"].all()
    assert torch.allclose(batch["points_X"][0], torch.tensor(problem.X[:5], dtype=torch.float32))
    assert torch.allclose(batch["points_y"][0], torch.tensor(problem.y[:5], dtype=torch.float32))


def test_examples_without_points_are_skipped_and_counted_never_zeros(tmp_path):
    data = write_lines(tmp_path / "train.jsonl", fixture_lines()[:6])  # no points file beside it
    task = OneStepTask(SRTokenizer.default(), 1024, max_points=64)
    stream = OneStepBatches([data], task, StreamSettings(batch_size=3), problems=ProblemIndex())
    batches = list(stream)
    assert sum(b["n_examples"] for b in batches) == 0
    skipped = Counter()
    for batch in batches:
        skipped.update(batch["skipped"])
    assert skipped == {"no points": 6}


@pytest.mark.parametrize("embedder", ["e2e", "set"])
def test_a_model_that_reads_points_trains_reports_and_searches(embedder, tmp_path, capsys):
    train_file, val_file, _ = write_tiny_data(tmp_path)
    config = tiny_config(tmp_path, train_file, val_file)
    config["trainer"].update(max_steps=6, check_val_every_n_epoch=3)
    config["model"]["input_embedder"] = embedder
    run = train_in_process(tmp_path, config)
    model, task, info = load_for_evaluation(run)
    prefix = {"e2e": 64, "set": 16}[embedder]
    assert model.config.input_embedder == embedder and task.max_points == 64
    assert task.max_length == 512 - prefix  # the prefix takes its positions from the tokens'
    lm = OneStepLM.load_from_checkpoint(info["checkpoint"], map_location="cpu")
    assert torch.equal(lm.model.input_embedder.state_dict()[next(iter(lm.model.input_embedder.state_dict()))],
                       model.input_embedder.state_dict()[next(iter(model.input_embedder.state_dict()))])
    with pytest.raises(ValueError, match="reads each problem's points"):
        model(torch.tensor([[1, 2, 3]]))  # never silently blind
    assert evaluate.main(["--checkpoint", str(run), "--max-new-tokens", "8"]) == 0
    report = json.loads((run / "evaluation" / "report.json").read_text())
    assert report["n_examples"] == 8
    assert report["val_loss"] == pytest.approx(report["recorded_val_loss"], rel=1e-5)
    capsys.readouterr()
    assert decode_bench_main(["--checkpoint", str(run), "--n", "3", "--max-new-tokens", "4"]) == 0
    assert "identical greedy outputs: 3/3" in capsys.readouterr().out  # prefix + cache = uncached
    problem = load_problems(SAMPLE_PROBLEMS)[900]
    result = run_one(problem, "neural", 0, ComparisonSettings(generations=3, population_size=6, max_new_tokens=16),
                     model, task)
    assert result.proposals == 2 * 5  # the model filled every slot of generations 1 and 2


def test_the_online_source_brings_the_points_of_the_problems_it_generates():
    from sr_lightning.data.online import OnlineBatches
    from tests.test_online import STREAM, TINY

    task = OneStepTask(SRTokenizer.default(), 1024, max_points=64)
    batch = next(iter(OnlineBatches(task, STREAM, TINY, 0, 2)))
    assert batch["n_examples"] == 4 and batch["points_X"].shape[0] == 4 and batch["points_mask"].any(1).all()
    assert batch["skipped"] == {}


def test_a_points_file_serves_training_and_the_report(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    train_file, val_file, problems_file = write_tiny_data(data)
    points = problems_file.rename(tmp_path / "points.json")  # nothing beside the data any more
    config = tiny_config(tmp_path, train_file, val_file)
    config["trainer"].update(max_steps=3, check_val_every_n_epoch=3)
    config["model"]["input_embedder"] = "e2e"
    config["data"]["points_file"] = str(points)
    run = train_in_process(tmp_path, config)
    assert evaluate.main(["--checkpoint", str(run), "--max-new-tokens", "4"]) == 0
    assert json.loads((run / "evaluation" / "report.json").read_text())["n_examples"] == 8
