"""evaluate.py and sr_lightning.evaluation: best checkpoint, report numbers vs hand counts, findings."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import evaluate
from sr_lightning.data.format import Pair, pair_from_record
from sr_lightning.data.points import PointsFileError, ProblemIndex
from sr_lightning.data.stream import LineReport
from sr_lightning.evaluation.checkpoints import (
    EvaluationInputError,
    best_checkpoint,
    load_for_evaluation,
    newest_run,
)
from sr_lightning.evaluation.curves import last_logged_step, plot_validation_curves, read_scalars
from sr_lightning.evaluation.decode_bench import benchmark
from sr_lightning.evaluation.report import (
    REPORT_NAMES,
    EvalSettings,
    Evaluation,
    build_report,
    findings,
    score_prediction,
)
from sr_lightning.decoding import generate
from sr_lightning.interop import save_hf_gpt_neo
from sr_lightning.sr.expression import ExpressionError, fitness, parse
from sr_lightning.sr.problems import Problem, load_problems
from tests.conftest import STEPS, tiny_config, train_in_process, write_tiny_data

pytestmark = pytest.mark.usefixtures("one_thread")
REPORT_KEYS = ("checkpoint", "step", "best_step", "n_examples", "val_loss", "nll_per_target",
               "first_token_accuracy", "first_token_majority_baseline", "token_accuracy", "exact_match",
               "valid_rate", "copy_rate", "unique_rate", "degenerate_rate", "first_token_distribution",
               "median_fitness_gain", "improved_rate", "recorded_val_loss", "findings", "unparsable_targets")
RATES = ("first_token_accuracy", "first_token_majority_baseline", "token_accuracy", "exact_match", "valid_rate",
         "copy_rate", "unique_rate", "degenerate_rate")


@pytest.fixture(scope="module")
def trained(tiny_run):
    return load_for_evaluation(tiny_run.run_dir)


def read_jsonl(path: Path) -> list[Pair]:
    lines = path.read_text().splitlines()
    return [pair_from_record(json.loads(line), f"{path}:{i}") for i, line in enumerate(lines, 1)]


def validation_prompts(tiny_run, task) -> list[list[int]]:
    """The inference prompts of the run's validation lines."""
    return [task.prompt_ids(e) for _, e in task.encode(read_jsonl(tiny_run.val_file), LineReport())]


def val_losses(run_dir: Path) -> dict[int, float]:
    """val/loss by optimizer step (the step in the checkpoint names)."""
    return dict(read_scalars(run_dir)["val/loss"])


# -- which checkpoint -----------------------------------------------------------------------
def test_a_run_directory_resolves_to_its_best_checkpoint(tiny_run, trained):
    _, _, info = trained
    losses = val_losses(tiny_run.run_dir)
    best = min(losses, key=losses.get)
    assert info["step"] == info["best_step"] == best
    assert best < STEPS  # validation loss rose after the best: the fixture overfits on purpose
    assert info["last_step"] == STEPS and info["steps_past_best"] == STEPS - best
    assert Path(info["checkpoint"]).name == f"step={best}-val_loss={losses[best]:.4f}.ckpt"


def test_a_directory_of_runs_resolves_to_its_newest_runs_best(tiny_run, trained, tmp_path):
    assert load_for_evaluation(tiny_run.root / "runs")[2]["checkpoint"] == trained[2]["checkpoint"]
    with pytest.raises(EvaluationInputError, match="no checkpoints under"):
        load_for_evaluation(tmp_path)


def test_a_moved_run_still_resolves_inside_itself(tiny_run, tmp_path):
    copy = Path(shutil.copytree(tiny_run.run_dir, tmp_path / "moved" / "version_0"))
    choice = best_checkpoint(copy)
    assert choice["best"].parent == copy / "checkpoints"
    assert choice["best"].name == Path(load_for_evaluation(tiny_run.run_dir)[2]["checkpoint"]).name


def test_newest_run_is_the_one_with_the_latest_checkpoint(tmp_path):
    for version, mtime in (("version_0", 2_000_000), ("version_1", 1_000_000)):
        ckpt = tmp_path / "runs" / "x" / version / "checkpoints" / "last.ckpt"
        ckpt.parent.mkdir(parents=True)
        ckpt.write_bytes(b"")
        os.utime(ckpt, (mtime, mtime))
    (tmp_path / "runs" / "x" / "version_2").mkdir()  # newer, but holds no checkpoint
    assert newest_run(tmp_path / "runs") == tmp_path / "runs" / "x" / "version_0"
    with pytest.raises(EvaluationInputError, match="no run directory"):
        newest_run(tmp_path / "elsewhere")


# -- the CLI --------------------------------------------------------------------------------
def test_no_arguments_report_on_the_best_checkpoint_of_the_newest_run(tiny_run, monkeypatch, capsys):
    monkeypatch.chdir(tiny_run.root)
    assert evaluate.main([]) == 0
    out = tiny_run.run_dir / "evaluation"
    report = json.loads((out / "report.json").read_text())
    assert all(key in report for key in REPORT_KEYS)
    assert all(0.0 <= report[key] <= 1.0 for key in RATES)
    assert report["step"] == report["best_step"] and report["n_examples"] == 8  # the run's val.jsonl
    # The same file, encoding and metric classes as training: val_loss is the logged val/loss.
    assert report["val_loss"] == pytest.approx(val_losses(tiny_run.run_dir)[report["best_step"]], rel=1e-5)
    assert report["val_loss"] == pytest.approx(report["recorded_val_loss"], rel=1e-5)
    assert not any("recorded" in text for text in report["findings"])
    assert (out / "validation_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert "## Findings" in (out / "report.md").read_text()
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 8
    captured = capsys.readouterr()
    assert f"went {STEPS - report['best_step']} steps past it" in captured.err
    assert "exact_match" in captured.out


def test_report_reads_the_lines_the_run_validated_on_unless_told_otherwise(tmp_path, capsys):
    train_file, val_file, _ = write_tiny_data(tmp_path)
    config = tiny_config(tmp_path, train_file, val_file)
    config["trainer"].update(max_steps=10, check_val_every_n_epoch=5, limit_val_batches=1)
    config["data"]["val_batch_size"] = 3  # validation reads 1 batch of 3 of the 8 lines
    run = train_in_process(tmp_path, config)
    assert evaluate.main(["--checkpoint", str(run), "--max-new-tokens", "8"]) == 0
    report = json.loads((run / "evaluation" / "report.json").read_text())
    assert report["n_examples"] == report["line_limit"] == 3
    assert report["val_loss"] == pytest.approx(report["recorded_val_loss"], rel=1e-5)
    assert "the first 3 lines" in capsys.readouterr().err
    assert evaluate.main(["--checkpoint", str(run), "--max-new-tokens", "8", "--limit", "0",
                          "--out", str(tmp_path / "all")]) == 0
    everything = json.loads((tmp_path / "all" / "report.json").read_text())
    assert everything["n_examples"] == 8 and everything["line_limit"] is None
    assert any("other examples than the ones it validated on" in text for text in everything["findings"])


def test_missing_and_corrupt_inputs_give_one_error_line(tiny_run, tmp_path, monkeypatch, capsys):
    broken = tmp_path / "broken.ckpt"
    good = next(tiny_run.checkpoints.glob("step=*.ckpt"))
    broken.write_bytes(good.read_bytes()[:5000])
    cases = [(["--checkpoint", str(tmp_path / "missing.ckpt")], "missing.ckpt"),
             (["--checkpoint", str(broken)], "broken.ckpt"),
             (["--checkpoint", str(good), "--data", str(tmp_path / "none.jsonl")], "none.jsonl")]
    for argv, name in cases:
        assert evaluate.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) <= 3 and err[-1].startswith("error:") and name in err[-1]
    monkeypatch.chdir(tmp_path)
    assert evaluate.main([]) == 2
    assert "no run directory" in capsys.readouterr().err


# -- the numbers ----------------------------------------------------------------------------
def hand_counts(model, tokenizer, pairs: list[Pair], problems: dict[int, Problem]) -> dict:
    """Every report number computed the slow, obvious way: one example at a time, full forward."""
    nll, tokens, first_right, token_right, firsts = 0.0, 0, 0, 0, []
    predictions = []
    with torch.no_grad():
        for pair in pairs:
            prompt = tokenizer.encode(pair.input_text)
            target = tokenizer.encode(pair.target_text)  # <TARGET> ... <|endoftext|>
            ids = torch.tensor([prompt + target])
            logits = model.lm_head(model(ids))[0, len(prompt):-1]  # predicts target[1:]
            labels = ids[0, len(prompt) + 1:]
            nll += F.cross_entropy(logits, labels, reduction="sum").item()
            tokens += len(labels)
            token_right += int((logits.argmax(-1) == labels).sum())
            first_right += int(logits[0].argmax() == labels[0])
            firsts.append(int(labels[0]))
            out = generate(model, [prompt + [tokenizer.target_id]], eos_id=tokenizer.eos_id,
                           pad_id=tokenizer.pad_id, max_new_tokens=128, use_cache=False)[0]
            predictions.append(tokenizer.decode(out))
    leaf = re.compile(r"x\d+|-?\d+\.\d+")
    members = [re.split(r" <FITNESS>-?[\d.]+ ?", p.population)[:-1] for p in pairs]
    parsed = [parsed_or_none(pred) for pred in predictions]
    valid = [expr is not None and uses_only_its_primitives(pred, p.context)
             for pred, expr, p in zip(predictions, parsed, pairs)]
    gains = [fitness(expr, problems[p.expression_id].X, problems[p.expression_id].y)
             - max(float(f) for f in re.findall(r"<FITNESS>(-?[\d.]+)", p.population))
             for p, expr, ok in zip(pairs, parsed, valid) if ok]
    n = len(pairs)
    return {
        "predictions": predictions, "n_examples": n, "val_loss": nll / tokens, "nll_per_target": nll / n,
        "first_token_accuracy": first_right / n, "token_accuracy": token_right / tokens,
        "first_token_majority_baseline": max(firsts.count(t) for t in firsts) / n,
        "exact_match": sum(p == q.target for p, q in zip(predictions, pairs)) / n,
        "copy_rate": sum(p in m for p, m in zip(predictions, members)) / n,
        "unique_rate": len(set(predictions)) / n,
        "degenerate_rate": sum(bool(leaf.fullmatch(p)) and not leaf.fullmatch(q.target)
                               for p, q in zip(predictions, pairs)) / n,
        "valid_rate": sum(valid) / n,
        "median_fitness_gain": float(np.median(gains)),
        "improved_rate": sum(g > 0 for g in gains) / len(gains),
    }


def uses_only_its_primitives(text: str, context: str) -> bool:
    """Every word of ``text`` is one of the variables, operators or constants the context line names."""
    n_vars = int(re.search(r"(\d+) variables", context).group(1))
    ops = set(re.search(r"ops: ([^|]*) \|", context).group(1).split(","))
    constants = {float(c) for c in re.search(r"constants: (.*)$", context).group(1).split(",")}
    for word in re.findall(r"[^\s()]+", text):
        if re.fullmatch(r"x\d+", word):
            ok = int(word[1:]) < n_vars
        elif re.fullmatch(r"[a-z*/+-]+", word):
            ok = word in ops
        else:
            ok = float(word) in constants
        if not ok:
            return False
    return True


def parsed_or_none(text: str):
    try:
        return parse(text)
    except ExpressionError:
        return None


def test_report_numbers_equal_hand_counts_on_a_10_example_file(tiny_run, trained, tmp_path):
    model, task, info = trained
    pairs = read_jsonl(tiny_run.train_file)
    assert len(pairs) == 10
    problems = load_problems(tiny_run.problems_file)
    # The sidecar is found through each record's metadata (source_expressions_file), as the original named it.
    report = build_report(model, task, info, [tiny_run.train_file], EvalSettings(batch_size=4),
                          ProblemIndex(), tmp_path)
    expected = hand_counts(model, task.tokenizer, pairs, problems)
    assert report["exact_match"] >= 0.5  # the model learned its training lines: the counts are not all 0
    for key in ("n_examples", "exact_match", "valid_rate", "copy_rate", "unique_rate", "degenerate_rate"):
        assert report[key] == expected[key], key
    for key in ("val_loss", "nll_per_target", "token_accuracy", "first_token_accuracy",
                "first_token_majority_baseline", "median_fitness_gain", "improved_rate"):  # float32 metric states
        assert report[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-6), key
    assert report["unparsable_targets"] == 0 and report["fitness_gain_examples"] == round(10 * report["valid_rate"])
    written = [json.loads(line)["prediction"] for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert written == expected["predictions"]
    assert report["first_token_distribution"]["target"] == {"(": 1.0}
    assert sum(report["first_token_distribution"]["predicted"].values()) == pytest.approx(1.0)
    assert json.loads((tmp_path / "report.json").read_text()) == report


def test_report_numbers_are_trainer_validate_numbers_on_the_same_file(tiny_run, trained, tmp_path):
    import lightning as L

    from sr_lightning.data.datamodule import OneStepDataModule
    from sr_lightning.module import OneStepLM

    model, task, info = trained
    lm = OneStepLM.load_from_checkpoint(info["checkpoint"], map_location="cpu")
    data = OneStepDataModule(val_files=str(tiny_run.train_file), val_batch_size=4, num_workers=0, task=lm.task)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    [validated] = trainer.validate(lm, datamodule=data, verbose=False)
    report = build_report(model, task, info, [tiny_run.train_file], EvalSettings(batch_size=4),
                          ProblemIndex(), tmp_path)
    assert report["n_examples"] == 10
    for name, key in REPORT_NAMES.items():
        assert report[key] == pytest.approx(validated[f"val/{name}"], rel=1e-6), key


def test_inference_prompts_are_the_training_sequences_up_to_target(tiny_run, trained):
    _, task, _ = trained
    kept = task.encode(read_jsonl(tiny_run.val_file), LineReport())
    batch = task.collate([e for _, e in kept])  # what training feeds the model
    for row, (pair, example) in enumerate(kept):
        prompt = task.prompt_ids(example)
        assert prompt == batch["input_ids"][row, : batch["target_positions"][row] + 1].tolist()
        assert task.tokenizer.decode(prompt).encode() == pair.prompt_text.encode()


def test_cached_batched_and_uncached_single_greedy_outputs_are_identical(tiny_run, trained):
    model, task, _ = trained
    prompts = validation_prompts(tiny_run, task)
    kwargs = {"eos_id": task.tokenizer.eos_id, "pad_id": task.tokenizer.pad_id, "max_new_tokens": 48}
    cached = generate(model, prompts, batch_size=3, **kwargs)
    single = [generate(model, [p], use_cache=False, **kwargs)[0] for p in prompts]
    assert cached == single
    assert all(cached)


def test_score_prediction_by_hand():
    pair = Pair("(x0 * x1)", "generation: 0 | 2 variables | ops: *,+,- | constants: 1.0",
                "x0 <FITNESS>-2.00000 (x0 * x1) <FITNESS>-0.50000 1.0 <FITNESS>-1.01000")
    X = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, -1.0], [0.5, 2.0]])
    problem = Problem(1, "p", "(x0 * x1)", X, X[:, 0] * X[:, 1], 0)
    exact = score_prediction(pair, "(x0 * x1)", problem)
    assert (exact.exact, exact.valid, exact.copy, exact.degenerate) == (True, True, True, False)
    assert exact.fitness_gain == pytest.approx(-0.03 - (-0.5))  # MSE 0, size 3; best printed -0.5
    leaf = score_prediction(pair, "x0", problem)
    assert (leaf.exact, leaf.valid, leaf.copy, leaf.degenerate) == (False, True, True, True)
    broken = score_prediction(pair, "((x0 * x1)", problem)
    assert (broken.valid, broken.copy, broken.fitness_gain) == (False, False, None)
    new = score_prediction(pair, "(x1 * x1)", None)
    assert (new.valid, new.copy, new.degenerate, new.fitness_gain) == (True, False, False, None)
    leaf_target = score_prediction(Pair("x1", pair.context, pair.population), "x0", None)
    assert not leaf_target.degenerate  # a leaf for a leaf target is not degenerate
    # Parses, but is not built from this problem's primitives: not valid, and no fitness gain.
    for foreign in ("14122", "(x0 * 2.0)", "(x2 + x0)", "(x0 / x1)", "sin(x0)"):
        scored = score_prediction(pair, foreign, problem)
        assert (scored.valid, scored.fitness_gain) == (False, None), foreign
    assert score_prediction(pair, "((x0 - 1.0) * x1)", problem).valid
    generic = Pair("x0", prompt="no context line here")  # nothing names the primitives: parsing decides
    assert score_prediction(generic, "14122", None).valid


def test_problem_index_finds_the_sidecar_a_record_names_or_problems_json(tiny_run, tmp_path):
    record = json.loads(tiny_run.train_file.read_text().splitlines()[0])
    named = ProblemIndex().lookup(pair_from_record(record, f"{tiny_run.train_file}:1"))
    assert named is not None and named.name == "bivariate_sum"
    shutil.copy(tiny_run.problems_file, tmp_path / "problems.json")
    record["metadata"]["source_expressions_file"] = "elsewhere/gone.json"
    assert ProblemIndex().lookup(pair_from_record(record, f"{tmp_path / 'x.jsonl'}:1")).name == "bivariate_sum"
    assert ProblemIndex().lookup(pair_from_record(record, f"{tmp_path / 'sub' / 'x.jsonl'}:1")) is None
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(PointsFileError, match="bad.json"):
        ProblemIndex(tmp_path / "bad.json")


# -- findings -------------------------------------------------------------------------------
HEALTHY = {"step": 50, "best_step": 50, "first_token_accuracy": 0.95, "first_token_majority_baseline": 0.78,
           "first_token_distribution": {"predicted": {"(": 0.8, "x": 0.2}, "target": {"(": 0.78, "x": 0.22}},
           "degenerate_rate": 0.02, "valid_rate": 0.99, "unique_rate": 0.9, "unparsable_targets": 0,
           "skipped_lines": {}}


def test_findings_flag_the_original_failure_and_nothing_on_a_healthy_report():
    assert findings(HEALTHY) == []
    original = {**HEALTHY, "step": 60000, "best_step": 20000, "first_token_accuracy": 0.618,
                "first_token_majority_baseline": 0.778, "degenerate_rate": 0.45,
                "first_token_distribution": {"predicted": {"x": 0.414, "(": 0.319, "((": 0.235},
                                             "target": {"(": 0.778, "x": 0.222}}}
    text = "\n".join(findings(original))
    assert "not the best checkpoint" in text and "20000" in text
    assert "61.8%" in text and "77.8%" in text
    assert "inverted" in text and "41.4%" in text
    assert "degenerate" in text and "45.0%" in text


def test_a_model_that_always_writes_x0_makes_findings_warn(tiny_run, trained, scripted_model):
    _, task, _ = trained
    pairs = read_jsonl(tiny_run.train_file)
    evaluation = Evaluation(scripted_model(task.tokenizer, "x0"), task, EvalSettings(),
                            ProblemIndex(tiny_run.problems_file))
    evaluation.add(pairs)
    report = {**evaluation.results(), "step": None, "best_step": None}
    assert report["degenerate_rate"] == 1.0 and report["valid_rate"] == 1.0 and report["unique_rate"] == 0.1
    assert report["copy_rate"] == sum(" x0 <FITNESS>" in " " + p.population for p in pairs) / 10
    assert report["first_token_distribution"] == {"predicted": {"x0": 1.0}, "target": {"(": 1.0}}
    assert report["first_token_accuracy"] == 0.0 and report["exact_match"] == 0.0
    text = "\n".join(findings(report))
    assert "degenerate" in text and "below the majority baseline" in text and "inverted" in text


def test_evaluating_a_checkpoint_that_is_not_the_best_is_a_finding(tiny_run):
    best = best_checkpoint(tiny_run.run_dir)["best"]
    other = next(f for f in tiny_run.checkpoints.glob("step=*.ckpt") if f.name != best.name)  # top-2 are kept
    _, _, info = load_for_evaluation(other)
    assert info["checkpoint"] == str(other) and info["step"] != info["best_step"]
    text = "\n".join(findings({**HEALTHY, "step": info["step"], "best_step": info["best_step"]}))
    assert f"step {info['step']} is evaluated" in text and f"at step {info['best_step']}" in text


# -- other inputs and tools -----------------------------------------------------------------
def test_an_hf_directory_evaluates_like_its_checkpoint(tiny_run, trained, tmp_path):
    model, task, _ = trained
    tokenizer = task.tokenizer
    save_hf_gpt_neo(model, tmp_path / "hf", tokenizer.to_str(), bos_id=tokenizer.eos_id, eos_id=tokenizer.eos_id)
    hf_model, hf_task, info = load_for_evaluation(tmp_path / "hf")
    assert info["kind"] == "hf" and info["step"] is None
    assert hf_task.tokenizer.to_str() == tokenizer.to_str() and hf_task.max_length == model.config.n_positions
    prompts = validation_prompts(tiny_run, task)[:3]
    kwargs = {"eos_id": tokenizer.eos_id, "pad_id": tokenizer.pad_id, "max_new_tokens": 32}
    assert generate(hf_model, prompts, **kwargs) == generate(model, prompts, **kwargs)


def test_decode_benchmark_reports_both_speeds_and_agreement(tiny_run, trained):
    model, task, _ = trained
    result = benchmark(model, task.tokenizer, validation_prompts(tiny_run, task)[:4], batch_size=4,
                       max_new_tokens=16)
    assert result["n"] == 4 and result["identical_outputs"] == 4
    assert result["batched_cached_per_s"] > 0 and result["single_uncached_per_s"] > 0
    assert result["speedup"] == pytest.approx(result["batched_cached_per_s"] / result["single_uncached_per_s"])


def test_validation_curve_plot_and_last_step(tiny_run, tmp_path):
    assert last_logged_step(tiny_run.run_dir) == STEPS
    png = plot_validation_curves(tiny_run.run_dir, tmp_path / "curves.png", best_step=50)
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 10_000
    assert plot_validation_curves(tmp_path, tmp_path / "none.png") is None  # no events there
