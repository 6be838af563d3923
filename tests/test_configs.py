"""Every shipped config parses, and the online recipe trains end to end on a tiny scale."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def run_train(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_config_parses(config, tmp_path):
    result = run_train("fit", "--config", str(config), "--print_config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "model:" in result.stdout and "data:" in result.stdout


@pytest.mark.slow
def test_online_recipe_trains_a_few_steps(tmp_path):
    result = run_train(
        "fit", "--config", str(ROOT / "configs/onestep-tiny-online.yaml"),
        "--trainer.accelerator", "cpu", "--trainer.precision", "32-true", "--trainer.max_steps", "4",
        "--trainer.val_check_interval", "4", "--trainer.limit_val_batches", "2", "--trainer.devices", "1",
        "--model.preset", "micro", "--model.warmup_steps", "2", "--data.batch_size", "4", "--data.num_workers", "1",
        "--data.online.heldout_problems", "3", "--data.online.generations", "8",
        "--data.default_data_dir", str(tmp_path / "data"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "runs" / "onestep-tiny-online" / "version_0"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert list((tmp_path / "data").glob("online-heldout-*/val.jsonl"))


@pytest.mark.slow
def test_missing_data_file_is_one_clear_line(tmp_path):
    result = run_train("fit", "--config", str(ROOT / "configs/overfit.yaml"),
                       "--data.train_files", str(tmp_path / "nope.jsonl"), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"error: data file not found: {tmp_path / 'nope.jsonl'}"


def test_the_originals_tiny_recipe_reads_the_data_points():
    import yaml

    model = yaml.safe_load((ROOT / "configs/onestep-tiny.yaml").read_text())["model"]
    assert model["preset"] == "tiny" and model["input_embedder"] == "e2e"  # as the original's onestep-tiny.json
