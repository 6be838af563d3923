"""Long-run safety: resume after a kill, several processes, non-finite losses, checkpoint writes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import numbered_fixture_lines, write_lines

ROOT = Path(__file__).resolve().parents[1]


def write_config(folder: Path, data: Path, **trainer) -> Path:
    """A tiny run writing its logs, records and config into ``folder``, reading data from ``data``."""
    config = {
        "seed_everything": 7,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "precision": "32-true", "max_epochs": 2,
            "log_every_n_steps": 1, "num_sanity_val_steps": 0, "enable_progress_bar": False,
            "deterministic": True,  # bit-identical CPU runs: deterministic scatter/index kernels
            "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                       "init_args": {"save_dir": str(folder / "runs"), "name": "t"}},
            "callbacks": [
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                 "init_args": {"every_n_train_steps": 3, "save_last": True, "save_top_k": -1,
                               "filename": "step={step}", "auto_insert_metric_name": False}},
                {"class_path": "tests.recording.RecordTraining", "init_args": {"out": str(folder)}},
                {"class_path": "tests.recording.RecordValidation", "init_args": {"out": str(folder)}},
            ],
            **trainer,
        },
        "model": {"preset": "micro", "learning_rate": 0.003, "warmup_steps": 4,
                  "model_overrides": {"hidden_size": 32, "n_layers": 1, "n_heads": 2, "n_positions": 1024}},
        "data": {"batch_size": 4, "num_workers": 2, "shuffle_buffer": 16, "length_grouping": 2,
                 "train_files": str(data / "train.jsonl"), "val_files": str(data / "val.jsonl")},
    }
    folder.mkdir(exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def start(config: Path, *args: str, cwd: Path) -> subprocess.Popen:
    # The CLI sets MKL_CBWR in its own process; runs made in-process (conftest's tiny_run, test_export)
    # leave it in pytest's environment, where a child would take it for the user's choice.
    env = {**{k: v for k, v in os.environ.items() if k != "MKL_CBWR"}, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), "fit", "--config", str(config), *args],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen) -> str:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-4000:]
    return output


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def data(tmp_path):
    write_lines(tmp_path / "train.jsonl", numbered_fixture_lines(42))
    write_lines(tmp_path / "val.jsonl", numbered_fixture_lines(10))
    return tmp_path


@pytest.mark.parametrize("trainer, kill_after", [
    pytest.param({"val_check_interval": None}, 15, id="validation-at-epoch-end"),
    # Killed between a checkpoint and the validation of the same step: the resumed process
    # allocates differently, which alone changed MKL's last bits before the CLI pinned its kernels.
    pytest.param({"val_check_interval": 3}, 6, id="validation-mid-epoch"),
])
@pytest.mark.slow
def test_resume_after_kill_equals_an_uninterrupted_run(data, trainer, kill_after):
    tmp = data
    finish(start(write_config(tmp / "a", tmp, **trainer), cwd=tmp))
    whole = {r["step"]: r for r in records(tmp / "a" / "train-rank0.jsonl")}
    assert len(whole) == 22  # 2 epochs of 11 batches

    config = write_config(tmp / "b", tmp, **trainer)
    process = start(config, cwd=tmp)
    checkpoints = tmp / "b" / "runs" / "t" / "version_0" / "checkpoints"
    deadline = time.time() + 300
    while not (checkpoints / f"step={kill_after}.ckpt").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = len(records(tmp / "b" / "train-rank0.jsonl"))
    assert killed_at < 22, "the run finished before it could be killed"
    resumed_from = torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"]

    (tmp / "b" / "train-rank0.jsonl").unlink()
    finish(start(config, "--ckpt_path", "last", cwd=tmp))
    after = records(tmp / "b" / "train-rank0.jsonl")
    assert [r["step"] for r in after] == list(range(resumed_from + 1, 23))
    for r in after:
        assert r["sources"] == whole[r["step"]]["sources"]
        assert r["loss"] == whole[r["step"]]["loss"], f"step {r['step']}"


@pytest.mark.slow
def test_two_processes_see_every_example_once_and_agree_on_validation(data):
    tmp = data
    finish(start(write_config(tmp / "two", tmp, strategy="ddp", devices=2, max_epochs=1,
                              val_check_interval=None), cwd=tmp))
    finish(start(write_config(tmp / "one", tmp, max_epochs=1, val_check_interval=None), cwd=tmp))
    seen = [s for rank in (0, 1) for r in records(tmp / "two" / f"train-rank{rank}.jsonl") for s in r["sources"]]
    assert sorted(seen) == sorted(f"{tmp / 'train.jsonl'}:{i}" for i in range(1, 43))
    steps = [len(records(tmp / "two" / f"train-rank{rank}.jsonl")) for rank in (0, 1)]
    assert steps[0] == steps[1] == 6  # 21 lines per rank in batches of 4 (rank 1 ends on a short batch)
    # Every rank logs the same reduced validation metrics.
    two = records(tmp / "two" / "val-rank0.jsonl")[-1]
    assert two == records(tmp / "two" / "val-rank1.jsonl")[-1]


@pytest.mark.slow
def test_validation_metrics_do_not_depend_on_the_number_of_processes(data):
    tmp = data
    checkpoint = tmp / "model.ckpt"
    from sr_lightning.module import OneStepLM
    import lightning as L

    module = OneStepLM(preset="micro", model_overrides={"hidden_size": 32, "n_layers": 1, "n_heads": 2,
                                                         "n_positions": 1024})
    trainer = L.Trainer(max_steps=0, logger=False, enable_checkpointing=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(checkpoint)
    for folder, extra in (("v1", {}), ("v2", {"strategy": "ddp", "devices": 2})):
        config = write_config(tmp / folder, tmp, **extra)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        result = subprocess.run([sys.executable, str(ROOT / "train.py"), "validate", "--config", str(config),
                                 "--ckpt_path", str(checkpoint)], cwd=tmp, env=env, capture_output=True,
                                text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
    one, two = records(tmp / "v1" / "val-rank0.jsonl")[-1], records(tmp / "v2" / "val-rank0.jsonl")[-1]
    assert set(one) >= {"val/loss", "val/first_token_acc", "val/nll_per_target"}
    for key in one:
        assert two[key] == pytest.approx(one[key], rel=1e-5), key


@pytest.mark.slow
def test_non_finite_loss_stops_with_the_step_and_examples(data, monkeypatch):
    tmp = data
    config = write_config(tmp / "n", tmp)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SR_LIGHTNING_TEST_NAN_AT_STEP": "4"}
    result = subprocess.run([sys.executable, "-m", "tests.nan_training", "fit", "--config", str(config)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert "non-finite loss at step 4" in result.stderr and "train.jsonl:" in result.stderr
    saved = list((tmp / "n" / "runs" / "t" / "version_0" / "checkpoints").glob("nonfinite-step4-*.ckpt"))
    assert len(saved) == 1
    state = torch.load(saved[0], map_location="cpu", weights_only=False)
    assert state["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())


def test_checkpoint_write_interrupted_midway_leaves_the_previous_one(tmp_path, monkeypatch):
    from lightning.fabric.utilities.cloud_io import _atomic_save
    import fsspec.implementations.local as local

    path = tmp_path / "last.ckpt"
    _atomic_save({"step": 1, "weights": torch.ones(1000)}, path)

    def crash(self, data):
        raise OSError("disk went away")

    monkeypatch.setattr(local.LocalFileOpener, "write", crash, raising=False)
    with pytest.raises(OSError):
        _atomic_save({"step": 2, "weights": torch.zeros(1000)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["step"] == 1
