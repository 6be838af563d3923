"""train.py end to end: the quickstart leaves a complete run directory; overfit.yaml memorises a file."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sr_lightning.data.format import pair_from_record
from sr_lightning.decoding import generate
from sr_lightning.module import OneStepLM

ROOT = Path(__file__).resolve().parents[1]


def train(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "fit", *args], cwd=cwd,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def scalars(run_dir: Path) -> dict[str, list[float]]:
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.mark.slow
def test_quickstart_run_directory_is_complete_and_the_console_says_where_it_is(tmp_path):
    result = train("--config", str(ROOT / "configs/quickstart.yaml"), "--trainer.max_steps", "20",
                   "--trainer.val_check_interval", "10", "--trainer.limit_val_batches", "2",
                   "--data.default_problems", "12", "--data.default_data_dir", str(tmp_path / "data"), cwd=tmp_path)
    run = tmp_path / "runs" / "quickstart" / "version_0"
    assert (run / "config.yaml").is_file() and (run / "tokenizer.json").is_file()
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "last.ckpt" in checkpoints and any(name.startswith("step=") for name in checkpoints)
    logged = scalars(run)
    for tag in ("train/loss", "train/lr", "val/loss", "val/nll_per_target", "val/first_token_acc", "val/token_acc",
                "val/first_token_majority", "progress/examples_seen", "progress/tokens_seen", "progress/epoch"):
        assert tag in logged, f"{tag} missing from {sorted(logged)}"
    assert logged["progress/examples_seen"][-1] == 20 * 16  # logged at step 20: 20 batches of 16
    # One step numbering: validation events carry the step of the checkpoints they score.
    assert steps(run, "val/loss") == [10, 20] and steps(run, "train/loss") == [20]
    assert {int(name.split("-")[0][5:]) for name in checkpoints if name.startswith("step=")} <= {10, 20}
    console = result.stdout + result.stderr
    assert "generating the default data set: 12 BasicSR runs into" in console and "train examples" in console
    assert "model: GPT-Neo" in console
    for noise in ("Tip:", "litlogger", "FLOPs", "IterableDataset", "LeafSpec", "logging interval"):
        assert noise not in console, noise
    summary = result.stderr[result.stderr.index("training finished at step 20"):]
    assert "run directory:   runs/quickstart/version_0" in summary
    assert "best checkpoint: runs/quickstart/version_0/checkpoints/step=" in summary and "(val/loss " in summary
    assert "tensorboard --logdir runs/quickstart/version_0" in summary
    assert "python evaluate.py --checkpoint runs/quickstart/version_0" in summary
    best = OneStepLM.load_from_checkpoint(run / "checkpoints" / "last.ckpt", map_location="cpu")
    assert best.tokenizer.to_str() == (run / "tokenizer.json").read_text()
    assert (run / "data_issues.json").is_file()


def steps(run_dir: Path, tag: str) -> list[int]:
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return [e.step for e in events.Scalars(tag)]


def test_a_failed_launch_leaves_no_run_directory_and_a_missing_config_is_one_line_first(tmp_path, monkeypatch, capsys):
    from sr_lightning.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train.py"])
    missing = ["--data.train_files", "nope.jsonl", "--data.val_files", "nope.jsonl", "--trainer.accelerator", "cpu"]
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(ROOT / "configs/quickstart.yaml"), *missing])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "error: data file not found: nope.jsonl"
    assert not (tmp_path / "runs").exists()  # Lightning had created runs/quickstart/version_0 with an events file
    (tmp_path / "runs" / "quickstart").mkdir(parents=True)  # an existing folder of runs stays
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(ROOT / "configs/quickstart.yaml"), *missing])
    assert [p.name for p in (tmp_path / "runs").rglob("*")] == ["quickstart"]
    capsys.readouterr()
    for form in (["--config", "configs/typo.yaml"], ["--config=configs/typo.yaml"], ["-c", "configs/typo.yaml"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", *form])
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.splitlines() == ["error: config file not found: configs/typo.yaml"]


def unique_prompt_lines(n: int) -> list[str]:
    """``n`` one-step lines with distinct prompts (one prompt with several targets cannot be memorised)."""
    from sr_lightning.data.generate import generate_examples
    from sr_lightning.sr.problems import named_problems
    from sr_lightning.sr.search import SearchConfig

    lines, prompts = [], set()
    for problem in named_problems().values():
        for record in generate_examples(problem, SearchConfig(generations=12), "ancestors", seed=1):
            key = (record["expression_id"], record["context"], record["population"])
            if key not in prompts:
                prompts.add(key)
                lines.append(json.dumps(record))
    return lines[:n]


@pytest.mark.slow
def test_overfit_config_memorises_a_small_file(tmp_path):
    data = tmp_path / "small.jsonl"
    data.write_text("".join(line + "\n" for line in unique_prompt_lines(32)))
    train("--config", str(ROOT / "configs/overfit.yaml"), "--data.train_files", str(data),
          "--data.val_files", str(data), cwd=tmp_path)
    run = tmp_path / "runs" / "overfit" / "version_0"
    assert scalars(run)["train/loss"][-1] < 0.05
    lm = OneStepLM.load_from_checkpoint(run / "checkpoints" / "last.ckpt", map_location="cpu")
    pairs = [pair_from_record(json.loads(line)) for line in data.read_text().splitlines()]
    assert len(pairs) == 32
    outputs = generate(lm.model, lm.tokenizer.encode_prompts(pairs), eos_id=lm.tokenizer.eos_id,
                       pad_id=lm.tokenizer.pad_id, batch_size=8)
    exact = sum(lm.tokenizer.decode(out) == pair.target for out, pair in zip(outputs, pairs))
    assert exact / len(pairs) >= 0.95


def test_seeded_and_deterministic_runs_pin_mkl_kernels_unless_the_user_chose(monkeypatch):
    from sr_lightning.cli import pin_cpu_matmul_kernels

    monkeypatch.delenv("MKL_CBWR", raising=False)
    assert pin_cpu_matmul_kernels(deterministic=False) == "AVX2,STRICT"
    monkeypatch.delenv("MKL_CBWR")
    assert pin_cpu_matmul_kernels(deterministic=True) == "COMPATIBLE"
    monkeypatch.setenv("MKL_CBWR", "AUTO")
    assert pin_cpu_matmul_kernels(deterministic=True) == "AUTO"
