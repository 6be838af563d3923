"""The original's checkpoint, fine-tuned with train.py, exported back to an HF GPT-Neo directory."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer

from sr_lightning.cli import main as train_main
from sr_lightning.data.tokenizer import SRTokenizer
from sr_lightning.export import main as export_main
from sr_lightning.interop import load_hf_gpt_neo
from tests.helpers import SAMPLE
from tests.hf_original import original_checkpoint
from tests.test_interop import assert_same_logits

ROOT = Path(__file__).resolve().parents[1]


def fine_tune_two_steps(original: Path, runs: Path) -> Path:
    """``train.py fit --config configs/overfit.yaml --model.init_from DIR`` for 2 steps; its last.ckpt."""
    train_main(["fit", "--config", str(ROOT / "configs/overfit.yaml"), "--model.init_from", str(original),
                "--data.train_files", str(SAMPLE), "--data.val_files", str(SAMPLE), "--data.batch_size", "2",
                "--trainer.max_steps", "2", "--trainer.num_sanity_val_steps", "0",
                "--trainer.enable_progress_bar", "false", "--model.learning_rate", "1e-3",
                "--model.warmup_steps", "1", "--trainer.logger.init_args.save_dir", str(runs)])
    return runs / "overfit" / "version_0" / "checkpoints" / "last.ckpt"


@pytest.mark.slow
def test_fine_tune_the_original_then_export_for_transformers(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    original = tmp_path / "checkpoint-20000"
    original_checkpoint(original)
    imported = load_hf_gpt_neo(original)
    checkpoint = fine_tune_two_steps(original, tmp_path / "runs")

    out = tmp_path / "exported"
    assert export_main([str(checkpoint), str(out)]) == 0
    printed = capsys.readouterr().out
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert f"wrote {out / name}" in printed
    hf_config = json.loads((out / "config.json").read_text())
    assert (hf_config["vocab_size"], hf_config["bos_token_id"], hf_config["eos_token_id"]) == (50261, 50256, 50256)

    exported = load_hf_gpt_neo(out)
    trained = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    assert {f"model.{name}" for name in exported.state_dict()} == set(trained)
    for name, tensor in exported.state_dict().items():
        assert torch.equal(tensor, trained[f"model.{name}"]), name
    # The original's shape; overfit.yaml's dropout overrides apply, its `preset: micro` does not.
    assert exported.config == replace(imported.config, embed_dropout=0.0, attn_dropout=0.0, resid_dropout=0.0)
    # Two AdamW steps at lr 1e-3 move a weight by a few 1e-3 at most: training started from the import.
    change = max((exported.state_dict()[name] - w).abs().max().item() for name, w in imported.state_dict().items())
    assert 0 < change < 1e-2

    hf = transformers.GPTNeoForCausalLM.from_pretrained(out).eval()
    assert_same_logits(hf, exported.eval(), 50261)
    assert SRTokenizer.from_file(out / "tokenizer.json").to_str() == \
        SRTokenizer.from_file(original / "tokenizer.json").to_str()
    exported_tokenizer = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert exported_tokenizer.get_vocab_size() == 50261 and exported_tokenizer.token_to_id("<TARGET>") == 50260


def test_missing_or_corrupt_checkpoint_is_a_one_line_error(tmp_path, capsys):
    assert export_main([str(tmp_path / "none.ckpt"), str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == f"error: checkpoint not found: {tmp_path / 'none.ckpt'}\n"
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    assert export_main([str(tmp_path / "bad.ckpt"), str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {tmp_path / 'bad.ckpt'}: not a readable sr_lightning checkpoint (")
    assert error.count("\n") == 1
    assert not (tmp_path / "out").exists()
