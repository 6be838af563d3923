"""The task contract: built once by the LightningModule, linked into the DataModule, kept in checkpoints."""

import os
import sys
from unittest import mock

import pytest

from sr_lightning.data.datamodule import OneStepDataModule
from sr_lightning.data.stream import LineReport, parse_lines
from sr_lightning.data.tokenizer import SRTokenizer
from sr_lightning.evaluation.checkpoints import _task_of_run
from sr_lightning.module import OneStepLM
from sr_lightning.task import OneStepTask
from tests.helpers import SAMPLE, fixture_lines

MICRO = {"preset": "micro", "model_overrides": {"n_positions": 256, "hidden_size": 32, "n_layers": 1, "n_heads": 2}}


def test_the_module_builds_the_task_from_its_tokenizer_and_model():
    lm = OneStepLM(**MICRO)
    assert lm.task.tokenizer is lm.tokenizer and lm.task.max_length == 256 and not lm.task.include_target_token
    shorter = OneStepLM(**MICRO, max_length=128, include_target_token=True)
    assert (shorter.task.max_length, shorter.task.include_target_token) == (128, True)
    with pytest.raises(ValueError, match="exceeds the model's 256 positions"):
        OneStepLM(**MICRO, max_length=512)


def test_checkpoint_hyperparameters_rebuild_the_same_task():
    lm = OneStepLM(**MICRO, max_length=200, include_target_token=True)
    rebuilt = OneStepLM(**lm.hparams)
    assert rebuilt.task.tokenizer.to_str() == lm.task.tokenizer.to_str()
    assert (rebuilt.task.max_length, rebuilt.task.include_target_token) == (200, True)


def test_train_cli_links_the_models_task_into_the_datamodule(tmp_path):
    from sr_lightning.cli import TrainCLI

    args = ["--seed_everything", "false", "--model.preset", "micro", "--model.max_length", "300", "--model.include_target_token", "true",
            "--data.train_files", str(SAMPLE), "--data.val_files", str(SAMPLE),
            "--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false"]
    with mock.patch.object(sys, "argv", ["train.py"]), mock.patch.dict(os.environ):
        cli = TrainCLI(OneStepLM, OneStepDataModule, run=False, args=args)
    assert cli.datamodule.task is cli.model.task
    assert (cli.datamodule.task.max_length, cli.datamodule.task.include_target_token) == (300, True)
    assert "task" not in cli.datamodule.hparams  # the tokenizer travels in the model's checkpoint only


def test_a_datamodule_without_a_task_says_how_to_give_it_one():
    with pytest.raises(ValueError, match="task=module.task"):
        OneStepDataModule(train_files=str(SAMPLE)).setup("fit")


def test_the_task_labels_the_target_token_only_when_asked():
    pairs = list(parse_lines([("f:1", fixture_lines()[0].encode())], LineReport()))
    for include, extra in ((False, 0), (True, 1)):
        task = OneStepTask(SRTokenizer.default(), 1024, include)
        [(_, example)] = task.encode(pairs, LineReport())
        batch = task.collate([example])
        assert int((batch["labels"] != -100).sum()) == len(example.target_ids) - 1 + extra
        assert task.prompt_ids(example) == example.input_ids + [task.tokenizer.target_id]


def test_checkpoints_from_before_the_contract_keep_their_data_settings():
    task = OneStepTask(SRTokenizer.default(), 1024)
    old = _task_of_run(task, {"max_length": 512, "include_target_token": True, "batch_size": 16})
    assert (old.max_length, old.include_target_token) == (512, True)
    assert _task_of_run(task, {"batch_size": 16}) == task
