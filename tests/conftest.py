"""Shared fixtures: a tiny model trained once per test session on the original's fixture lines.

``tiny_run`` trains a 64-wide, 2-layer model with the project's own CLI for 75 steps on 10
fixture examples (it learns most of them by heart) and validates every 25 steps on the 8 others
(validation loss is lowest at step 50 and rises after, so the best checkpoint is not the last).
Tests get a real run directory: checkpoints with ModelCheckpoint's state, config.yaml,
tokenizer.json, TensorBoard events, plus the data files and the problems file beside them.

``ScriptedModel`` is a model whose output is known in advance (e.g. always ``x0``).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
import yaml

from sr_lightning.data.tokenizer import SRTokenizer
from sr_lightning.model import GPTNeo, ModelConfig
from tests.helpers import SAMPLE, SAMPLE_PROBLEMS

TRAIN_LINES = 10  # the first 10 lines train; the other 8 validate
STEPS = 75
VAL_EVERY = 25  # one batch per epoch, so validation every 25 epochs is every 25 steps


@dataclass(frozen=True)
class TinyRun:
    root: Path  # the directory training ran from (holds runs/, the data and the problems file)
    run_dir: Path  # root/runs/tiny/version_0
    train_file: Path
    val_file: Path
    problems_file: Path

    @property
    def checkpoints(self) -> Path:
        return self.run_dir / "checkpoints"


def tiny_config(root: Path, train_file: Path, val_file: Path) -> dict:
    return {
        "seed_everything": 42,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "precision": "32-true", "max_steps": STEPS, "max_epochs": -1,
            "check_val_every_n_epoch": VAL_EVERY, "num_sanity_val_steps": 0, "log_every_n_steps": 5,
            "enable_progress_bar": False, "enable_model_summary": False,
            "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                       "init_args": {"save_dir": str(root / "runs"), "name": "tiny"}},
            "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                           "init_args": {"monitor": "val/loss", "mode": "min", "save_top_k": 2, "save_last": True,
                                         "filename": "step={step}-val_loss={val/loss:.4f}",
                                         "auto_insert_metric_name": False}}],
        },
        "model": {
            "preset": "micro", "learning_rate": 0.003, "weight_decay": 0.0, "warmup_steps": 10,
            "model_overrides": {"hidden_size": 64, "n_layers": 2, "n_positions": 512,
                                "embed_dropout": 0.0, "attn_dropout": 0.0, "resid_dropout": 0.0},
        },
        "data": {"train_files": str(train_file), "val_files": str(val_file), "batch_size": 16,
                 "num_workers": 0, "shuffle_buffer": 16, "length_grouping": 0},
    }


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Tiny models on a shared 2-core machine: one thread avoids OpenMP barrier stalls that cost 10-100x."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture
def one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


def write_tiny_data(root: Path) -> tuple[Path, Path, Path]:
    """The fixture split into train (10 lines) and val (8 lines) files, with the problems file beside them."""
    lines = SAMPLE.read_text().splitlines(keepends=True)
    train_file, val_file = root / "train.jsonl", root / "val.jsonl"
    train_file.write_text("".join(lines[:TRAIN_LINES]))
    val_file.write_text("".join(lines[TRAIN_LINES:]))
    problems_file = shutil.copy(SAMPLE_PROBLEMS, root / SAMPLE_PROBLEMS.name)  # the name its records give
    return train_file, val_file, Path(problems_file)


def train_in_process(root: Path, config: dict) -> Path:
    """``train.py fit`` with ``config`` (written to ``root/tiny.yaml``); returns the run directory."""
    from sr_lightning.cli import main

    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    # LightningCLI also reads sys.argv; seed_everything sets PL_GLOBAL_SEED: leave both as they were.
    with torch_threads(1), mock.patch.object(sys, "argv", ["train.py"]), mock.patch.dict(os.environ):
        main(["fit", "--config", str(path)])
    return root / "runs" / "tiny" / "version_0"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    root = tmp_path_factory.mktemp("tiny_run")
    train_file, val_file, problems_file = write_tiny_data(root)
    run_dir = train_in_process(root, tiny_config(root, train_file, val_file))
    return TinyRun(root, run_dir, train_file, val_file, problems_file)


class ScriptedModel(GPTNeo):
    """Writes ``text`` and then end-of-text after every ``<TARGET>``, whatever the prompt.

    The hidden state is the one-hot current token and the head a transition table, so the next
    token depends on the current one only; logits of 100 make sampling at any usual temperature
    as deterministic as greedy decoding.
    """

    def __init__(self, tokenizer: SRTokenizer, text: str):
        vocab = tokenizer.vocab_size
        super().__init__(ModelConfig(vocab_size=vocab, n_positions=1024, hidden_size=8, n_layers=1, n_heads=1))
        script = [tokenizer.target_id, *tokenizer.encode(text), tokenizer.eos_id]
        table = torch.zeros(vocab, vocab)
        table[:, tokenizer.eos_id] = 100.0
        for current, following in zip(script, script[1:]):
            table[current] = 0.0
            table[current, following] = 100.0
        self.register_buffer("table", table)

    def forward(self, input_ids, position_ids=None, attention_mask=None, kv_cache=None, prefix=None):
        return F.one_hot(input_ids, self.config.vocab_size).float()

    def lm_head(self, hidden):
        return hidden @ self.table


@pytest.fixture(scope="session")
def scripted_model() -> type[ScriptedModel]:
    return ScriptedModel
